"""Client id = username on the RabbitMQ cluster, and logins reported (issue 15).

RabbitMQ 3.10 cannot force the client id, and client ids are cluster-wide. What a device
(the thief) gets by connecting with another device's client id, measured on 3.10.8:
- the owner of that id is online: RabbitMQ closes the owner's session (the takeover), then
  refuses the thief (CONNACK 3: it may not clean up the owner's subscription queue). The
  owner reconnects, and its session then works;
- the owner is away: RabbitMQ accepts the thief (CONNACK 0). The lease holder, watching
  RabbitMQ's event exchange, closes every connection of a user whose client id is not its
  username (`mqttserver/rabbit_events.py`): the thief cannot stay, and the owner logs in.
Logins are reported as on Mosquitto: the first login marks the credential used
(`used_first`), a wrong password is a `login_refused` event of the device it tried.

On the folder's shared set-up (conftest.py). The thief speaks raw MQTT 3.1.1 (CONNECT,
CONNACK, then it waits for the server to close the socket), so no library reconnects it
behind the test's back. How long the thief stayed is printed (`-s`) for docs/scale-out.md.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from types import ModuleType
from typing import Any

import httpx
import pytest

from planty_broker.mqttserver.probe import connect_packet
from planty_broker.simulator.device import SimDevice
from planty_broker.simulator.profile import DeviceProfile
from planty_broker.simulator.provision import provision_devices

pytestmark = pytest.mark.integration


class RawSession:
    """One MQTT 3.1.1 connection over TLS that does nothing after CONNACK."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, sent: float
    ) -> None:
        self.reader, self.writer = reader, writer
        self.sent = sent  # when CONNECT was written (monotonic)
        self.closed_at: float | None = None

    @classmethod
    async def login(
        cls, port: int, ca_pem: str, client_id: str, username: str, password: str
    ) -> tuple[int | None, RawSession]:
        """(CONNACK return code or None: closed without one, the session)."""
        ctx = ssl.create_default_context(cadata=ca_pem)
        reader, writer = await asyncio.open_connection("localhost", port, ssl=ctx)
        writer.write(connect_packet(client_id, username, password, keepalive=120))
        await writer.drain()
        sent = time.monotonic()
        try:
            connack = await asyncio.wait_for(reader.readexactly(4), 30)
        except asyncio.IncompleteReadError:  # closed before its CONNACK was written
            return None, cls(reader, writer, sent)
        assert connack[0] == 0x20, connack
        return connack[3], cls(reader, writer, sent)

    async def closed_by_server(self, timeout_s: float) -> bool:
        """True once the server closed the connection (within `timeout_s`)."""
        try:
            data = await asyncio.wait_for(self.reader.read(1), timeout_s)
        except TimeoutError:
            return False
        except (ConnectionError, ssl.SSLError):
            data = b""
        if data:
            return False
        self.closed_at = time.monotonic()
        return True

    @property
    def stayed_s(self) -> float:
        """From CONNECT written to the server's close."""
        assert self.closed_at is not None
        return self.closed_at - self.sent

    def close(self) -> None:
        self.writer.close()


