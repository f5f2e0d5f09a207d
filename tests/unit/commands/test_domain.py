"""The command state machine, validation, coalescing and pacing: pure, exact."""

from __future__ import annotations

import dataclasses

import pytest

from planty_broker.domain import commands as cmds
from planty_broker.domain.commands import (
    CommandRecord,
    CommandState,
    IllegalTransitionError,
    InvalidActionError,
    InvalidArgsError,
    TokenBucket,
)
from planty_broker.protocol import Ack

ACTUATORS = ("pump", "lamp")


def record(action: str = "pump.on", cid: str = "c-1", **kw: object) -> CommandRecord:
    base: dict[str, object] = {
        "id": cid,
        "device_id": "dev-1",
        "action": action,
        "args": {},
        "created_ms": 1_000,
        "exp_ms": 61_000,
    }
    base.update(kw)
    return CommandRecord(**base)  # type: ignore[arg-type]


def test_ids_are_unique_and_sort_by_creation_time() -> None:
    a = cmds.new_command_id(1_000)
    b = cmds.new_command_id(2_000)
    assert a.startswith("c-") and len(a) == 28
    assert a < b
    assert len({cmds.new_command_id(5) for _ in range(1000)}) == 1000


def test_unknown_action_lists_every_valid_one() -> None:
    with pytest.raises(InvalidActionError) as err:
        cmds.prepare("fan.on", {}, ACTUATORS, 300)
    assert err.value.valid == [
        "ping",
        "read",
        "config",
        "pump.on",
        "pump.off",
        "pump.set",
        "lamp.on",
        "lamp.off",
        "lamp.set",
    ]
    assert "pump, lamp" in str(err.value) and "lamp.set" in str(err.value)


def test_a_device_that_declared_nothing_takes_builtins_only() -> None:
    assert cmds.prepare("read", {}, (), 300) == {}
    with pytest.raises(InvalidActionError, match="not declared any actuator"):
        cmds.prepare("pump.on", {}, (), 300)


def test_on_without_seconds_gets_the_safety_maximum() -> None:
    assert cmds.prepare("pump.on", {}, ACTUATORS, 300) == {"seconds": 300}
    assert cmds.prepare("pump.on", {"seconds": None}, ACTUATORS, 12.5) == {"seconds": 12.5}
    assert cmds.prepare("pump.on", {"seconds": 30}, ACTUATORS, 300) == {"seconds": 30}
    assert cmds.prepare("pump.off", {}, ACTUATORS, 300) == {}


@pytest.mark.parametrize(
    ("action", "args"),
    [
        ("pump.on", {"seconds": 0}),
        ("pump.on", {"seconds": "ten"}),
        ("pump.on", {"seconds": True}),
        ("pump.on", {"seconds": 301}),
        ("lamp.set", {}),
        ("lamp.set", {"value": "high"}),
        ("config", {}),
        ("config", {"interval_s": -1}),
        ("config", {"interval_s": 5, "colour": "red"}),
    ],
)
def test_bad_args_are_refused_with_what_is_expected(action: str, args: dict) -> None:
    with pytest.raises(InvalidArgsError):
        cmds.prepare(action, args, ACTUATORS, 300)


def test_a_newer_actuator_command_supersedes_a_queued_one_for_the_same_actuator() -> None:
    old = record("pump.on", "c-1")
    assert cmds.supersedes(record("pump.off", "c-2"), old)
    assert not cmds.supersedes(record("lamp.off", "c-2"), old)  # another actuator
    assert not cmds.supersedes(record("read", "c-2"), old)  # not an actuator command
    assert not cmds.supersedes(record("pump.off", "c-2", device_id="dev-2"), old)
    sent = cmds.sent(old, 2_000).record
    assert not cmds.supersedes(record("pump.off", "c-2"), sent)  # already on its way


def test_a_full_life_keeps_every_transition_with_its_time() -> None:
    q = cmds.queued(record())
    assert q.new and q.record.state is CommandState.QUEUED and q.transition.at_ms == 1_000
    s1 = cmds.sent(q.record, 2_000)
    s2 = cmds.sent(s1.record, 12_000)
    assert (s2.record.attempts, s2.record.sent_ms, s2.record.last_sent_ms) == (2, 2_000, 12_000)
    assert s2.transition.detail == "re-sent (attempt 2)"
    a = cmds.acked(s2.record, Ack("c-1", True, {"on": True}), 12_040)
    assert a.record.state is CommandState.ACKED and a.record.final
    assert a.record.rtt_ms == 40.0 and a.record.final_ms == 12_040
    assert a.record.result == {"on": True}
    with pytest.raises(IllegalTransitionError):
        cmds.sent(a.record, 13_000)


