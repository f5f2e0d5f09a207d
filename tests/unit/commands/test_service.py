"""The outbox on the memory store and a fake link: every path to a known outcome."""

from __future__ import annotations

import asyncio

import pytest

from planty_broker.domain.commands import CommandState, InvalidActionError, InvalidArgsError
from planty_broker.protocol import ErrorKind, ProtocolError
from planty_broker.services.bus import DeviceError
from planty_broker.services.commands.service import (
    CommandConflictError,
    NotCancellableError,
    QueueFullError,
)
from planty_broker.services.registry import UnknownDeviceError, now_ms
from planty_broker.storage.memory import MemoryStore
from tests.unit.commands.harness import harness

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_online_device_gets_the_command_and_the_ack_makes_it_final() -> None:
    async with harness() as h:
        await h.device("dev-1")
        rec = await h.service.submit("dev-1", "pump.on", {"seconds": 5}, ttl_s=60)
        assert rec.state in (CommandState.QUEUED, CommandState.SENT)  # its state right now
        [cmd] = await h.link.wait_sent(1)
        assert (cmd.id, cmd.action, cmd.args, cmd.exp) == (
            rec.id,
            "pump.on",
            {"seconds": 5},
            rec.exp_ms,
        )
        waiting = asyncio.create_task(h.service.wait(rec.id, 5))
        await h.ack("dev-1", rec.id, result={"on": True})
        final = await waiting
        assert final.state is CommandState.ACKED and final.result == {"on": True}
        assert final.rtt_ms is not None and final.rtt_ms >= 0
        assert h.service.rtt_book is not None
        assert h.service.latency("dev-1", 3_600_000)["count"] == 1
        stored = await h.store.get_command(rec.id)
        assert stored is not None and stored.state is CommandState.ACKED
        history = [t.state for t in await h.store.command_history(rec.id)]
        assert history == ["queued", "sent", "acked"]
        events = [e.data["state"] for e in await h.store.read_events(0, 100, ["command"])]
        assert events == ["queued", "sent", "acked"]


async def test_wait_s_answers_with_the_current_state_when_time_runs_out() -> None:
    async with harness() as h:
        await h.device("dev-1")
        rec = await h.service.submit("dev-1", "read", wait_s=0.05)
        assert rec.state in (CommandState.QUEUED, CommandState.SENT) and not rec.final
        assert not h.service.outbox.live[rec.id].waiters  # the waiter was removed


async def test_offline_device_gets_its_backlog_oldest_first_when_it_returns() -> None:
    async with harness() as h:
        await h.device("dev-1", online=False)
        ids = [(await h.service.submit("dev-1", a)).id for a in ("read", "lamp.on", "pump.off")]
        await asyncio.sleep(0.05)
        assert h.link.sent == []
        h.online("dev-1")
        sent = await h.link.wait_sent(3)
        assert [c.id for c in sent] == ids
        # actuator safety: a lamp.on without seconds gets the lamp's maximum run time
        assert sent[1].args == {"seconds": 14400}


async def test_no_ack_is_re_sent_with_the_same_id_then_failed() -> None:
    async with harness(ack_timeout_s=0.05, max_attempts=3) as h:
        errors: list[DeviceError] = []
        h.bus.subscribe(DeviceError, errors.append)
        await h.device("dev-1")
        rec = await h.service.submit("dev-1", "pump.on", {"seconds": 1}, wait_s=3)
        assert rec.state is CommandState.FAILED
        assert rec.error == "no ack after 3 attempts (0.05 s each)" and rec.attempts == 3
        assert [c.id for c in h.link.commands()] == [rec.id] * 3
        assert [e.kind for e in errors] == [ErrorKind.ACK_TIMEOUT.value] * 3
        # the device did run it and its ack arrives now: kept, outcome unchanged
        await h.ack("dev-1", rec.id, result={"on": True})
        late = await h.service.require(rec.id)
        assert late.state is CommandState.FAILED and late.late_ack is not None
        assert late.late_ack["ok"] is True


async def test_deadline_first_means_expired_and_never_sent() -> None:
    async with harness() as h:
        await h.device("dev-1", online=False)
        rec = await h.service.submit("dev-1", "pump.on", ttl_s=0.1, wait_s=2)
        assert rec.state is CommandState.EXPIRED
        assert "deadline passed before it could be sent" in (rec.error or "")
        h.online("dev-1")
        await asyncio.sleep(0.05)
        assert h.link.sent == []


