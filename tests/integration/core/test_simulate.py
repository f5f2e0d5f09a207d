"""`planty simulate`'s fleet against the real gateway: it connects on loopback (not on the
advertised host name), each pot is different, and a re-run reuses the same devices."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest

from planty_broker.app import Gateway
from planty_broker.simulator.fleet import Fleet
from planty_broker.simulator.profile import DeviceProfile
from planty_broker.simulator.provision import load_tokens
from tests.integration.core.conftest import ADMIN, eventually

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

PROFILE = DeviceProfile(interval_s=0.2, keepalive_s=5, reconnect_max_s=1.0)


async def test_rerun_reuses_devices_pots_differ_and_loopback_is_used(
    gateway: Gateway, api: httpx.AsyncClient, tmp_path: Path
) -> None:
    prefix = f"re{uuid.uuid4().hex[:5]}"
    tokens = tmp_path / "simulator-tokens.json"
    first = await Fleet.provision(
        gateway.api_url, ADMIN, 4, prefix=prefix, profile=PROFILE, tokens_file=tokens
    )
    ids = [d.device_id for d in first.devices]
    # the API was reached on 127.0.0.1: devices connect there, not to the advertised name
    assert gateway.api_url.startswith("http://127.0.0.1:")
    assert {d.credentials.host for d in first.devices} == {"127.0.0.1"}
    async with first:
        assert first.online == 4

        async def moistures() -> list[float] | None:
            found = []
            for i in ids:
                latest = (await api.get(f"/api/v1/devices/{i}")).json()["latest"]
                if latest is None:
                    return None
                found.append(latest["readings"]["soil_moisture"])
            return found

        values = await eventually(moistures, timeout=20)
        assert len(set(values)) == len(values), values  # every pot its own
        assert max(values) - min(values) > 0.02, values
    created = {i: (await api.get(f"/api/v1/devices/{i}")).json()["created_at"] for i in ids}
    assert set(load_tokens(tokens)) >= set(ids)

    again = await Fleet.provision(
        gateway.api_url, ADMIN, 4, prefix=prefix, profile=PROFILE, tokens_file=tokens
    )
    assert again.reused == tuple(ids) and again.replaced == ()
    assert [d.credentials.token for d in again.devices] == [
        d.credentials.token for d in first.devices
    ]
    async with again:
        assert again.online == 4  # the kept tokens still log in
    for i in ids:  # the same devices: not deleted and added again
        assert (await api.get(f"/api/v1/devices/{i}")).json()["created_at"] == created[i]

    fresh = await Fleet.provision(gateway.api_url, ADMIN, 4, prefix=prefix, profile=PROFILE)
    assert fresh.replaced == tuple(ids)  # without kept tokens (--fresh): replaced
