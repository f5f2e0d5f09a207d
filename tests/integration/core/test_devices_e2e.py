"""End to end over real TLS: register, connect with the token, telemetry in, presence out."""

from __future__ import annotations

import asyncio
import json
import logging

import httpx
import pytest

from planty_broker.app import Gateway
from planty_broker.services.presence import RESTART_GRACE_S
from planty_broker.services.registry import now_ms
from tests.integration.core.conftest import RawDevice, eventually, unique_id

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

STATUS = {
    "online": True,
    "fw": "1.0.0",
    "boot": 1,
    "sensors": ["temperature", "soil_moisture", "light"],
    "actuators": ["pump", "lamp"],
    "interval_s": 1,
}


async def register(api: httpx.AsyncClient, device_id: str) -> dict:
    r = await api.post("/api/v1/devices", json={"id": device_id})
    assert r.status_code == 201, r.text
    return r.json()


async def online_device(
    api: httpx.AsyncClient, prefix: str = "dev", status: dict | None = None
) -> RawDevice:
    creds = await register(api, unique_id(prefix))
    dev = RawDevice(creds["id"], creds["token"], creds["mqtt"])
    await dev.connect()
    dev.publish("status", json.dumps(status or STATUS).encode(), retain=True)
    return dev


async def device_json(api: httpx.AsyncClient, device_id: str) -> dict:
    r = await api.get(f"/api/v1/devices/{device_id}")
    assert r.status_code == 200, r.text
    return r.json()


async def test_register_returns_credentials_once(api: httpx.AsyncClient, gateway: Gateway) -> None:
    device_id = unique_id()
    creds = await register(api, device_id)
    assert creds["id"] == device_id
    assert len(creds["token"]) >= 22  # >= 128 bits in URL-safe base64
    assert creds["mqtt"]["tls"] is True and creds["mqtt"]["port"] == gateway.settings.mqtt.port
    assert "BEGIN CERTIFICATE" in creds["mqtt"]["ca_pem"]
    assert creds["mqtt"]["prefix"] == "planty/v1"
    shown = await device_json(api, device_id)
    assert creds["token"] not in json.dumps(shown)
    listing = (await api.get("/api/v1/devices")).json()
    assert creds["token"] not in json.dumps(listing)
    assert device_id in [d["id"] for d in listing["devices"]]
    stored = gateway.services.registry.get(device_id)
    assert stored is not None and creds["token"] not in stored.token_hash


async def test_telemetry_reaches_the_api(api: httpx.AsyncClient) -> None:
    dev = await online_device(api)
    try:
        for seq in range(5):
            dev.publish(
                "telemetry",
                json.dumps(
                    {
                        "seq": seq,
                        "ts": 1764240000000 + seq * 1000,
                        "readings": {"temperature": 20 + seq, "soil_moisture": 0.4, "light": 800},
                    }
                ).encode(),
            )
        dev.publish(
            "telemetry", json.dumps({"seq": 5, "readings": {"temperature": 30}}).encode()
        )  # no ts
        d = await eventually(lambda: _readings_count(api, dev.device_id, 6))
        assert d["online"] is True and d["presence"]["state"] == "online"
        assert d["presence"]["cause"] in ("status_online", "message")
        assert d["latest"]["readings"] == {"temperature": 30.0} and d["latest"]["seq"] == 5
        assert d["counts"]["messages"] == 7 and d["counts"]["errors"] == 0
        assert (
            d["sensors"] == STATUS["sensors"]
            and d["actuators"] == ["pump", "lamp"]
            and d["fw"] == "1.0.0"
        )
        r = await api.get(
            f"/api/v1/devices/{dev.device_id}/telemetry",
            params={"since": "1764240001000", "until": "2025-11-27T10:40:03Z"},
        )
        body = r.json()
        assert [x["seq"] for x in body["readings"]] == [1, 2, 3]
        r = await api.get(f"/api/v1/devices/{dev.device_id}/telemetry", params={"limit": 2})
        assert [x["seq"] for x in r.json()["readings"]] == [4, 5]  # the newest two, oldest first
        r = await api.get(
            f"/api/v1/devices/{dev.device_id}/telemetry", params={"since": "last week"}
        )
        assert r.status_code == 422 and "since" in r.json()["error"]["message"]
    finally:
        await dev.close()


