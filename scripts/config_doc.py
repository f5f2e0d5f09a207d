"""Generate docs/config.md from src/planty_broker/config.py (defaults, env names, comments).

    .venv/bin/python scripts/config_doc.py > docs/config.md

tests/unit/core/test_config_doc.py fails when docs/config.md is out of date.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import msgspec

from planty_broker.config import Settings

SOURCE = Path(__file__).resolve().parents[1] / "src" / "planty_broker" / "config.py"

HEADER = """# Configuration

One TOML file (`planty run -c planty.toml`, or `PLANTY_CONFIG=planty.toml`), then
environment variables, then the command line (`--data-dir`, `--api-port`,
`--mqtt-port`). Everything is validated once at start; a bad value stops the
start with one line naming the key, e.g. `config: api.port: Expected int <= 65535`.

Every key can be set from the environment as `PLANTY_<SECTION>_<KEY>` (upper case),
e.g. `PLANTY_API_PORT=9000`. Two shortcuts: `PLANTY_DATA_DIR` (= `gateway.data_dir`)
and `PLANTY_ADMIN_TOKEN` (= `gateway.admin_token`). `PLANTY_TEST_*` variables belong
to the test suite and are ignored; any other unknown `PLANTY_*` variable stops the start.

```toml
# planty.toml: only what differs from the defaults
[mqtt]
public_host = "planty-gw.local"

[commands]
ack_timeout_s = 5
```

This page is generated from `src/planty_broker/config.py` by `scripts/config_doc.py`.
"""


def comments() -> dict[tuple[str, str], str]:
    """(class name, field) -> the comment on the field's line or the lines just above it."""
    lines = SOURCE.read_text().splitlines()
    out: dict[tuple[str, str], str] = {}
    for node in ast.parse(SOURCE.read_text()).body:
        if not isinstance(node, ast.ClassDef):
            continue
        for stmt in node.body:
            if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
                continue
            text: list[str] = []
            i = stmt.lineno - 2
            while i >= 0 and lines[i].strip().startswith("#"):
                text.insert(0, lines[i].strip().lstrip("#").strip())
                i -= 1
            line = lines[stmt.lineno - 1]
            if "#" in line:
                trailing = line.split("#", 1)[1].strip()
                if not trailing.startswith("noqa"):
                    text.append(trailing.split("# noqa")[0].strip())
                elif " - " in trailing:
                    text.append(trailing.split(" - ", 1)[1])
            out[(node.name, stmt.target.id)] = " ".join(text)
    return out


def render() -> str:
    notes = comments()
    defaults = Settings()
    parts = [HEADER]
    for section in Settings.__struct_fields__:
        sub = getattr(defaults, section)
        cls = type(sub)
        parts.append(f"\n## [{section}]\n")
        if cls.__doc__:
            parts.append(f"{cls.__doc__.strip()}\n")
        parts.append("| key | default | environment | meaning |\n|---|---|---|---|")
        for field in cls.__struct_fields__:
            value = getattr(sub, field)
            shown = json.dumps(msgspec.to_builtins(value))
            env = f"PLANTY_{section.upper()}_{field.upper()}"
            note = notes.get((cls.__name__, field), "").replace("|", "\\|")
            parts.append(f"| `{field}` | `{shown}` | `{env}` | {note} |")
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    print(render(), end="")
