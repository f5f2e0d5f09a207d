"""Device credential life on fakes: which hash the MQTT server gets when, kicks, the CRL."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import msgspec
import pytest

from planty_broker.domain.identity import CredentialKind, CredentialState
from planty_broker.mqttserver.pki import Pki, cert_info, ensure_pki, issue_client_cert
from planty_broker.ports.device_authority import AcceptedLogin, IssuedCertificate, RefusedLogin
from planty_broker.ports.memory_authority import MemoryDeviceAuthority
from planty_broker.protocol import Topics, credential_from_args, decode_command
from planty_broker.services.bus import AckReceived, Bus
from planty_broker.services.credentials.events import EventRecorder
from planty_broker.services.credentials.logins import LoginObserver
from planty_broker.services.credentials.service import (
    CredentialService,
    NoLiveCredentialError,
)
from planty_broker.services.registry import DeviceRegistry, now_ms
from planty_broker.storage.memory import MemoryStore
from planty_broker.storage.memory_identity import MemoryIdentityStore


def _issue(pki: Pki, common_name: str, days: int) -> IssuedCertificate:
    cert_pem, key_pem = issue_client_cert(pki, common_name, days)
    info = cert_info(cert_pem)
    return IssuedCertificate(cert_pem, key_pem, info.serial, info.fingerprint, info.not_after_ms)


class Clock:
    def __init__(self) -> None:
        self.ms = now_ms()  # certificates are issued on real time

    def __call__(self) -> int:
        return self.ms


@pytest.fixture
async def world(tmp_path: Path):  # type: ignore[no-untyped-def]
    store = MemoryStore()
    await store.open()
    bus = Bus()
    pki = ensure_pki(tmp_path / "pki", ["localhost"])
    mqtt = MemoryDeviceAuthority(issuer=lambda cn, days: _issue(pki, cn, days))
    registry = DeviceRegistry(store, bus, mqtt.hash_secret)
    clock = Clock()
    creds = CredentialService(
        MemoryIdentityStore(),
        registry,
        bus,
        EventRecorder(bus),
        Topics(),
        authority=mqtt,
        overlap_s=60,
        delivery_retry_s=5,
        clock=clock,
    )
    registry.credentials_hook = mqtt.apply
    sent: list[tuple[str, bytes]] = []

    async def publish(topic: str, payload: bytes) -> None:
        sent.append((topic, payload))

    creds.publish = publish
    await creds.start()
    yield registry, creds, mqtt, clock, sent
    await creds.stop()


async def add(registry: DeviceRegistry, creds: CredentialService, device_id: str) -> str:
    _, token = await registry.add(device_id)
    await creds.adopted()  # the DevicesChanged task tracks its token
    return token


async def test_token_rotation_switches_only_when_the_device_confirms(world) -> None:  # type: ignore[no-untyped-def]
    registry, creds, mqtt, _clock, sent = world
    old = await add(registry, creds, "dev-a")
    issued = await creds.rotate("dev-a")
    assert issued.credential.state is CredentialState.PENDING and issued.token
    assert mqtt.accepts("dev-a", old) and not mqtt.accepts("dev-a", issued.token)
    ((topic, payload),) = sent
    cmd = decode_command(payload)
    assert topic == "planty/v1/devices/dev-a/cmd" and cmd.action == "config"
    delivered = credential_from_args(cmd.args)
    assert delivered is not None and delivered.token == issued.token
    ack = AckReceived("dev-a", cmd.id, True, {"credential": delivered.id}, None, 0)
    assert await creds.handle_ack(ack)
    assert mqtt.accepts("dev-a", issued.token) and not mqtt.accepts("dev-a", old)
    states = {c.id: c.state for c in await creds.history("dev-a")}
    assert states[issued.credential.id] is CredentialState.ACTIVE
    assert sorted(states.values()) == [CredentialState.ACTIVE, CredentialState.RETIRED]
    assert await creds.handle_ack(ack)  # a repeated ack changes nothing
    assert not await creds.handle_ack(AckReceived("dev-a", "c-other", True, None, None, 0))


async def test_without_confirmation_the_old_token_ends_with_the_overlap(world) -> None:  # type: ignore[no-untyped-def]
    registry, creds, mqtt, clock, sent = world
    old = await add(registry, creds, "dev-b")
    issued = await creds.rotate("dev-b", overlap_s=30)
    clock.ms += 29_000
    await creds._tick()
    assert mqtt.accepts("dev-b", old)
    assert len(sent) == 2  # re-sent after delivery_retry_s
    clock.ms += 1_000
    await creds._tick()
    assert not mqtt.accepts("dev-b", old) and mqtt.accepts("dev-b", issued.token or "")


async def test_a_new_rotation_supersedes_one_under_way(world) -> None:  # type: ignore[no-untyped-def]
    registry, creds, mqtt, _clock, _sent = world
    old = await add(registry, creds, "dev-c")
    first = await creds.rotate("dev-c")
    second = await creds.rotate("dev-c")
    states = {c.id: (c.state, c.end_reason) for c in await creds.history("dev-c")}
    assert states[first.credential.id] == (CredentialState.REVOKED, "superseded")
    assert states[second.credential.id][0] is CredentialState.PENDING
    assert mqtt.accepts("dev-c", old)


async def test_revocation_withdraws_token_and_certificate_and_kicks_once(world) -> None:  # type: ignore[no-untyped-def]
    registry, creds, mqtt, _clock, _sent = world
    token = await add(registry, creds, "dev-d")
    cert = await creds.issue_certificate("dev-d")
    assert cert.cert_pem and cert.key_pem
    serial = cert_info(cert.cert_pem).serial
    ended = await creds.revoke("dev-d")
    assert {c.kind for c in ended} == {CredentialKind.TOKEN, CredentialKind.X509}
    assert "dev-d" not in mqtt.users and not mqtt.accepts("dev-d", token)
    assert mqtt.revoked == [serial]
    ((kicked, users_at_kick),) = mqtt.kicks
    assert kicked == "dev-d" and not mqtt.verify_secret(token, users_at_kick.get("dev-d", ""))
    assert registry.require("dev-d").token_hash == ""
    with pytest.raises(NoLiveCredentialError):
        await creds.rotate("dev-d")


async def test_a_removed_devices_certificate_stays_on_the_crl(world) -> None:  # type: ignore[no-untyped-def]
    registry, creds, mqtt, _clock, _sent = world
    await add(registry, creds, "dev-e")
    cert = await creds.issue_certificate("dev-e")
    await registry.remove("dev-e")
    await creds._removed("dev-e")  # as the bus task does
    assert cert_info(cert.cert_pem or "").serial in mqtt.revoked


async def test_events_follow_the_credential_life_and_hold_no_secret(world) -> None:  # type: ignore[no-untyped-def]
    registry, creds, _mqtt, _clock, sent = world
    token = await add(registry, creds, "dev-f")
    issued = await creds.rotate("dev-f", CredentialKind.X509)
    cmd = decode_command(sent[-1][1])
    await creds.handle_ack(AckReceived("dev-f", cmd.id, True, None, None, 0))
    events = creds.events.for_device("dev-f")
    assert [e.kind.value for e in events] == [
        "issued",
        "issued",
        "activated",
        "delivered",
        "rotated",
    ]
    text = msgspec.json.encode([e.as_data() for e in events]).decode()
    key_line = (issued.key_pem or "").splitlines()[1]
    assert token not in text and key_line not in text and "PRIVATE" not in text


async def test_devices_registered_before_an_upgrade_get_their_token_tracked_at_start(
    tmp_path: Path,
) -> None:
    store = MemoryStore()
    await store.open()
    bus = Bus()
    authority = MemoryDeviceAuthority()
    registry = DeviceRegistry(store, bus, authority.hash_secret)
    tokens = {d: (await registry.add(d))[1] for d in ("old-1", "old-2")}
    ident = MemoryIdentityStore()
    recorder = EventRecorder(bus)
    creds = CredentialService(ident, registry, bus, recorder, Topics(), authority=authority)
    await creds.start()
    rows = await ident.list_credentials()
    assert sorted(r.device_id for r in rows) == ["old-1", "old-2"]
    for r in rows:
        assert r.state is CredentialState.ACTIVE and authority.verify_secret(
            tokens[r.device_id], r.secret_hash
        )
        assert r.created_ms == registry.require(r.device_id).created_at_ms
    assert recorder.counts == {}  # not "issued" now: they were issued back then
    await creds.stop()
    again = CredentialService(ident, registry, bus, recorder, Topics(), authority=authority)
    await again.start()  # nothing new the second time
    assert len(await ident.list_credentials()) == 2
    await again.stop()


class CountingStore(MemoryIdentityStore):
    """Counts the transactions that mark first uses."""

    def __init__(self) -> None:
        super().__init__()
        self.first_use_calls: list[int] = []

    async def mark_credentials_used(self, first_used: dict[str, int]) -> None:  # type: ignore[override]
        self.first_use_calls.append(len(first_used))
        await super().mark_credentials_used(first_used)


async def test_a_fleet_logging_in_marks_its_first_uses_in_one_transaction(tmp_path: Path) -> None:
    """A burst of logins (a fleet after an import or a restart): one store call for all their
    first uses, one event each, a repeated login changes nothing, a refusal is still told."""
    store = MemoryStore()
    await store.open()
    bus = Bus()
    mqtt = MemoryDeviceAuthority()
    registry = DeviceRegistry(store, bus, mqtt.hash_secret)
    identities = CountingStore()
    clock = Clock()
    appended: list[int] = []

    async def appender(rows: Sequence[object]) -> None:
        appended.append(len(rows))

    events = EventRecorder(bus, appender)
    creds = CredentialService(
        identities, registry, bus, events, Topics(), authority=mqtt, clock=clock
    )
    registry.credentials_hook = mqtt.apply
    await creds.start()
    try:
        ids = [f"fleet-{i:03d}" for i in range(50)]
        for device_id in ids:
            await add(registry, creds, device_id)
        appended.clear()  # their "issued" events
        observer = LoginObserver(creds, clock=clock)
        logins: list[AcceptedLogin | RefusedLogin] = [
            AcceptedLogin(d, "10.0.0.9", "token") for d in ids
        ]
        logins += [
            AcceptedLogin(ids[0], "10.0.0.9", "token"),  # again within the burst
            RefusedLogin("not_authorised", "10.0.0.8", "token"),
        ]
        await observer.on_logins(logins)
        assert identities.first_use_calls == [50]
        stored = {c.device_id: c for c in await identities.list_credentials()}
        assert {d: stored[d].first_used_ms for d in ids} == dict.fromkeys(ids, clock.ms)
        for d in ids:
            assert [e.kind.value for e in events.for_device(d)].count("used_first") == 1, d
        assert events.counts["used_first"] == 50 and events.counts["login_refused"] == 1
        assert appended == [50, 1]  # the event log: one append for the first uses, one refusal
        clock.ms += 1000
        await observer.on_logins([AcceptedLogin(ids[1], "10.0.0.9", "token")])
        assert identities.first_use_calls == [50]  # already used: no transaction, no event
        assert appended == [50, 1]
        assert (await identities.list_credentials(ids[1]))[0].first_used_ms == clock.ms - 1000
    finally:
        await creds.stop()


async def test_a_refusal_that_names_a_known_device_is_that_devices(world) -> None:  # type: ignore[no-untyped-def]
    registry, creds, _mqtt, clock, _sent = world
    await add(registry, creds, "dev-r")
    observer = LoginObserver(creds, clock=clock)
    await observer.on_logins(
        [
            RefusedLogin("not_authorised", None, "token", "dev-r"),  # RabbitMQ names it
            RefusedLogin("not_authorised", None, "token", "nobody-we-know"),
        ]
    )
    refused = [e for e in creds.events.for_device("dev-r") if e.kind.value == "login_refused"]
    assert len(refused) == 1 and refused[0].data["reason"] == "not_authorised"
    assert [e.kind.value for e in creds.events.unattributed()] == ["login_refused"]
    assert "nobody-we-know" not in str(creds.events.unattributed()[0].data)