async def _readings_count(api: httpx.AsyncClient, device_id: str, n: int) -> dict | None:
    d = await device_json(api, device_id)
    return d if d["counts"]["readings"] >= n else None


async def test_last_will_marks_offline(api: httpx.AsyncClient) -> None:
    dev = await online_device(api)
    await eventually(lambda: _state(api, dev.device_id, "online"))
    await dev.kill()
    d = await eventually(lambda: _state(api, dev.device_id, "offline"), timeout=10)
    assert d["presence"]["cause"] == "last_will" and d["online"] is False


async def test_a_clean_goodbye_is_a_clean_offline_never_last_will(api: httpx.AsyncClient) -> None:
    """protocol.md: before a clean shutdown publish {"online": false, "reason": "shutdown"}."""
    dev = await online_device(api)
    try:
        await eventually(lambda: _state(api, dev.device_id, "online"))
        dev.publish("status", b'{"online": false, "reason": "shutdown"}', retain=True)
        d = await eventually(lambda: _state(api, dev.device_id, "offline"), timeout=10)
        assert d["presence"]["cause"] == "shutdown" and d["online"] is False
    finally:
        await dev.close()  # a clean DISCONNECT: the will does not fire after the goodbye
    await asyncio.sleep(0.5)
    assert (await device_json(api, dev.device_id))["presence"]["cause"] == "shutdown"


async def test_a_device_never_connected_is_never_seen_and_left_out_of_availability(
    api: httpx.AsyncClient, gateway: Gateway
) -> None:
    seen = await online_device(api)
    never = await register(api, unique_id("never"))
    try:
        await eventually(lambda: _state(api, seen.device_id, "online"))
        # past the restart grace period (a device seen before would be offline by now):
        # still never seen, not offline (gateway_restart)
        presence = gateway.services.presence
        await eventually(
            lambda: now_ms() > presence._started_ms + RESTART_GRACE_S * 1000, timeout=10
        )
        presence.check(now_ms())
        d = await device_json(api, never["id"])
        assert (d["presence"]["state"], d["presence"]["cause"]) == ("never_seen", "registered")
        s = (await api.get(f"/api/v1/devices/{never['id']}/stats")).json()
        assert s["availability"]["share"] is None  # nothing known: no figure, not 0 %
        fleet = (await api.get("/api/v1/stats", params={"window": "1h"})).json()
        assert fleet["presence"]["never_seen"] >= 1
        assert fleet["availability"]["share"] is not None and fleet["availability"]["share"] > 0
        listed = (await api.get("/api/v1/devices")).json()
        items = listed["devices"] if isinstance(listed, dict) else listed
        mine = next(x for x in items if x["id"] == never["id"])
        assert mine["presence"]["state"] == "never_seen"
    finally:
        await seen.close()


async def test_silence_marks_offline(api: httpx.AsyncClient, gateway: Gateway) -> None:
    # interval_s=1 and keepalive 2 s: the bound is max(3 x 1, 1.5 x 2) = 3 s.
    dev = await online_device(api)
    try:
        await eventually(lambda: _state(api, dev.device_id, "online"))
        d = await eventually(lambda: _state(api, dev.device_id, "offline"), timeout=10)
        assert d["presence"]["cause"] == "silence"
        # and a message brings it back
        dev.publish("telemetry", b'{"seq": 1, "readings": {"light": 5}}')
        d = await eventually(lambda: _state(api, dev.device_id, "online"))
        assert d["presence"]["cause"] == "message"
    finally:
        await dev.close()


async def _state(api: httpx.AsyncClient, device_id: str, state: str) -> dict | None:
    d = await device_json(api, device_id)
    return d if d["presence"]["state"] == state else None


MALFORMED = [
    ("telemetry", b"not json", "malformed_payload"),
    ("telemetry", b'{"seq": "x", "readings": {}}', "bad_field_type"),
    ("telemetry", b'{"seq": 1, "readings": {"light": "bright"}}', "bad_reading"),
    ("telemetry", b"[]", "bad_field_type"),
    ("telemetry", b'{"seq": 1, "readings": {}, "pad": "' + b"x" * 70_000 + b'"}', "oversize"),
    ("status", b"{online}", "malformed_payload"),
    ("ack", b'{"ok": true}', "bad_field_type"),
]


