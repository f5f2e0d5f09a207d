"""The device files touch only modules, builtins and methods that MicroPython on ESP32 has."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.device.micropython_subset import check_source

DEVICE = Path(__file__).parent.parent.parent / "device"
FILES = sorted(p.name for p in DEVICE.glob("*.py"))


def _defined_by_the_device_modules() -> frozenset[str]:
    """main.py calls Device's own methods; those names come from planty_device/planty_cmds."""
    names: set[str] = set()
    for f in ("planty_device.py", "planty_cmds.py", "planty_ota.py", "planty_boot.py"):
        for node in ast.walk(ast.parse((DEVICE / f).read_text())):
            if isinstance(node, ast.FunctionDef):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
    return frozenset(names)


def test_the_device_folder_holds_the_board_files() -> None:
    assert FILES == [
        "boot.py",
        "main.py",
        "planty_boot.py",
        "planty_cmds.py",
        "planty_device.py",
        "planty_ota.py",
    ]


@pytest.mark.parametrize("name", FILES)
def test_file_uses_only_what_micropython_on_esp32_has(name: str) -> None:
    source = (DEVICE / name).read_text()
    assert check_source(source, _defined_by_the_device_modules()) == []


def test_the_check_catches_cpython_only_code() -> None:
    source = (
        "import dataclasses\n"
        "from typing import Any\n"
        "import time\n"
        "def f(x: int) -> str:\n"
        "    t = time.perf_counter()\n"
        "    y = {**x}\n"
        "    print(f'{x!r}', vars(x), x.removeprefix('a'))\n"
        "    match x:\n"
        "        case 1:\n"
        "            raise TimeoutError\n"
    )
    problems = "\n".join(check_source(source))
    for expected in (
        "import of dataclasses",
        "import from typing",
        "annotation",
        "time.perf_counter",
        "{**mapping}",
        "f-string",
        "builtin vars",
        ".removeprefix",
        "match statement",
        "builtin TimeoutError",
    ):
        assert expected in problems
