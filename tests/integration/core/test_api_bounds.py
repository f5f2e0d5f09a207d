"""Numbers from outside are range-checked at the API edge: a 422 naming the field, never a 500
nor a broken event stream (found by fuzzing the API from its /openapi.json)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio

from planty_broker.app import Gateway
from tests.integration.core.conftest import ADMIN, gateway_settings, running_gateway

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def fuzz_gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    settings = gateway_settings(tmp_path_factory.mktemp("bounds"))
    async with running_gateway(settings) as gw:
        yield gw


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/api/v1/events?after=16450788389345628160", "after"),
        ("/api/v1/events?limit=99999999999999999999999", "limit"),
        ("/api/v1/events/stream?after=36893488147419103232", "after"),
        ("/api/v1/events/stream?after=-1", "after"),
        ("/api/v1/devices/fuzz-dev/telemetry?since=99999999999999999999", "since"),
        ("/api/v1/rollouts/99999999999999999999", "rollout_id"),
        ("/api/v1/dead-letters?before=99999999999999999999", "before"),
    ],
)
async def test_numbers_past_64_bits_are_a_422_naming_the_field(
    fuzz_gateway: Gateway, path: str, field: str
) -> None:
    async with httpx.AsyncClient(
        base_url=fuzz_gateway.api_url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10
    ) as client:
        await client.post("/api/v1/devices", json={"id": "fuzz-dev"})  # 201, or 409 once there
        r = await client.get(path)
    assert r.status_code == 422, r.text
    assert field in r.json()["error"]["message"]
