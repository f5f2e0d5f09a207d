"""The engine over a gateway restart: a rollout reloaded from the store, the transfer resumed.

Memory store, fakes for the registry, presence and link (tests/device and tests/integration
run the same against the real gateway); the engine's steps are driven by hand.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from planty_broker.config import FirmwareSettings
from planty_broker.domain.models import PresenceState
from planty_broker.protocol import OtaLast, OtaSupport, Status, Topics
from planty_broker.protocol_ota import CHUNK_HEADER, OtaAck
from planty_broker.services.bus import Bus, DeviceStatusReceived
from planty_broker.services.firmware.service import FirmwareService
from planty_broker.storage.memory import MemoryStore


@dataclass
class _Dev:
    id: str


class _Registry:
    def __init__(self, *ids: str) -> None:
        self.ids = ids

    def all(self) -> list[_Dev]:
        return [_Dev(i) for i in self.ids]

    def __contains__(self, device_id: object) -> bool:
        return device_id in self.ids


@dataclass
class _Presence:
    state: PresenceState = PresenceState.ONLINE


class _Presences:
    def __init__(self) -> None:
        self.online = True

    def get(self, device_id: str) -> _Presence:
        return _Presence(PresenceState.ONLINE if self.online else PresenceState.OFFLINE)


class _Link:
    connected = True

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    async def wait_connected(self) -> None:
        return None

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        self.sent.append((topic, payload))


def _service(store: MemoryStore, bus: Bus, presence: _Presences, link: _Link) -> FirmwareService:
    svc = FirmwareService(
        store,
        bus,
        _Registry("pot-1"),
        presence,
        Topics(),
        FirmwareSettings(chunk_bytes=512),  # type: ignore[arg-type]
    )
    svc.attach(link)
    return svc


def _status(fw: str, last: OtaLast | None = None) -> DeviceStatusReceived:
    return DeviceStatusReceived(
        "pot-1", True, 1, Status(online=True, fw=fw, ota=OtaSupport(1, 1024, last))
    )


async def test_a_restart_reloads_the_rollout_and_the_device_resumes_where_it_was() -> None:
    store = MemoryStore()
    await store.open()
    presence = _Presences()
    bus1, link1 = Bus(), _Link()
    first = _service(store, bus1, presence, link1)
    await first.add_release("2.0.0", {"main.py": bytes(range(256)) * 8})  # 2 KB: 4 chunks
    rollout = await first.start_rollout("2.0.0", devices=["pot-1"])
    bus1.publish(_status("1.0.0"))
    await first._step()
    offer = json.loads(link1.sent[-1][1])
    assert offer["op"] == "offer" and offer["t"] == rollout.id and offer["chunk"] == 512
    first.handle_ota_ack("pot-1", OtaAck(t=rollout.id, op="next", file=0, offset=0), 1)
    await first._step()
    assert CHUNK_HEADER.unpack_from(link1.sent[-1][1])[3] == 0  # the chunk at offset 0
    first.handle_ota_ack("pot-1", OtaAck(t=rollout.id, op="next", file=0, offset=512), 1)
    await first._step()  # ... and the gateway stops here

    bus2, link2 = Bus(), _Link()
    second = _service(store, bus2, presence, link2)
    await second.start()
    try:
        _, targets = await second.rollout(rollout.id)
        assert [t.state.value for t in targets] == ["sending"]
        bus2.publish(_status("1.0.0"))  # its retained status arrives at subscribe
        second._push("online", "pot-1")
        await second._step()
        again = json.loads(link2.sent[-1][1])
        assert again["op"] == "offer" and again["t"] == rollout.id  # the same transfer
        # the device answers from its flash: it had the first two chunks
        second.handle_ota_ack("pot-1", OtaAck(t=rollout.id, op="next", file=0, offset=1024), 1)
        await second._step()
        assert CHUNK_HEADER.unpack_from(link2.sent[-1][1])[3] == 1024
        second.handle_ota_ack("pot-1", OtaAck(t=rollout.id, op="staged"), 1)
        bus2.publish(_status("2.0.0", OtaLast(rollout.id, "2.0.0", "applied")))
        await second._step()
        await second._step()
        r, targets = await second.rollout(rollout.id)
        assert r.state.value == "done" and targets[0].state.value == "applied"
    finally:
        await second.stop()
