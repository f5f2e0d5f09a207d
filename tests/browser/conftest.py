"""Browser tests: a real gateway, a simulated fleet, and Debian's chromium driven by Playwright.

Playwright's own browser download cannot work here, so the tests launch the system
chromium (`apt-get install chromium`, also done by `bin/setup --dev`); without it they
skip with that hint. Screenshots go to test-artifacts/ (gitignored).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from planty_broker.app import Gateway
from planty_broker.simulator.fleet import Fleet
from planty_broker.simulator.profile import DeviceProfile
from tests.integration.core.conftest import ADMIN, gateway_settings, running_gateway

CHROMIUM = os.environ.get("PLANTY_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]
FLEET_SIZE = 4


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = shutil.which(CHROMIUM) or (CHROMIUM if Path(CHROMIUM).exists() else None)
    if path is None:
        pytest.skip(f"no chromium at {CHROMIUM}: run `apt-get install chromium` (bin/setup --dev)")
    return path


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser(chromium_path: str) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        b = await p.chromium.launch(
            executable_path=chromium_path, headless=True, args=CHROMIUM_ARGS
        )
        yield b
        await b.close()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def dash_gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    settings = gateway_settings(tmp_path_factory.mktemp("dash"))
    async with running_gateway(settings) as gw:
        yield gw


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def fleet(dash_gateway: Gateway) -> AsyncIterator[Fleet]:
    """A few simulated devices publishing every second over TLS."""
    profile = DeviceProfile(interval_s=1.0, keepalive_s=5, reconnect_max_s=2.0)
    prefix = f"web{uuid.uuid4().hex[:4]}"
    f = await Fleet.provision(
        dash_gateway.api_url, ADMIN, FLEET_SIZE, prefix=prefix, profile=profile, seed=11
    )
    async with f:
        yield f


@pytest_asyncio.fixture(loop_scope="session")
async def page(browser: Any, request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    pg = await context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    yield pg
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await pg.screenshot(path=str(ARTIFACTS / f"{request.node.name}-end.png"), full_page=True)
    await context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


async def wait_true(pg: Any, function: str, arg: Any = None, timeout_s: float = 30.0) -> None:
    """Wait until the JavaScript `function` (given `arg`) returns true on the page.

    Not Playwright's wait_for_function: when its first check is false it polls with a
    predicate it builds by `eval`, which the dashboard's Content-Security-Policy (no
    'unsafe-eval') refuses, so the wait failed whenever the page was slower than that first
    check (seen under load). `page.evaluate` calls the function through the debugger
    protocol, which the policy does not apply to."""
    async with asyncio.timeout(timeout_s):
        while not await pg.evaluate(function, arg):
            await asyncio.sleep(0.05)


async def shot(pg: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await pg.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


async def log_in(pg: Any, base_url: str, token: str = ADMIN, path: str = "/dashboard/") -> None:
    await pg.goto(base_url + path)
    await pg.fill("#token", token)
    await pg.click("#login-form button[type=submit]")
    await pg.wait_for_selector("#app:not([hidden])")