async def _until(check: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, f"not within {timeout_s:.0f} s: {what}"
        await asyncio.sleep(0.2)


async def _true(value: bool) -> bool:
    return value


async def _events(holder: httpx.AsyncClient, device_id: str) -> list[str]:
    r = await holder.get(f"/devices/{device_id}/credentials")
    assert r.status_code == 200, r.text
    return [e["event"] for e in r.json()["events"]]


@pytest.mark.timeout(300)
async def test_a_client_id_that_is_not_the_username_cannot_stay(
    cluster: tuple[ModuleType, Any],
) -> None:
    cl, c = cluster
    holder_gw = await cl.leader(c.gateways)
    tag = uuid.uuid4().hex[:6]
    ids = [f"cid-{tag}-victim", f"cid-{tag}-thief", f"cid-{tag}-away"]
    # Through the lease holder: it knows the devices at once (a worker's registration
    # reaches it within the registry's 2 s re-read), so it can mark their first use.
    victim_cred, thief_cred, away_cred = await provision_devices(
        holder_gw.url + "/api/v1", c.token, ids, concurrency=3
    )
    ports = c.spec.mqtts_ports()
    ca = victim_cred.ca_pem
    assert ca
    profile = DeviceProfile(
        interval_s=0.2, reconnect_min_s=0.5, reconnect_max_s=2.0, keepalive_s=10, ota=False
    )
    victim = SimDevice(
        replace(victim_cred, host="localhost", port=ports[0]),
        profile,
        seed=random.Random(15).randrange(1 << 30),
    )
    stayed: list[float] = []
    notes: list[str] = []
    headers = {"authorization": f"Bearer {c.token}"}
    async with httpx.AsyncClient(
        base_url=holder_gw.url + "/api/v1", headers=headers, timeout=30
    ) as holder:
        await victim.start()
        try:
            await victim.wait_online(60)

            async def victim_used() -> bool:
                return "used_first" in await _events(holder, victim.device_id)

            # the lease holder's watch reported the victim's login: it is watching
            await _until(victim_used, 60, "the victim's first use reported")

            # 1. The thief logs in with the online victim's client id: RabbitMQ cuts the
            # victim (the takeover) and refuses the thief, or the watch closes it first.
            cut_before = victim.stats.disconnects
            rc, thief = await RawSession.login(
                ports[-1], ca, victim.device_id, thief_cred.device_id, thief_cred.token
            )
            try:
                assert await thief.closed_by_server(60), f"the thief stayed (CONNACK {rc})"
            finally:
                thief.close()
            notes.append(f"online victim: CONNACK {rc}, thief closed after {thief.stayed_s:.3f} s")

            # 2. The victim was cut by the takeover and comes back; its session works.
            async def victim_back() -> bool:
                return victim.stats.disconnects > cut_before and victim.stats.connects >= 2

            await _until(victim_back, 60, "the victim cut by the takeover")
            await victim.wait_online(60)
            notes.append(f"victim back {time.monotonic() - thief.sent:.2f} s after the CONNECT")
            cut_after, acked = victim.stats.disconnects, victim.stats.telemetry_acked
            r = await holder.post(
                f"/devices/{victim.device_id}/commands",
                json={"action": "pump.on", "args": {"seconds": 1}, "ttl_s": 120},
            )
            assert r.status_code in (200, 202), r.text
            command_id = r.json()["id"]

            async def victim_works() -> bool:
                return victim.stats.telemetry_acked >= acked + 10 and bool(
                    victim.executions(command_id=command_id)
                )

            await _until(victim_works, 90, "readings PUBACKed and the command run")
            assert victim.stats.disconnects == cut_after, "the victim was cut again"

            # 3. The client id of a device that is away: RabbitMQ accepts the thief, the
            # lease holder closes it; again at every attempt. Then the owner logs in.
            for _ in range(3):
                rc, thief = await RawSession.login(
                    ports[0], ca, away_cred.device_id, thief_cred.device_id, thief_cred.token
                )
                # accepted, or closed by the watch before its CONNACK was even written
                assert rc in (0, None), f"CONNACK {rc}"
                try:
                    assert await thief.closed_by_server(60), "the thief stayed"
                finally:
                    thief.close()
                stayed.append(thief.stayed_s)
            assert victim.stats.disconnects == cut_after
            away = SimDevice(replace(away_cred, host="localhost", port=ports[0]), profile, seed=2)
            await away.start()
            try:
                await away.wait_online(60)
                await _until(
                    lambda: _true(away.stats.telemetry_acked >= 5), 60, "the owner's readings"
                )
                assert away.stats.disconnects == 0
            finally:
                await away.stop()

            # 4. Its own client id is fine: the thief's device may log in as itself.
            rc, itself = await RawSession.login(
                ports[0], ca, thief_cred.device_id, thief_cred.device_id, thief_cred.token
            )
            try:
                assert rc == 0 and not await itself.closed_by_server(3)
            finally:
                itself.close()

            # 5. A wrong password: refused, and reported as the device it tried.
            rc, refused = await RawSession.login(
                ports[0], ca, thief_cred.device_id, thief_cred.device_id, "not-its-token"
            )
            refused.close()
            assert rc in (4, 5), f"CONNACK {rc}"

            async def refusal_reported() -> bool:
                return "login_refused" in await _events(holder, thief_cred.device_id)

            await _until(refusal_reported, 30, "the refused login reported")
            used = (await holder.get(f"/devices/{thief_cred.device_id}/credentials")).json()
            assert used["credentials"][0]["first_used_at"] is not None
        finally:
            await victim.stop()
            print("\n" + "; ".join(notes))
            print(f"away owner: the thief stayed (s): {', '.join(f'{s:.3f}' for s in stayed)}")
    async with httpx.AsyncClient(timeout=30, headers=headers) as client:
        for device_id in ids:
            await client.delete(f"{holder_gw.url}/api/v1/devices/{device_id}")
