"""Property tests of the evaluator: safety limits hold for any reading sequence."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from planty_broker.domain.rules.clock import TimeWindow
from planty_broker.domain.rules.eval import (
    Decision,
    Outcome,
    Reason,
    RuleState,
    evaluate,
    note_manual_command,
    quiet_band,
)
from planty_broker.domain.rules.index import RuleIndex
from planty_broker.domain.rules.model import Op, Rule

T0 = 1_764_240_000_000  # 2025-11-27
ZONES = ["UTC", "+05:30", "-08:00", "Europe/Paris", "America/New_York"]


def local_date(tz: str, at_ms: int) -> object:
    """The local calendar date, computed independently of the engine's LocalClock."""
    if tz == "UTC":
        zone: timezone | ZoneInfo = UTC
    elif tz[0] in "+-":
        sign = -1 if tz[0] == "-" else 1
        zone = timezone(sign * timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6])))
    else:
        zone = ZoneInfo(tz)
    return datetime.fromtimestamp(at_ms / 1000, zone).date()


@dataclass(frozen=True)
class Step:
    """One event in time: a reading (value, age) or a manual command."""

    dt_ms: int
    value: float
    age_ms: int
    manual: bool


@st.composite
def rules(draw: st.DrawFn, *, guards: bool = True) -> Rule:
    op = draw(st.sampled_from(list(Op)))
    threshold = draw(st.floats(0.2, 0.8))
    gap = draw(st.sampled_from([0.0, 0.05, 0.1, 0.2]))
    rearm = threshold + gap if op.below else threshold - gap
    seconds = draw(st.sampled_from([None, 10, 20, 45]))
    args = {} if seconds is None else {"seconds": seconds}
    if not guards:
        return Rule("r", ("dev-1",), "soil_moisture", op, threshold, "pump.on", args,
                    rearm=rearm, stale_after_s=None, hold_s=0)  # fmt: skip
    max_s = draw(st.one_of(st.none(), st.sampled_from([60.0, 100.0, 130.0]))) if seconds else None
    window = draw(st.one_of(st.none(), st.sampled_from(["06:00-20:00", "22:00-06:00"])))
    return Rule(
        "r",
        ("dev-1",),
        "soil_moisture",
        op,
        threshold,
        "pump.on",
        args,
        rearm=rearm,
        window=None if window is None else TimeWindow.parse(window),
        tz=draw(st.sampled_from(ZONES)),
        cooldown_s=draw(st.sampled_from([0.0, 60.0, 600.0, 1800.0])),
        max_fires_per_day=draw(st.one_of(st.none(), st.integers(1, 6))),
        max_seconds_per_day=max_s,
        stale_after_s=draw(st.one_of(st.none(), st.sampled_from([120.0, 900.0]))),
        hold_s=draw(st.sampled_from([0.0, 300.0, 3600.0])),
    )


steps = st.lists(
    st.builds(
        Step,
        dt_ms=st.one_of(st.integers(0, 120_000), st.integers(0, 6 * 3_600_000)),
        value=st.floats(0.0, 1.0),
        age_ms=st.one_of(st.just(0), st.integers(-2_000_000, 2_000_000)),
        manual=st.integers(0, 9).map(lambda n: n == 0),  # ~10 % manual commands
    ),
    max_size=150,
)


def run(rule: Rule, seq: list[Step]) -> list[tuple[Step, int, Decision | None]]:
    """Feed the sequence; returns (step, now_ms, decision) per reading step."""
    state = RuleState("dev-1")
    now = T0
    out: list[tuple[Step, int, Decision | None]] = []
    for step in seq:
        now += step.dt_ms
        if step.manual:
            note_manual_command(state, now, rule.hold_s)
            continue
        out.append((step, now, evaluate(rule, state, step.value, now - step.age_ms, now)))
    return out


def fires(trace: list[tuple[Step, int, Decision | None]]) -> list[int]:
    return [i for i, (_, _, d) in enumerate(trace) if d is not None and d.outcome is Outcome.FIRE]


@settings(max_examples=300, deadline=None)
@given(rules(), steps)
def test_fires_respect_cooldown_budget_stale_window_and_hold(rule: Rule, seq: list[Step]) -> None:
    trace = run(rule, seq)
    fired = fires(trace)
    times = [trace[i][1] for i in fired]
    # at most one fire within any cooldown window
    for a, b in itertools.pairwise(times):
        assert b - a >= rule.cooldown_s * 1000
    # per local day: fires <= budget, actuator seconds <= budget
    per_day: dict[object, int] = {}
    for t in times:
        day = local_date(rule.tz, t)
        per_day[day] = per_day.get(day, 0) + 1
    for count in per_day.values():
        if rule.max_fires_per_day is not None:
            assert count <= rule.max_fires_per_day
        if rule.max_seconds_per_day is not None:
            assert count * rule.seconds <= rule.max_seconds_per_day
    for i in fired:
        step, now, decision = trace[i]
        assert decision is not None
        assert decision.action == "pump.on"
        assert rule.fires(step.value, rule.threshold)
        # stale readings never fire (older or dated ahead by more than the bound)
        if rule.stale_after_s is not None:
            assert abs(step.age_ms) <= rule.stale_after_s * 1000
        if rule.window is not None:
            assert rule.window.contains(rule.clock.local(now)[1])
    # manual hold: no fire within hold_s after a manual command
    now, reading_no = T0, 0
    manual_at: list[int] = []
    fired_set = set(fired)
    for step in seq:
        now += step.dt_ms
        if step.manual:
            manual_at.append(now)
            continue
        if reading_no in fired_set:
            assert all(not (m <= now < m + rule.hold_s * 1000) for m in manual_at)
        reading_no += 1


