"""Per-device counters, vitals and the fleet roll-up, as the API will show them."""

from __future__ import annotations

import pytest

from planty_broker.domain.stats.counters import (
    COMMAND_FINAL_STATES,
    DeviceStats,
    FleetStats,
    ReconnectCause,
    parse_window,
    sum_counters,
)
from planty_broker.domain.stats.windowed import DAY_MS, HOUR_MS, MINUTE_MS, WEEK_MS
from planty_broker.protocol import ErrorKind

T0 = 1_764_028_800_000


def test_messages_bytes_and_readings_are_counted() -> None:
    s = DeviceStats(T0)
    s.message_in(120, T0 + 1)
    s.message_in(80, T0 + 2)
    s.reading(3)
    s.reading(2)
    s.message_out(60)
    snap = s.snapshot(T0 + 10)
    assert (snap["messages_in"], snap["bytes_in"]) == (2, 200)
    assert (snap["messages_out"], snap["bytes_out"]) == (1, 60)
    assert (snap["readings"], snap["reading_values"]) == (2, 5)
    assert snap["last_message_ms"] == T0 + 2
    assert snap["since_last_message_ms"] == 8
    assert snap["since_ms"] == T0


def test_a_silent_device_has_no_last_message() -> None:
    snap = DeviceStats(T0).snapshot(T0 + 5)
    assert snap["last_message_ms"] is None
    assert snap["since_last_message_ms"] is None
    assert snap["latency"]["count"] == 0
    assert snap["latency"]["p99_ms"] is None


def test_every_error_kind_has_its_own_counter() -> None:
    s = DeviceStats(T0)
    for n, kind in enumerate(ErrorKind, start=1):
        for _ in range(n):
            s.error(kind, T0 + n)
    snap = s.snapshot(T0 + 100)
    assert set(snap["errors"]) == {kind.value for kind in ErrorKind}
    for n, kind in enumerate(ErrorKind, start=1):
        assert snap["errors"][kind.value] == n
        assert s.error_count(kind) == n
    assert snap["errors_total"] == sum(range(1, len(ErrorKind) + 1))
    assert snap["last_error_ms"] == T0 + len(ErrorKind)


def test_commands_are_counted_by_final_state() -> None:
    s = DeviceStats(T0)
    for _ in range(3):
        s.command_sent()
    s.command_final("acked")
    s.command_final("acked")
    s.command_final("expired")
    commands = s.snapshot(T0)["commands"]
    assert commands == {
        "sent": 3,
        "acked": 2,
        "failed": 0,
        "expired": 1,
        "cancelled": 0,
        "superseded": 0,
    }
    assert set(commands) - {"sent"} == set(COMMAND_FINAL_STATES)
    with pytest.raises(ValueError, match="not a final command state"):
        s.command_final("queued")


def test_reconnects_keep_their_cause() -> None:
    s = DeviceStats(T0)
    s.reconnect(ReconnectCause.REBOOT)
    s.reconnect(ReconnectCause.LAST_WILL)
    s.reconnect(ReconnectCause.LAST_WILL)
    snap = s.snapshot(T0)
    assert snap["reconnects"]["reboot"] == 1
    assert snap["reconnects"]["last_will"] == 2
    assert snap["reconnects"]["silence"] == 0
    assert snap["reconnects_total"] == 3


def test_vitals_keep_the_last_value_of_each_field() -> None:
    s = DeviceStats(T0)
    s.vitals(T0 + 1, rssi=-61, heap=120_000, uptime_s=30, fw="1.4.2", boot=17)
    s.vitals(T0 + 2, rssi=-70)  # a status carrying only rssi
    vitals = s.snapshot(T0 + 3)["vitals"]
    assert vitals == {
        "rssi": -70,
        "heap": 120_000,
        "uptime_s": 30,
        "fw": "1.4.2",
        "boot": 17,
        "at_ms": T0 + 2,
    }


