"""The live API under schemathesis: requests generated from the running gateway's own
/openapi.json, valid and invalid, never get a 5xx the schema does not document.

A real `planty run` process; the schema is fetched from it, as an outside fuzzer would.
Bounded and deterministic: a fixed number of examples per operation from a fixed seed
(hypothesis' derandomize), so the cost is the same on every run. The event stream is
left out (a valid request streams for ever): tests/integration/core/test_api_bounds.py
checks its numbers. Also fails when the gateway logs an unhandled exception meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable

from tests.integration.core.proc import GatewayProcess

schemathesis = pytest.importorskip("schemathesis")
from schemathesis import GenerationMode  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

ADMIN = "fuzz-admin-token-" + "x" * 32
EXAMPLES = 5  # per operation and generation mode (valid, invalid): ~600 requests
SKIP_PATHS = ("/api/v1/events/stream",)  # streams until the client leaves


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def live_gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[GatewayProcess]:
    gw = GatewayProcess(tmp_path_factory.mktemp("api-fuzz"), ADMIN)
    try:
        await gw.start()
        async with gw.client() as api:  # something to find: one device, so ids can hit
            r = await api.post("/api/v1/devices", json={"id": "fuzz-1", "actuators": ["pump"]})
            assert r.status_code == 201, r.text
        yield gw
    finally:
        gw.cleanup()


def documented(operation: Any, status: int) -> bool:
    codes = {str(c) for c in (operation.definition.raw.get("responses") or {})}
    return str(status) in codes or f"{str(status)[0]}XX" in codes or "default" in codes


def fuzz_operation(operation: Any, base_url: str, found: list[str]) -> int:
    """Run the operation's examples; returns how many requests were sent."""
    sent = [0]
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {ADMIN}"
    strategies = []
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        try:
            strategies.append(operation.as_strategy(generation_mode=mode))
        except Exception:  # an operation with nothing to negate
            continue

    for strategy in strategies:

        @settings(
            max_examples=EXAMPLES,
            derandomize=True,
            database=None,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def run(case: Any) -> None:
            try:
                response = case.call(base_url=base_url, session=session, timeout=15)
            except requests.RequestException as exc:
                found.append(f"{case.method} {case.formatted_path}: {type(exc).__name__}")
                return
            sent[0] += 1
            if response.status_code >= 500 and not documented(operation, response.status_code):
                found.append(
                    f"{response.status_code} undocumented: {case.as_curl_command()}\n"
                    f"  {response.text[:300]}"
                )

        try:
            run()
        except Unsatisfiable:  # invalid data this operation cannot be given (no parameters)
            continue
    return sent[0]


def fuzz_all(base_url: str) -> tuple[int, int, list[str]]:
    schema_json = requests.get(base_url + "/openapi.json", timeout=10).json()
    schema = schemathesis.openapi.from_dict(schema_json)
    found: list[str] = []
    operations = sent = 0
    skipped = set()
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path in SKIP_PATHS:
            skipped.add(operation.path)
            continue
        operations += 1
        sent += fuzz_operation(operation, base_url, found)
    # a renamed stream route must not come back into the run unnoticed
    assert skipped == set(SKIP_PATHS), skipped
    return operations, sent, found


async def test_no_undocumented_server_error_from_the_live_openapi(
    live_gateway: GatewayProcess,
) -> None:
    operations, sent, found = await asyncio.to_thread(fuzz_all, live_gateway.api_url)
    assert operations > 30 and sent >= operations, (operations, sent)
    assert not found, "\n".join(found[:20])
    log = live_gateway.log_path.read_text()
    assert "Traceback" not in log, log[log.index("Traceback") - 2000 :][:6000]
    async with httpx.AsyncClient(base_url=live_gateway.api_url) as client:
        assert (await client.get("/healthz")).status_code == 200  # still alive