def test_device_errors_become_failed_or_expired() -> None:
    s = cmds.sent(record(), 2_000).record
    failed = cmds.acked(s, Ack("c-1", False, error="pump jammed"), 2_010).record
    assert failed.state is CommandState.FAILED and failed.error == "pump jammed"
    expired = cmds.acked(s, Ack("c-1", False, error="expired"), 2_010).record
    assert expired.state is CommandState.EXPIRED


def test_only_a_queued_command_can_be_cancelled_or_superseded() -> None:
    q = record()
    assert (
        cmds.ended(q, CommandState.CANCELLED, 5, "by server").record.state is CommandState.CANCELLED
    )
    s = cmds.sent(q, 2_000).record
    with pytest.raises(IllegalTransitionError):
        cmds.ended(s, CommandState.CANCELLED, 5, "too late")
    with pytest.raises(IllegalTransitionError):
        cmds.superseded(s, record("pump.off", "c-2"), 5)


def test_a_late_ack_is_kept_without_changing_the_outcome() -> None:
    s = cmds.sent(record(), 2_000).record
    failed = cmds.ended(s, CommandState.FAILED, 40_000, "no ack after 3 attempts").record
    late = cmds.late_ack(failed, Ack("c-1", True, {"on": True}), 41_000)
    assert late.record.state is CommandState.FAILED
    assert late.record.late_ack == {"at_ms": 41_000, "ok": True, "result": {"on": True}}
    assert late.transition.state == cmds.LATE_ACK
    assert cmds.event_data(late)["late_ack"]["ok"] is True


def test_event_data_describes_the_transition() -> None:
    q = cmds.queued(record(args={"seconds": 5}))
    assert cmds.event_data(q) == {
        "id": "c-1",
        "action": "pump.on",
        "state": "queued",
        "attempt": 0,
        "origin": "api",
        "args": {"seconds": 5},
        "exp_ms": 61_000,
    }
    a = cmds.acked(cmds.sent(q.record, 2_000).record, Ack("c-1", True, {"on": True}), 2_005)
    data = cmds.event_data(a)
    assert data["state"] == "acked" and data["result"] == {"on": True} and data["rtt_ms"] == 5.0


def test_server_chosen_ids() -> None:
    assert cmds.valid_command_id("order-42:pump")
    assert not cmds.valid_command_id("ab")
    assert not cmds.valid_command_id("has space")
    assert not cmds.valid_command_id("x" * 65)


def test_token_bucket_paces_to_its_rate_after_the_burst() -> None:
    b = TokenBucket(rate=10, burst=3, now=0.0)
    assert [b.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert b.wait_s(0.0) == pytest.approx(0.1)
    assert not b.take(0.05)
    assert b.take(0.1)
    assert sum(b.take(t / 100) for t in range(11, 111)) == 10  # 1 s later: 10 more, no more
    b2 = TokenBucket(rate=10, burst=3, now=0.0)
    assert sum(b2.take(100.0) for _ in range(10)) == 3  # idle time saves at most `burst`


def test_the_fast_copy_of_a_record_is_dataclasses_replace() -> None:
    """`_with` (the state machine's copy, issue 17) gives what `dataclasses.replace` gives,
    and refuses a field the record does not have as replace does."""
    rec = CommandRecord("c-1", "dev-1", "lamp.set", {"value": 1}, 10, 20, attempts=2)
    changes = {"state": CommandState.SENT, "updated_ms": 15, "attempts": 3, "error": None}
    assert cmds._with(rec, **changes) == dataclasses.replace(rec, **changes)
    assert cmds._with(rec) == rec and cmds._with(rec) is not rec
    with pytest.raises(TypeError, match="nope"):
        cmds._with(rec, nope=1)


def test_valid_actions_are_checked_from_a_cached_set_and_listed_when_refused() -> None:
    assert cmds.prepare("lamp.on", {}, ("lamp",), 30) == {"seconds": 30}
    with pytest.raises(InvalidActionError) as info:
        cmds.prepare("pump.on", {}, ("lamp",), 30)
    assert info.value.valid == cmds.valid_actions(("lamp",))


def test_an_id_is_its_time_and_80_random_bits_in_crockford_base32() -> None:
    for ms in (0, 1, 1_733_305_201_123, 2**48 - 1):
        cid = cmds.new_command_id(ms)
        value = 0
        for ch in cid[2:]:
            value = value * 32 + "0123456789ABCDEFGHJKMNPQRSTVWXYZ".index(ch)
        assert len(cid) == 28 and value >> 80 == ms
