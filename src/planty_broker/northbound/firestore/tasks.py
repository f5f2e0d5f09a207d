"""The connector's background loops: forward the event log, heartbeat, stats, pairing, reads.

The forward loop is the store-and-forward engine: fold new events, write what
is due, confirm the cursor; on `FirestoreUnavailableError` it backs off and
keeps everything (the log holds the events, the buffer the coalesced documents).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from planty_broker.backoff import Backoff
from planty_broker.northbound.firestore.inbound import ORIGIN_INTERNAL
from planty_broker.northbound.firestore.model import now
from planty_broker.northbound.firestore.port import (
    SERVER_TIME,
    FirestoreConfigError,
    FirestoreError,
    FirestoreUnavailableError,
)
from planty_broker.northbound.firestore.sink import PAGE
from planty_broker.tasks import spawn, wait_event

if TYPE_CHECKING:
    from planty_broker.northbound.firestore.connector import FirestoreConnector

log = logging.getLogger(__name__)

POLL_S = 1.0  # the event log is read at least this often
# While Firestore is unreachable a write is tried again at most this often. Its success is
# what resumes the listeners (suspended meanwhile, listeners.py), so this bounds how long
# after Firestore's return the broker hears commands again; one small commit each 5 s of an
# outage costs nothing (it was 30 s: a command written after an outage of 30 s waited up
# to 30 s more, and the outage test's 30 s for it failed under load).
OUTAGE_RETRY_MAX_S = 5.0
MIN_CYCLE_S = 0.05  # at most ~20 write cycles a second, whatever arrives
PAIRING_EVERY_S = 2.0
HOUR_MS = 3_600_000


class Loops:
    """Owns the connector's tasks; `start()` returns them for the connector to cancel."""

    def __init__(self, conn: FirestoreConnector) -> None:
        self._c = conn
        self._last_read: dict[str, float] = {}
        self._config_error_logged = False

    def start(self) -> list[asyncio.Task[None]]:
        """Each loop under the gateway's supervisor (restarted with backoff if it dies)."""
        return [
            spawn("firestore-forward", self._forward),
            spawn("firestore-heartbeat", self._heartbeat),
            spawn("firestore-stats", self._stats),
            spawn("firestore-pairing", self._pairing),
            spawn("firestore-reads", self._reads),
        ]

    # ------------------------------------------------------------ store and forward

    async def _forward(self) -> None:
        c = self._c
        assert c.sink is not None
        assert c.buffer is not None
        sink, buf, kick = c.sink, c.buffer, c._kick
        backoff = Backoff(1.0, OUTAGE_RETRY_MAX_S)
        while True:
            await wait_event(kick, POLL_S)
            kick.clear()
            try:
                while await sink.pull() == PAGE and sink.has_room:  # noqa: ASYNC110
                    await asyncio.sleep(0)  # catching up: fold page after page
                await buf.flush()
                await sink.confirm()
                c._reached()
                backoff.reset()
                self._config_error_logged = False
            except FirestoreUnavailableError as exc:
                c._unreachable(exc)
                await backoff.sleep()
                kick.set()
                continue
            except FirestoreConfigError as exc:
                if not self._config_error_logged:
                    log.error("%s; documents wait until it is fixed", exc)
                    self._config_error_logged = True
                c.last_error = str(exc)
                await asyncio.sleep(30.0)
                kick.set()
                continue
            except Exception as exc:  # e.g. the store is down: retry, never die silently
                log.warning("firestore: forwarding paused (%s); retrying", exc)
                c.last_error = str(exc)
                await backoff.sleep()
                kick.set()
                continue
            wait = buf.next_due_in()
            await asyncio.sleep(max(MIN_CYCLE_S, wait if wait is not None else 0.0))
            if wait is not None:
                kick.set()

    # ------------------------------------------------------------ periodic documents

    async def _heartbeat(self) -> None:
        c = self._c
        assert c.paths is not None
        while True:
            await asyncio.sleep(c.config.heartbeat_s)
            c.add_data(
                c.paths.broker,
                {"online": True, "heartbeat_at": SERVER_TIME, **c.devices_summary()},
            )

    async def _stats(self) -> None:
        c = self._c
        assert c.paths is not None
        while True:
            await asyncio.sleep(c.config.stats_every_s)
            stats = c.svc.stats
            if stats is None:
                continue
            for device in c.svc.registry.all():
                summary = device_stats(stats, device.id)
                if summary is not None:
                    c.add_data(c.paths.device(device.id), {"stats": summary})

    async def _pairing(self) -> None:
        c = self._c
        while True:
            await asyncio.sleep(PAIRING_EVERY_S)
            try:
                await c.pairing()
            except FirestoreError as exc:
                log.warning("firestore: pairing documents not updated yet (%s)", exc)

    async def _reads(self) -> None:
        """`config.read_every_s`: which devices the server wants read, and how often."""
        c = self._c
        while True:
            await asyncio.sleep(1.0)
            commands = c.svc.commands
            if commands is None or not c.config.read_every_s:
                continue
            now = time.monotonic()
            for device_id, period in list(c.config.read_every_s.items()):
                if device_id not in c.svc.registry:
                    continue
                if now - self._last_read.get(device_id, -1e18) < period:
                    continue
                self._last_read[device_id] = now
                try:
                    await commands.submit(
                        device_id, "read", {}, ttl_s=period, origin=ORIGIN_INTERNAL
                    )
                except Exception as exc:  # refused (ValueError/LookupError) or store trouble
                    log.warning("firestore: scheduled read of %s refused: %s", device_id, exc)

    # ------------------------------------------------------------ clean-up

    def forget_device(self, device_id: str) -> None:
        """A removed device: its document and its history go too."""
        c = self._c
        assert c.paths is not None
        assert c.sink is not None
        self._last_read.pop(device_id, None)
        c.sink.rollups.forget_device(device_id)
        assert c.buffer is not None
        c.buffer.delete(c.paths.device(device_id))
        asyncio.get_running_loop().create_task(self._delete_history(device_id))

    async def _delete_history(self, device_id: str) -> None:
        c = self._c
        assert c.port is not None
        assert c.paths is not None
        assert c.buffer is not None
        try:
            for bucket_id in await c.port.list_ids(c.paths.history(device_id)):
                c.buffer.delete(c.paths.bucket(device_id, bucket_id))
        except FirestoreError as exc:
            log.warning("firestore: history of removed device %s kept (%s)", device_id, exc)
        c._kick.set()


def device_stats(stats: Any, device_id: str) -> dict[str, Any] | None:
    """availability, latency p50/p99 and error count of the last hour, from the stats service."""
    try:
        summary = stats.device_summary(device_id).get("stats")
    except Exception:  # the stats service is optional and its shape its own
        return None
    if not summary:
        return None
    out = dict(summary)
    with contextlib.suppress(Exception):
        s = stats.device(device_id)
        if s is not None and not s.latency.is_empty():
            p50, p99 = s.latency.quantiles((0.5, 0.99), HOUR_MS, stats._clock())
            out["latency_p50_ms_1h"], out["latency_p99_ms_1h"] = p50, p99
    out["at"] = now()
    return out
