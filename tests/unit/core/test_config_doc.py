"""docs/config.md is generated from config.py and must not drift from it."""

from __future__ import annotations

import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_config_doc_is_current() -> None:
    render = runpy.run_path(str(ROOT / "scripts" / "config_doc.py"))["render"]
    assert (ROOT / "docs" / "config.md").read_text() == render(), (
        "docs/config.md is out of date: run .venv/bin/python scripts/config_doc.py > docs/config.md"
    )
