"""Device errors coalesced per device and kind: a junk flood cannot push readings out."""

from __future__ import annotations

import msgspec
import pytest

from planty_broker.config import EventSettings
from planty_broker.domain.events import NewEvent
from planty_broker.domain.models import DeviceRecord, Reading
from planty_broker.services.bus import Bus, DeviceError
from planty_broker.services.device_errors import ErrorCoalescer
from planty_broker.services.events import EventService
from planty_broker.storage.memory import MemoryStore

NOW = 1_800_000_000_000


def test_first_error_at_once_then_one_event_per_interval_with_a_count() -> None:
    out: list[NewEvent] = []
    c = ErrorCoalescer(lambda e: out.append(e) is None, every_ms=10_000, max_keys=100)
    for i in range(1000):
        c.add(DeviceError("d1", "bad_json", f"junk {i}", NOW + i))
    assert [e.data["count"] for e in out] == [1]
    c.tick(NOW + 9_999)
    assert len(out) == 1  # the interval is not over
    c.tick(NOW + 10_000)
    assert [e.data["count"] for e in out] == [1, 999]
    last = out[-1]
    assert (last.data["first_ms"], last.data["last_ms"], last.data["message"]) == (
        NOW + 1,
        NOW + 999,
        "junk 999",
    )
    assert (c.errors, c.events) == (1000, 2)
    # a quiet interval forgets the window; the next error goes out at once again
    c.tick(NOW + 20_000)
    assert len(c) == 0
    c.add(DeviceError("d1", "bad_json", "again", NOW + 30_000))
    assert out[-1].data["count"] == 1 and len(out) == 3


def test_each_device_and_kind_has_its_own_window() -> None:
    out: list[NewEvent] = []
    c = ErrorCoalescer(lambda e: out.append(e) is None, every_ms=1_000, max_keys=100)
    for device in ("a", "b"):
        for kind in ("bad_json", "oversize"):
            c.add(DeviceError(device, kind, "x", NOW))
            c.add(DeviceError(device, kind, "x", NOW))
    assert len(out) == 4 and len(c) == 4
    c.tick(NOW + 1_000)
    assert len(out) == 8 and {e.data["count"] for e in out[4:]} == {1}


def test_past_the_key_bound_new_devices_share_one_overflow_window_per_kind() -> None:
    out: list[NewEvent] = []
    c = ErrorCoalescer(lambda e: out.append(e) is None, every_ms=1_000, max_keys=10)
    for i in range(5_000):
        c.add(DeviceError(f"dev-{i}", "unknown_device", "x", NOW))
    assert len(c) == 11  # the bound, plus one overflow window for the kind
    assert c.overflowed == 4_990
    c.tick(NOW + 1_000)
    overflow = [e for e in out if e.data.get("overflow")]
    assert sum(e.data["count"] for e in overflow) == 4_990 and overflow[0].device_id is None
    assert sum(e.data["count"] for e in out) == 5_000  # every error counted somewhere


def test_when_the_log_cannot_take_more_the_window_keeps_counting() -> None:
    out: list[NewEvent] = []
    room = {"open": False}

    def emit(e: NewEvent) -> bool:
        if room["open"]:
            out.append(e)
        return room["open"]

    c = ErrorCoalescer(emit, every_ms=1_000, max_keys=10)
    for i in range(100):
        c.add(DeviceError("d", "bad_json", "x", NOW + i))
    c.tick(NOW + 5_000)
    assert out == [] and len(c) == 1
    room["open"] = True
    c.tick(NOW + 6_000)
    assert [e.data["count"] for e in out] == [100]


@pytest.mark.asyncio(loop_scope="session")
async def test_a_junk_flood_does_not_push_unread_readings_out_of_the_log() -> None:
    store = MemoryStore()
    await store.open()
    await store.add_device(DeviceRecord("good", 0, "h"))
    await store.add_device(DeviceRecord("junk", 0, "h"))
    bus = Bus()
    clock = {"now": NOW}
    settings = msgspec.convert({"retention_max_rows": 1_000}, EventSettings)
    svc = EventService(store, bus, settings, clock=lambda: clock["now"])
    await svc.start()
    try:
        await store.append_readings([Reading("good", i, NOW, NOW, {"t": 1.0}) for i in range(100)])
        # ~1k msg/s of junk for 17 minutes (the flood of the issue), 10 s at a time
        for step in range(17 * 6):
            clock["now"] = NOW + step * 10_000
            for i in range(0, 10_000, 10):  # 1,000 errors per 10 s step
                bus.publish(DeviceError("junk", "bad_json", "junk", clock["now"] + i))
            svc.errors.tick(clock["now"] + 10_000)
        await svc.writer.stop()  # flushes what is pending
        await svc.writer.start()
        await svc.prune_once()
        readings = (await svc.read(0, 10_000, ["reading"])).events
        assert len(readings) == 100
        errors = (await svc.read(0, 10_000, ["device_error"])).events
        assert len(errors) <= 2 * 17 * 6
        assert sum(e.data["count"] for e in errors) == 17 * 6 * 1_000
    finally:
        await svc.stop()
