"""Credential changes reach the real Mosquitto coalesced (issue 13): 30 changes cost a few
reloads, not 30, and a revocation is enforced once the coalesced reload it waited for is
done (a real device login over TLS is refused, its live session cut)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from planty_broker.mqttserver.authority import MosquittoAuthority
from planty_broker.mqttserver.passwords import hash_token, new_token
from planty_broker.ports.device_authority import DesiredAccess
from tests.integration.mqttserver.clients import TestClient, device_tls
from tests.integration.mqttserver.conftest import make_layout, searchable_tmpdir

pytestmark = pytest.mark.integration


@dataclass
class Desired:
    devices: dict[str, str] = field(default_factory=dict)

    def __call__(self) -> DesiredAccess:
        return DesiredAccess(dict(self.devices))


@pytest.fixture
async def authority() -> AsyncIterator[tuple[MosquittoAuthority, Desired]]:
    data_dir = searchable_tmpdir()
    desired = Desired()
    auth = MosquittoAuthority(make_layout(data_dir), reload_interval_s=1.0)
    auth.set_source(desired)
    try:
        async with auth:
            yield auth, desired
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


async def _login(auth: MosquittoAuthority, user: str, secret: str) -> TestClient | None:
    endpoint = auth.endpoint
    assert endpoint.ca_pem
    client = TestClient(user, user, secret)
    try:
        await client.connect("localhost", endpoint.port, device_tls(endpoint.ca_pem))
    except Exception:
        await client.close()
        return None
    await asyncio.sleep(0.2)  # a refused CONNACK may close right after the connect returns
    if client.disconnected.is_set():
        await client.close()
        return None
    return client


async def test_thirty_changes_cost_a_few_reloads_and_all_of_them_are_live(
    authority: tuple[MosquittoAuthority, Desired],
) -> None:
    auth, desired = authority
    tokens = {f"co-{n:02d}": new_token() for n in range(30)}
    before = auth.supervisor.reloads

    async def register(device: str) -> None:
        desired.devices[device] = hash_token(tokens[device])
        await auth.apply()

    # 30 registrations as they would arrive from 30 API calls at once.
    await asyncio.gather(*(register(d) for d in tokens))
    reloads = auth.supervisor.reloads - before
    assert 1 <= reloads <= 3, reloads
    # ... and 30 more changes that only ask (a bulk import), then one wait.
    for device in list(tokens)[:15]:
        tokens[device] = new_token()
        desired.devices[device] = hash_token(tokens[device])
        await auth.apply(wait=False)
    await auth.apply()
    assert auth.supervisor.reloads - before <= reloads + 2
    for device in ("co-00", "co-14", "co-29"):
        client = await _login(auth, device, tokens[device])
        assert client is not None, device
        await client.close()


async def test_a_revoked_device_is_refused_after_the_coalesced_reload(
    authority: tuple[MosquittoAuthority, Desired],
) -> None:
    auth, desired = authority
    token = new_token()
    desired.devices["rv-1"] = hash_token(token)
    await auth.apply()
    session = await _login(auth, "rv-1", token)
    assert session is not None
    try:
        # Revocation in the middle of a burst of other changes: the revoking caller waits
        # for the reload that covers it, whatever else is coalesced with it.
        others = [f"rv-other-{n}" for n in range(10)]
        for device in others:
            desired.devices[device] = hash_token(new_token())
            await auth.apply(wait=False)
        del desired.devices["rv-1"]
        await auth.apply()
        await asyncio.wait_for(session.disconnected.wait(), 10)
    finally:
        await session.close()
    assert await _login(auth, "rv-1", token) is None