async def test_a_device_away_at_ack_timeout_gets_the_re_send_when_back() -> None:
    async with harness(ack_timeout_s=0.2, max_attempts=2) as h:
        await h.device("dev-1")
        rec = await h.service.submit("dev-1", "lamp.off")
        await h.link.wait_sent(1)
        h.offline("dev-1")
        await asyncio.sleep(0.7)  # several ack timeouts while away: parked, not failed
        assert (await h.service.require(rec.id)).state is CommandState.SENT
        h.online("dev-1")
        await h.link.wait_sent(2)
        await h.ack("dev-1", rec.id)
        assert (await h.service.require(rec.id)).state is CommandState.ACKED


async def test_the_link_being_down_pauses_sending() -> None:
    async with harness() as h:
        await h.device("dev-1")
        h.link.down()
        rec = await h.service.submit("dev-1", "read")
        await asyncio.sleep(0.05)
        assert h.link.sent == []
        h.link.up()
        [cmd] = await h.link.wait_sent(1)
        assert cmd.id == rec.id


async def test_a_newer_command_supersedes_a_queued_one_for_the_same_actuator() -> None:
    async with harness() as h:
        await h.device("dev-1", online=False)
        on = await h.service.submit("dev-1", "pump.on", {"seconds": 30})
        lamp = await h.service.submit("dev-1", "lamp.on")
        off = await h.service.submit("dev-1", "pump.off")
        old = await h.service.require(on.id)
        assert old.state is CommandState.SUPERSEDED and old.superseded_by == off.id
        assert f"superseded by {off.id}" in (old.error or "")
        h.online("dev-1")
        sent = await h.link.wait_sent(2)
        assert [c.id for c in sent] == [lamp.id, off.id]


async def test_queue_limit_refuses_with_a_clear_message_and_drops_nothing() -> None:
    async with harness(max_queue_per_device=3) as h:
        await h.device("dev-1", online=False)
        for _ in range(3):
            await h.service.submit("dev-1", "read")
        with pytest.raises(QueueFullError, match="already has 3 commands waiting"):
            await h.service.submit("dev-1", "read")
        assert h.service.active_count("dev-1") == 3


async def test_validation_errors() -> None:
    async with harness(max_ttl_s=100, default_ttl_s=50) as h:
        await h.device("dev-1")
        with pytest.raises(UnknownDeviceError):
            await h.service.submit("nope", "read")
        with pytest.raises(InvalidActionError):
            await h.service.submit("dev-1", "fan.on")
        with pytest.raises(InvalidArgsError, match="ttl_s must be > 0 and <= 100"):
            await h.service.submit("dev-1", "read", ttl_s=101)
        with pytest.raises(InvalidArgsError):
            await h.service.submit("dev-1", "read", ttl_s=0)


async def test_unknown_ack_is_a_protocol_error_and_duplicates_are_quiet() -> None:
    async with harness() as h:
        await h.device("dev-1")
        await h.device("dev-2")
        with pytest.raises(ProtocolError) as err:
            await h.ack("dev-1", "c-never")
        assert err.value.kind is ErrorKind.UNKNOWN_COMMAND
        rec = await h.service.submit("dev-1", "read")
        await h.link.wait_sent(1)
        with pytest.raises(ProtocolError):  # another device cannot ack it
            await h.ack("dev-2", rec.id)
        await h.ack("dev-1", rec.id, result={"readings": {"light": 5}})
        await h.ack("dev-1", rec.id, result={"readings": {"light": 5}})  # a re-ack: fine
        assert (await h.service.require(rec.id)).state is CommandState.ACKED
        assert [r.values for r in h.readings] == [{"light": 5.0}]  # stored as telemetry once
        assert h.readings[0].seq == -1


async def test_cancel_only_before_sending() -> None:
    async with harness() as h:
        await h.device("dev-1", online=False)
        rec = await h.service.submit("dev-1", "lamp.on")
        cancelled = await h.service.cancel(rec.id)
        assert cancelled.state is CommandState.CANCELLED
        with pytest.raises(NotCancellableError, match="already cancelled"):
            await h.service.cancel(rec.id)
        h.online("dev-1")
        sent = await h.service.submit("dev-1", "read")
        await h.link.wait_sent(1)
        with pytest.raises(NotCancellableError, match="already sent"):
            await h.service.cancel(sent.id)
        assert [c.id for c in h.link.commands()] == [sent.id]