async def test_malformed_payloads_are_counted_and_good_ones_survive(
    api: httpx.AsyncClient, gateway: Gateway
) -> None:
    dev = await online_device(api)
    try:
        for channel, payload, _kind in MALFORMED:
            dev.publish(channel, payload)
        dev.publish("telemetry", b'{"seq": 99, "readings": {"temperature": 12.5}}')
        d = await eventually(
            lambda: _readings_count(api, dev.device_id, 2)
        )  # the bad_reading one + seq 99
        expected: dict[str, int] = {}
        for _c, _p, kind in MALFORMED:
            expected[kind] = expected.get(kind, 0) + 1
        d = await eventually(lambda: _errors(api, dev.device_id, expected))
        assert d["latest"]["seq"] == 99
        assert (await api.get("/healthz")).json()["mqtt_connected"] is True
    finally:
        await dev.close()


async def _errors(api: httpx.AsyncClient, device_id: str, expected: dict[str, int]) -> dict | None:
    d = await device_json(api, device_id)
    return d if d["counts"]["errors_by_kind"] == expected else None


async def test_wrong_token_is_refused(api: httpx.AsyncClient) -> None:
    creds = await register(api, unique_id())
    dev = RawDevice(creds["id"], "wrong-" + creds["token"], creds["mqtt"])
    with pytest.raises(Exception):
        await dev.connect()
    other = await register(api, unique_id())
    dev = RawDevice(creds["id"], other["token"], creds["mqtt"])  # another device's token
    with pytest.raises(Exception):
        await dev.connect()


async def test_device_cannot_touch_another_devices_topics(
    api: httpx.AsyncClient, gateway: Gateway
) -> None:
    a = await online_device(api, "a")
    b = await online_device(api, "b")
    try:
        # a subscribes to b's command topic and to everything: the MQTT server refuses both
        a.client.subscribe(f"{b.base}/cmd", qos=1)
        a.client.subscribe("planty/v1/devices/#", qos=1)
        b.client.subscribe(f"{b.base}/cmd", qos=1)
        await asyncio.sleep(0.3)
        # a publishes telemetry and a fake status into b's topics: refused by the ACL
        a.publish(
            "telemetry",
            b'{"seq": 1, "readings": {"temperature": -99}}',
            topic=f"{b.base}/telemetry",
        )
        a.publish("status", b'{"online": false}', topic=f"{b.base}/status", retain=True)
        # the gateway sends b a command: only b receives it
        await gateway.link.publish(f"{b.base}/cmd", b'{"id": "c-x", "action": "ping"}')
        await eventually(lambda: any(t.endswith("/cmd") for t, _ in b.received))
        await asyncio.sleep(0.5)
        assert not any(b.device_id in t for t, _ in a.received)
        d = await device_json(api, b.device_id)
        assert d["counts"]["readings"] == 0 and d["presence"]["state"] == "online"
    finally:
        await a.close()
        await b.close()


async def test_device_cannot_steal_another_devices_session(api: httpx.AsyncClient) -> None:
    b = await online_device(api, "b")
    a_creds = await register(api, unique_id("a"))
    a = RawDevice(a_creds["id"], a_creds["token"], a_creds["mqtt"], client_id=b.device_id)
    try:
        with contextlib_suppress():
            await a.connect()
        await asyncio.sleep(0.5)
        assert not b.disconnected.is_set()
    finally:
        await a.close()
        await b.close()


def contextlib_suppress():
    import contextlib

    return contextlib.suppress(Exception)