@settings(max_examples=300, deadline=None)
@given(rules(), steps)
def test_hysteresis_never_fires_twice_without_rearming(rule: Rule, seq: list[Step]) -> None:
    trace = run(rule, seq)
    fired = fires(trace)
    for a, b in itertools.pairwise(fired):
        between = trace[a + 1 : b]
        assert any(
            not rule.fires(step.value, rule.rearm_at)
            and (rule.stale_after_s is None or abs(step.age_ms) <= rule.stale_after_s * 1000)
            for step, _, _ in between
        ), "fired again without the reading passing the re-arm bound"


@settings(max_examples=300, deadline=None)
@given(rules(guards=False), steps)
def test_without_guards_fires_exactly_on_each_armed_crossing(rule: Rule, seq: list[Step]) -> None:
    """Reference model of hysteresis alone: the evaluator is not allowed to skip a fire."""
    trace = run(rule, [s for s in seq if not s.manual])
    armed = True
    expected = []
    for i, (step, _, _) in enumerate(trace):
        if rule.fires(step.value, rule.threshold):
            if armed:
                expected.append(i)
                armed = False
        elif not rule.fires(step.value, rule.rearm_at):
            armed = True
    assert fires(trace) == expected


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([60.0, 600.0]), steps)
def test_cooldown_alone_refires_as_soon_as_it_ends(cooldown_s: float, seq: list[Step]) -> None:
    """Reference model of cooldown without hysteresis: every allowed fire happens."""
    rule = Rule("r", ("dev-1",), "soil_moisture", Op.LT, 0.5, "pump.on", cooldown_s=cooldown_s,
                stale_after_s=None)  # fmt: skip
    trace = run(rule, [s for s in seq if not s.manual])
    last: int | None = None
    armed = True
    expected = []
    for i, (step, now, decision) in enumerate(trace):
        if step.value < 0.5:
            if armed and (last is None or now - last >= cooldown_s * 1000):
                expected.append(i)
                last, armed = now, False
            elif armed:
                assert decision is not None
                assert decision.reason is Reason.COOLDOWN
        else:
            armed = True
    assert fires(trace) == expected


@settings(max_examples=200, deadline=None)
@given(rules(), steps)
def test_only_fires_and_first_suppressions_are_events(rule: Rule, seq: list[Step]) -> None:
    trace = run(rule, seq)
    for step, _, decision in trace:
        if decision is None:
            continue
        assert rule.fires(step.value, rule.threshold), "a decision without the condition met"
        if decision.outcome is Outcome.FIRE:
            assert decision.event
        elif decision.reason is Reason.DISARMED or decision.repeat > 1:
            assert not decision.event
        else:
            assert decision.event


def boundaries(rule_list: list[Rule]) -> list[float]:
    """Threshold and re-arm bounds and their float neighbours: where off-by-one bugs live."""
    out = []
    for r in rule_list:
        for b in (r.threshold, r.rearm_at):
            out += [b, math.nextafter(b, -math.inf), math.nextafter(b, math.inf)]
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(rules(), min_size=1, max_size=3), steps, st.data())
def test_index_returns_exactly_the_events_of_the_plain_evaluator(
    rule_list: list[Rule], seq: list[Step], data: st.DataObject
) -> None:
    """The index's quiet-band shortcut must not change any outcome or state."""
    rule_list = [replace(r, id=f"r{i}") for i, r in enumerate(rule_list)]
    edge = st.sampled_from(boundaries(rule_list))
    index = RuleIndex()
    index.replace_all(rule_list)
    states = {r.id: RuleState("dev-1") for r in rule_list}
    now = T0
    for step in seq:
        now += step.dt_ms
        if step.manual:
            index.note_manual_command("dev-1", "pump.off", now)
            for r in rule_list:
                note_manual_command(states[r.id], now, r.hold_s)
            continue
        value = data.draw(edge) if data.draw(st.booleans()) else step.value
        got = index.evaluate("dev-1", {"soil_moisture": value}, now - step.age_ms, now)
        want = [
            d
            for r in rule_list
            if (d := evaluate(r, states[r.id], value, now - step.age_ms, now)) and d.event
        ]
        assert list(got) == want
        for r in rule_list:
            assert index.state(r.id, "dev-1") == states[r.id]


@settings(max_examples=300, deadline=None)
@given(rules(), steps, st.data())
def test_quiet_band_readings_change_nothing(
    rule: Rule, seq: list[Step], data: st.DataObject
) -> None:
    """The contract the index relies on, checked at the band edges and anywhere inside."""
    state = RuleState("dev-1")
    now = T0
    for step in seq:  # drive the state somewhere interesting first
        now += step.dt_ms
        evaluate(rule, state, step.value, now - step.age_ms, now)
    lo, hi = quiet_band(rule, state)
    inside = [v for v in (lo, hi, *boundaries([rule]), 0.0, 0.5, 1.0) if lo <= v <= hi]
    value = data.draw(st.sampled_from(inside)) if inside else None
    if value is None:
        return
    age = data.draw(st.sampled_from([0, 10**7, -(10**7)]))
    before = replace(state)
    decision = evaluate(rule, state, value, now + 1 - age, now + 1)
    assert decision is None or not decision.event
    assert replace(state, last_seen_ms=before.last_seen_ms) == before
