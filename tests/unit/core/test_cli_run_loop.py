"""`planty run` runs the gateway on uvloop (a declared dependency), not asyncio's own loop."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import uvloop
from typer.testing import CliRunner

import planty_broker.app
from planty_broker.cli.main import app


def test_planty_run_uses_uvloop(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list[type[asyncio.AbstractEventLoop]] = []

    async def fake_run_gateway(settings: Any, announce: Any = None) -> None:
        seen.append(type(asyncio.get_running_loop()))

    monkeypatch.setattr(planty_broker.app, "run_gateway", fake_run_gateway)
    result = CliRunner().invoke(app, ["run", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert seen == [uvloop.Loop]
