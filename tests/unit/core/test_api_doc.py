"""docs/api.md is generated from the API's OpenAPI description and must not drift from it."""

from __future__ import annotations

import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_api_doc_is_current() -> None:
    render = runpy.run_path(str(ROOT / "scripts" / "api_doc.py"))["render"]
    assert (ROOT / "docs" / "api.md").read_text() == render(), (
        "docs/api.md is out of date: run .venv/bin/python scripts/api_doc.py > docs/api.md"
    )