async def test_server_chosen_id_is_idempotent() -> None:
    async with harness() as h:
        await h.device("dev-1", online=False)
        a = await h.service.submit("dev-1", "lamp.on", command_id="order-1")
        b = await h.service.submit("dev-1", "lamp.on", command_id="order-1")
        assert a.id == b.id == "order-1" and h.service.active_count("dev-1") == 1
        with pytest.raises(CommandConflictError):
            await h.service.submit("dev-1", "pump.on", command_id="order-1")


async def test_restart_resumes_queued_and_unacked_commands() -> None:
    store = MemoryStore()
    async with harness(store, ack_timeout_s=5) as h:
        await h.device("dev-1")
        await h.device("dev-2", online=False)
        sent = await h.service.submit("dev-1", "pump.on", {"seconds": 3})
        queued = await h.service.submit("dev-2", "read")
        await h.link.wait_sent(1)
        await asyncio.sleep(0.3)  # the lazy `sent` row is committed (or is not: both work)
    async with harness(store, ack_timeout_s=5) as h2:
        assert h2.service.active_count() == 2
        await h2.ack("dev-1", sent.id, result={"on": True})  # the ack queued in MQTT arrives
        assert (await h2.service.require(sent.id)).state is CommandState.ACKED
        h2.online("dev-2")
        [cmd] = await h2.link.wait_sent(1)
        assert cmd.id == queued.id


async def test_restart_re_sends_an_unacked_command_once_its_ack_timer_runs_out() -> None:
    store = MemoryStore()
    async with harness(store, ack_timeout_s=0.1) as h:
        await h.device("dev-1")
        rec = await h.service.submit("dev-1", "lamp.off")
        await h.link.wait_sent(1)
    async with harness(store, ack_timeout_s=0.1) as h2:
        await asyncio.sleep(0.05)
        assert h2.link.sent == []  # presence unknown after a restart: wait for the device
        h2.online("dev-1")
        [cmd] = await h2.link.wait_sent(1)
        assert cmd.id == rec.id
        await h2.ack("dev-1", rec.id)
        final = await h2.service.require(rec.id)
        assert final.state is CommandState.ACKED and final.attempts >= 1


async def test_removing_a_device_drops_its_commands() -> None:
    async with harness() as h:
        await h.device("dev-1", online=False)
        rec = await h.service.submit("dev-1", "read")
        await h.registry.remove("dev-1")
        assert h.service.active_count() == 0
        assert await h.store.get_command(rec.id) is None


async def test_pings_measure_round_trips_and_lost_pings_count() -> None:
    async with harness(ping_interval_s=0.2, ack_timeout_s=0.1) as h:
        errors: list[DeviceError] = []
        h.bus.subscribe(DeviceError, errors.append)
        await h.device("dev-1")
        pinger = h.service.outbox.pinger
        pinger._next["dev-1"] = now_ms()  # due now instead of a random phase
        [ping] = await h.link.wait_sent(1, action="ping")
        assert ping.id.startswith("p-") and ping.exp is not None
        await h.ack("dev-1", ping.id)
        assert h.service.latency("dev-1", 3_600_000)["count"] == 1
        [_, lost] = await h.link.wait_sent(2, action="ping")
        await asyncio.sleep(0.4)
        assert lost.id not in pinger._inflight and pinger.lost >= 1
        assert any("ping" in e.message for e in errors)
        await h.ack("dev-1", lost.id)  # a ping ack too late: ignored, not an unknown command
        assert await h.store.read_events(0, 100, ["command"]) == []  # pings are not logged


async def test_timers_of_finished_commands_do_not_pile_up(monkeypatch: pytest.MonkeyPatch) -> None:
    from planty_broker.services.commands import outbox as commands_outbox

    monkeypatch.setattr(commands_outbox, "COMPACT_AT", 10)
    async with harness() as h:
        await h.device("dev-1")
        for _ in range(40):
            rec = await h.service.submit("dev-1", "read")
            while not any(c.id == rec.id for c in h.link.commands()):
                await asyncio.sleep(0.001)
            await h.ack("dev-1", rec.id)
        assert h.service.active_count() == 0
        assert len(h.service.outbox.timers) <= 10 + 2  # each had a deadline and an ack timer