async def test_removed_device_is_kicked_and_refused(api: httpx.AsyncClient) -> None:
    dev = await online_device(api)
    assert (await api.delete(f"/api/v1/devices/{dev.device_id}")).status_code == 204
    await eventually(dev.disconnected.is_set, timeout=5)
    assert (await api.get(f"/api/v1/devices/{dev.device_id}")).status_code == 404
    again = RawDevice(dev.device_id, "whatever", dev.mqtt)
    with pytest.raises(Exception):
        await again.connect()


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("GET", "/api/v1/devices/nope-404", None, 404, "unknown_device"),
        ("POST", "/api/v1/devices", {"id": "Bad Id"}, 422, "invalid_device_id"),
        ("POST", "/api/v1/devices", {"idx": "x"}, 422, "invalid"),
        ("POST", "/api/v1/devices", "{not json", 400, "bad_json"),
        ("DELETE", "/api/v1/devices/nope-404", None, 404, "unknown_device"),
        ("GET", "/api/v1/devices/nope-404/telemetry", None, 404, "unknown_device"),
        ("GET", "/api/v1/nothing-here", None, 404, "not_found"),
    ],
)
async def test_bad_api_requests(
    api: httpx.AsyncClient, method: str, path: str, body: object, status: int, code: str
) -> None:
    if isinstance(body, str):
        r = await api.request(
            method, path, content=body, headers={"Content-Type": "application/json"}
        )
    else:
        r = await api.request(method, path, json=body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code and r.json()["error"]["message"]


async def test_duplicate_device_is_409(api: httpx.AsyncClient) -> None:
    device_id = unique_id()
    await register(api, device_id)
    r = await api.post("/api/v1/devices", json={"id": device_id})
    assert r.status_code == 409 and r.json()["error"]["code"] == "device_exists"


async def test_api_requires_a_valid_token(gateway: Gateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.api_url) as anon:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}):
            for method, path in (
                ("GET", "/api/v1/devices"),
                ("POST", "/api/v1/devices"),
                ("GET", "/api/v1/devices/x/telemetry"),
            ):
                r = await anon.request(method, path, headers=headers, json={"id": "x-1"})
                assert r.status_code == 401, (headers, path, r.text)
                assert r.json()["error"]["code"] == "unauthorized"
        assert (await anon.get("/healthz")).status_code == 200
        spec = (await anon.get("/openapi.json")).json()
        assert "/api/v1/devices" in spec["paths"]


async def test_declared_up_front_commands_work_before_first_contact_then_the_device_wins(
    api: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A server registering devices before they are installed can queue their first
    commands; what the device declares on connect replaces the registration (logged)."""
    device_id = unique_id("ahead")
    r = await api.post(
        "/api/v1/devices",
        json={"id": device_id, "sensors": ["soil_moisture"], "actuators": ["pump", "lamp"]},
    )
    assert r.status_code == 201, r.text
    registered = r.json()
    d = await device_json(api, device_id)
    assert (d["sensors"], d["actuators"]) == (["soil_moisture"], ["pump", "lamp"])
    assert d["presence"]["state"] == "never_seen"
    r = await api.post(
        f"/api/v1/devices/{device_id}/commands", json={"action": "pump.on", "args": {"seconds": 5}}
    )
    assert r.status_code in (200, 201, 202), r.text
    assert r.json()["state"] == "queued"
    assert (
        await api.post(f"/api/v1/devices/{device_id}/commands", json={"action": "fan.on"})
    ).status_code == 422  # not declared at registration

    # a profile, and bad names refused with the reason
    r = await api.post("/api/v1/devices", json={"id": unique_id("prof"), "profile": "pot"})
    assert r.status_code == 201, r.text
    assert (await device_json(api, r.json()["id"]))["actuators"] == ["pump", "lamp"]
    bad = await api.post("/api/v1/devices", json={"id": unique_id("bad"), "actuators": ["Pump!"]})
    assert bad.status_code == 422 and "Pump!" in bad.text
    unknown = await api.post("/api/v1/devices", json={"id": unique_id("bad"), "profile": "x"})
    assert unknown.status_code == 422 and "pot" in unknown.text

    caplog.set_level(logging.WARNING, logger="planty_broker.services.registry")
    # the device connects and declares what it really has: that replaces the registration
    dev = RawDevice(device_id, registered["token"], registered["mqtt"])
    await dev.connect()
    dev.client.subscribe(f"{dev.base}/cmd", qos=1)
    try:
        dev.publish("status", json.dumps({**STATUS, "actuators": ["pump", "fan"]}).encode(),
                    retain=True)

        async def replaced() -> dict | None:
            d = await device_json(api, device_id)
            return d if d["actuators"] == ["pump", "fan"] else None

        d = await eventually(replaced)
        assert d["sensors"] == ["temperature", "soil_moisture", "light"]
        logged = [r.getMessage() for r in caplog.records if device_id in r.getMessage()]
        assert any("pump, fan" in m and "pump, lamp" in m for m in logged), logged
        # the queued pump.on went out once the device was there
        async def delivered() -> bool:
            return any(t.endswith("/cmd") for t, _ in dev.received)

        await eventually(delivered)
    finally:
        await dev.close()