def test_round_trips_give_windowed_percentiles() -> None:
    s = DeviceStats(T0)
    for i in range(100):
        s.round_trip(float(i + 1), T0 + i * 1000)
    latency = s.snapshot(T0 + 100_000, window_ms=HOUR_MS)["latency"]
    assert latency["count"] == 100
    assert latency["p50_ms"] == pytest.approx(50, rel=0.01)
    assert latency["p99_ms"] == pytest.approx(99, rel=0.01)
    assert (latency["min_ms"], latency["max_ms"]) == (1.0, 100.0)
    assert latency["mean_ms"] == pytest.approx(50.5)
    later = s.snapshot(T0 + 3 * HOUR_MS, window_ms=HOUR_MS)["latency"]
    assert later["count"] == 0


def test_counters_survive_a_restart_through_counters_and_restore() -> None:
    s = DeviceStats(T0)
    s.message_in(10, T0)
    s.error(ErrorKind.OVERSIZE, T0)
    s.command_final("failed")
    again = DeviceStats(T0 + 1)
    again.restore_counters({**s.counters(), "from_a_newer_version": 5})
    again.message_in(10, T0 + 2)
    assert again.msgs_in == 2
    assert again.error_count(ErrorKind.OVERSIZE) == 1
    assert again.snapshot(T0 + 3)["commands"]["failed"] == 1


def test_fleet_adds_up_devices_and_keeps_a_fleet_latency() -> None:
    fleet = FleetStats(T0)
    a = fleet.device("dev-a", T0)
    b = fleet.device("dev-b", T0)
    assert fleet.device("dev-a", T0 + 5) is a
    a.message_in(100, T0 + 1)
    b.message_in(50, T0 + 2)
    b.message_in(50, T0 + 3)
    a.error(ErrorKind.MALFORMED, T0)
    b.error(ErrorKind.MALFORMED, T0)
    a.command_final("acked")
    for i in range(10):
        a.round_trip(10.0, T0 + i)
        b.round_trip(100.0, T0 + i)
    snap = fleet.snapshot(T0 + 10, window_ms=HOUR_MS)
    assert snap["devices"] == 2
    assert snap["devices_heard"] == 2
    assert (snap["messages_in"], snap["bytes_in"]) == (3, 200)
    assert snap["errors"]["malformed_payload"] == 2
    assert snap["commands"]["acked"] == 1
    assert snap["latency"]["count"] == 20
    assert 10 <= snap["latency"]["p50_ms"] <= 10 * 1.01 / 0.99
    assert snap["latency"]["max_ms"] == 100.0
    # the fleet sketch equals the merge of the device sketches
    merged = a.latency.window(HOUR_MS, T0 + 10)
    merged.merge(b.latency.window(HOUR_MS, T0 + 10))
    assert fleet.latency.quantiles((0.5, 0.99), HOUR_MS, T0 + 10) == merged.quantiles((0.5, 0.99))
    assert fleet.totals() == sum_counters([a, b])


def test_fleet_forgets_a_removed_device_and_counts_only_recent_ones_as_heard() -> None:
    fleet = FleetStats(T0)
    fleet.device("dev-a", T0).message_in(1, T0)
    fleet.device("dev-b", T0).message_in(1, T0 + 2 * HOUR_MS)
    assert fleet.snapshot(T0 + 2 * HOUR_MS, window_ms=HOUR_MS)["devices_heard"] == 1
    assert fleet.remove("dev-a")
    assert not fleet.remove("dev-a")
    assert "dev-a" not in fleet
    assert len(fleet) == 1
    assert fleet.snapshot(T0 + 2 * HOUR_MS)["messages_in"] == 1
    assert fleet.get("dev-b") is not None
    assert list(fleet) == ["dev-b"]


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("5m", 5 * MINUTE_MS),
        ("1h", HOUR_MS),
        ("24h", DAY_MS),
        ("1d", DAY_MS),
        ("7d", WEEK_MS),
        ("1w", WEEK_MS),
    ],
)
def test_parse_window_reads_the_api_parameter(text: str, ms: int) -> None:
    assert parse_window(text) == ms


@pytest.mark.parametrize("text", ["", "1", "h", "0h", "-1h", "1y", "2w"])
def test_parse_window_refuses_with_a_hint(text: str) -> None:
    with pytest.raises(ValueError, match="window"):
        parse_window(text)
