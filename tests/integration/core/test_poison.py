"""One device can never stop the fleet (issue 11), through real Mosquitto over TLS, on SQLite
and on PostgreSQL.

One device sends a burst of odd payloads (numbers past 64 bits, NUL characters, broken
UTF-8, deep nesting, oversize, duplicate keys, non-finite numbers, odd status and ack
bodies, and one reading the store itself refuses); another device's 200 readings sent
right after are all stored, and still are after a gateway restart. The odd ones are
counted errors or dead letters; nothing is left unacknowledged. A store that fails
transiently loses nothing and sets nothing aside.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from planty_broker.app import Gateway
from planty_broker.config import Settings
from planty_broker.domain.models import Reading
from planty_broker.ports.store import StoreRejectedError, StoreUnavailableError
from tests.integration.core.conftest import (
    ADMIN,
    RawDevice,
    eventually,
    gateway_settings,
    running_gateway,
)
from tests.integration.storage.conftest import (  # noqa: F401 - fixtures used by name
    PgServer,
    pg_server,
)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

POISON_SEQ = 424242  # the store port refuses any batch holding this reading (see RefusingPort)
NEST = 5000
BIG = 2**64


def odd_telemetry() -> list[bytes]:
    return [
        b'{"seq": 9223372036854775808, "readings": {"t": 1}}',
        b'{"seq": -1, "readings": {"t": 1}}',
        b'{"seq": 1, "ts": 18446744073709551616, "readings": {"t": 1}}',
        b'{"seq": 1, "ts": 5, "readings": {"t": 1}}',
        b'{"seq": 1, "readings": {"t\\u0000": 1}}',
        b'{"seq": 1, "readings": {"t": 1e999}}',
        b'{"seq": 1, "readings": {"t": NaN}}',
        b'{"seq": 1, "readings": {"t": Infinity}}',
        b'{"seq": 1, "readings": {"t": {"v": 1}}}',
        b'{"seq": 1, "readings": {"t": "\xff\xfe"}}',
        b'{"seq": 1, "readings": {"t": "\\ud800"}}',
        b'{"seq": 1, "x": ' + b"[" * NEST + b"]" * NEST + b', "readings": {}}',
        b'{"seq": 1, "readings": {"' + b"n" * 65 + b'": 1}}',
        b'{"seq": 1, "readings": {' + b",".join(b'"r%d": 1' % i for i in range(70)) + b"}}",
        b'{"seq": 1, "pad": "' + b"x" * 70_000 + b'", "readings": {}}',
        b"\xc3\x28 not json",
        b'{"seq": 7, "seq": 8, "readings": {"t": 1, "t": 2}}',  # duplicate keys: valid, last wins
        json.dumps({"seq": POISON_SEQ, "readings": {"t": 1}}).encode(),  # the store refuses it
    ]


def odd_status() -> list[bytes]:
    return [
        b'{"online": true, "boot": 18446744073709551616}',
        b'{"online": true, "fw": "1.0\\u0000"}',
        b'{"online": true, "sensors": ["' + b"s" * 65 + b'"]}',
        b'{"online": true, "interval_s": 1e400}',
        b'{"online": "\xff"}',
        b'{"online": true, "x": ' + b'{"a":' * NEST + b"1" + b"}" * NEST + b"}",
    ]


def odd_acks() -> list[bytes]:
    return [
        b'{"id": "c-1", "ok": true, "result": {"a": "\\u0000"}}',
        b'{"id": "c-1", "ok": true, "result": {"n": 36893488147419103232}}',
        b'{"id": "c-1", "ok": true, "result": {"a": ' + b"[" * 20 + b"]" * 20 + b"}}",
        b'{"id": "no-such-command", "ok": false, "error": "jam\\u0000"}',
        b'{"id": "no-such-command", "ok": true}',
        b"[]",
    ]


class RefusingPort:
    """The store port as ingest sees it, refusing for good any batch with POISON_SEQ (as a
    database refuses a value it cannot hold) and failing transiently while `down`."""

    def __init__(self, real: Any) -> None:
        self._real = real
        self.down = False
        self.calls_while_down = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    async def append_readings(self, readings: Sequence[Reading]) -> list[Reading]:
        if self.down:
            self.calls_while_down += 1
            raise StoreUnavailableError("database or disk is full (injected)")
        if any(r.seq == POISON_SEQ for r in readings):
            raise StoreRejectedError("integer out of range (injected)")
        return await self._real.append_readings(readings)  # type: ignore[no-any-return]


def inject(gw: Gateway) -> RefusingPort:
    assert gw.services is not None
    ingest = gw.services.ingest
    port = RefusingPort(ingest._store)
    ingest._store = port  # type: ignore[assignment]
    return port


@pytest.fixture(params=["sqlite", pytest.param("postgres")])
def store_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    extra: dict[str, dict[str, Any]] = {}
    if request.param == "postgres":
        pg: PgServer = request.getfixturevalue("pg_server")
        extra["store"] = {"url": pg.create("planty_poison")}
    return gateway_settings(tmp_path / "gw", **extra)


@pytest_asyncio.fixture(loop_scope="session")
async def api_of() -> AsyncIterator[Any]:
    clients: list[httpx.AsyncClient] = []

    def make(gw: Gateway) -> httpx.AsyncClient:
        c = httpx.AsyncClient(
            base_url=gw.api_url, timeout=30, headers={"Authorization": f"Bearer {ADMIN}"}
        )
        clients.append(c)
        return c

    yield make
    for c in clients:
        await c.aclose()


CREDS: dict[str, dict[str, Any]] = {}


async def register(api: httpx.AsyncClient, device_id: str) -> RawDevice:
    r = await api.post("/api/v1/devices", json={"id": device_id})
    assert r.status_code == 201, r.text
    CREDS[device_id] = body = r.json()
    dev = RawDevice(device_id, body["token"], body["mqtt"])
    await dev.connect()
    return dev


async def readings_of(api: httpx.AsyncClient, device_id: str) -> list[int]:
    r = await api.get(f"/api/v1/devices/{device_id}/telemetry", params={"limit": 10_000})
    assert r.status_code == 200, r.text
    return sorted(x["seq"] for x in r.json()["readings"])


async def test_odd_payloads_never_stop_another_device(
    store_settings: Settings, api_of: Any
) -> None:
    async with running_gateway(store_settings) as gw:
        api = api_of(gw)
        inject(gw)
        bad = await register(api, "poison-bad")
        good = await register(api, "poison-good")
        bad.publish("status", b'{"online": true, "interval_s": 60}', retain=True)
        for payload in odd_telemetry():
            bad.publish("telemetry", payload)
        for payload in odd_status():
            bad.publish("status", payload)
        for payload in odd_acks():
            bad.publish("ack", payload)
        for seq in range(200):
            good.publish("telemetry", json.dumps({"seq": seq, "readings": {"t": seq}}).encode())

        async def all_good_stored() -> bool:
            return await readings_of(api, "poison-good") == list(range(200))

        await eventually(all_good_stored, timeout=30)
        # every message of both devices was acknowledged: nothing waits in their sessions
        await eventually(lambda: bad.client._persistent_storage.is_empty, timeout=30)
        await eventually(lambda: good.client._persistent_storage.is_empty, timeout=30)

        async def dead_lettered() -> list[dict[str, Any]]:
            r = await api.get("/api/v1/dead-letters", params={"device": "poison-bad"})
            return list(r.json()["dead_letters"])

        letters = await eventually(dead_lettered, timeout=30)
        assert len(letters) == 1 and f'"seq": {POISON_SEQ}' in letters[0]["payload"]
        assert letters[0]["topic"] == "planty/v1/devices/poison-bad/telemetry"
        assert "integer out of range" in letters[0]["error"]
        assert await readings_of(api, "poison-bad") == [8]  # the duplicate-key one: last wins

        async def counted() -> dict[str, int] | None:
            d = (await api.get("/api/v1/devices/poison-bad")).json()
            errors: dict[str, int] = d["counts"]["errors_by_kind"]
            return errors if sum(errors.values()) >= 28 else None

        errors = await eventually(counted, timeout=30)
        for kind in (
            "out_of_range",
            "bad_text",
            "over_limit",
            "malformed_payload",
            "bad_field_type",
            "oversize",
            "unknown_command_id",
            "dead_letter",
        ):
            assert errors.get(kind), (kind, errors)
        assert gw.services is not None and gw.services.ingest.slow_pending() == 0
        await bad.close()
        await good.close()

    # After a restart: everything stored is still there, nothing is redelivered into a wedge.
    async with running_gateway(store_settings) as gw:
        api = api_of(gw)
        assert await readings_of(api, "poison-good") == list(range(200))
        r = await api.get("/api/v1/dead-letters", params={"device": "poison-bad"})
        assert r.json()["count"] == 1 and r.json()["held"]["poison-bad"] == 1
        creds = CREDS["poison-good"]
        good = RawDevice("poison-good", creds["token"], creds["mqtt"])
        await good.connect()
        good.publish("telemetry", b'{"seq": 200, "readings": {"t": 1}}')

        async def one_more() -> bool:
            return await readings_of(api, "poison-good") == list(range(201))

        await eventually(one_more, timeout=30)
        r = await api.delete("/api/v1/dead-letters", params={"device": "poison-bad"})
        assert r.json() == {"purged": 1}
        assert (await api.get("/api/v1/dead-letters")).json()["total"] == 0
        await good.close()


async def test_transient_store_failure_loses_nothing_and_sets_nothing_aside(
    tmp_path: Path, api_of: Any
) -> None:
    settings = gateway_settings(tmp_path / "gw", health={"store_failing_s": 0.2})
    async with running_gateway(settings) as gw:
        api = api_of(gw)
        port = inject(gw)
        assert (await api.get("/readyz")).json() == {
            "ready": True,
            "reasons": [],
            "checks": {"store": True, "ingest": True, "mqtt": True, "loops": True},
            "warnings": [],
        }
        dev = await register(api, "outage-1")
        port.down = True
        for seq in range(50):
            dev.publish("telemetry", json.dumps({"seq": seq, "readings": {"t": seq}}).encode())
        assert gw.services is not None
        writer = gw.services.ingest.writer
        # held and retried with backoff, nothing acknowledged meanwhile
        await eventually(lambda: port.calls_while_down >= 4, timeout=30)
        assert writer.failing_since is not None and writer.dead_lettered == 0
        assert await readings_of(api, "outage-1") == []

        async def not_ready() -> dict[str, Any] | None:
            r = await api.get("/readyz")
            return r.json() if r.status_code == 503 else None

        body = await eventually(not_ready, timeout=30)
        assert body["checks"]["store"] is False
        assert "readings writer has failed to commit" in body["reasons"][0]
        assert "disk is full (injected)" in body["reasons"][0]
        port.down = False

        async def all_stored() -> bool:
            return await readings_of(api, "outage-1") == list(range(50))

        await eventually(all_stored, timeout=30)
        await eventually(lambda: dev.client._persistent_storage.is_empty, timeout=30)
        assert writer.failing_since is None and writer.dead_lettered == 0
        assert (await api.get("/api/v1/dead-letters")).json()["total"] == 0

        async def ready() -> bool:
            return (await api.get("/readyz")).status_code == 200

        await eventually(ready, timeout=30)
        await dev.close()


async def test_a_killed_background_loop_is_restarted_and_not_ready_meanwhile(
    tmp_path: Path, api_of: Any
) -> None:
    settings = gateway_settings(tmp_path / "gw", health={"restart_min_s": 5.0})
    async with running_gateway(settings) as gw:
        api = api_of(gw)
        loops = gw.supervisor_of_loops
        assert loops is not None and "readings-flush" in loops.loops
        dev = await register(api, "killed-1")
        assert loops.kill("readings-flush")

        async def not_ready() -> dict[str, Any] | None:
            r = await api.get("/readyz")
            return r.json() if r.status_code == 503 else None

        body = await eventually(not_ready, timeout=30)
        assert body["checks"]["loops"] is False
        assert "background loop readings-flush died" in " ".join(body["reasons"])
        metrics = (await api.get("/metrics")).text
        assert "planty_background_loops_down 1.0" in metrics
        assert 'planty_not_ready{check="loops"} 1.0' in metrics

        async def ready() -> bool:
            return (await api.get("/readyz")).status_code == 200

        await eventually(ready, timeout=30)
        assert loops.loops["readings-flush"].restarts == 1
        for seq in range(20):  # the restarted loop stores as before
            dev.publish("telemetry", json.dumps({"seq": seq, "readings": {"t": seq}}).encode())

        async def stored() -> bool:
            return await readings_of(api, "killed-1") == list(range(20))

        await eventually(stored, timeout=30)
        assert 'planty_background_loop_restarts_total{loop="readings-flush"} 1.0' in (
            await api.get("/metrics")
        ).text
        await dev.close()


async def test_a_killed_http_server_is_restarted_on_its_port(
    tmp_path: Path, api_of: Any
) -> None:
    """The HTTP server runs under the supervisor too: its loop killed, it is started again
    (with backoff) on the same port, and the API answers as before."""
    settings = gateway_settings(tmp_path / "gw", health={"restart_min_s": 0.2})
    async with running_gateway(settings) as gw:
        api = api_of(gw)
        loops = gw.supervisor_of_loops
        assert loops is not None and "http-api" in loops.loops
        assert (await api.get("/readyz")).status_code == 200
        assert loops.kill("http-api")

        async def restarted() -> bool:
            return loops.loops["http-api"].restarts == 1 and loops.loops["http-api"].running

        await eventually(restarted, timeout=30)

        async def answers() -> bool:
            try:
                return (await api.get("/api/v1/devices")).status_code == 200
            except httpx.HTTPError:
                return False

        await eventually(answers, timeout=30)
        r = await api.post("/api/v1/devices", json={"id": "after-restart-1"})
        assert r.status_code == 201, r.text


async def test_api_calls_racing_to_create_one_command_id_never_wedge_the_journal(
    tmp_path: Path, api_of: Any
) -> None:
    async with running_gateway(gateway_settings(tmp_path / "gw")) as gw:
        api = api_of(gw)
        r = await api.post("/api/v1/devices", json={"id": "race-1"})
        assert r.status_code == 201, r.text
        body = {"action": "ping", "id": "same-id-1"}
        answers = await asyncio.gather(
            *(api.post("/api/v1/devices/race-1/commands", json=body) for _ in range(5))
        )
        assert all(a.status_code in (200, 201, 202) for a in answers), [a.text for a in answers]
        assert {a.json()["id"] for a in answers} == {"same-id-1"}
        r = await api.post("/api/v1/devices/race-1/commands", json={"action": "ping", "id": "x-2"})
        assert r.status_code in (200, 201, 202), r.text
        assert gw.services is not None and gw.services.commands is not None
        journal = gw.services.commands.outbox.journal
        await eventually(lambda: journal.pending() == 0)
        assert journal.failing_since is None
        r = await api.get("/api/v1/commands/x-2")
        assert r.status_code == 200 and r.json()["id"] == "x-2"
