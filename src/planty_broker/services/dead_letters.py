"""Dead letters: messages that can never be stored, set aside so nothing else waits on them.

Every writer (the readings writer, the command journal, status and ack handling, presence,
the event log and the rule history) hands a message the store refused for good
(`PermanentStoreError`, see errors.py) to `record`; it is kept in the dead letter table
with its device, topic, raw payload (bounded), error and time, counted per device (and as
a `dead_letter` device error, so it shows in the device's `errors_by_kind`; not for the
event log's own refusals), then the caller acknowledges the message. Listed and purged
through the API (`/api/v1/dead-letters`) and `planty dead-letters`; kept
`store.dead_letters_keep_days`, pruned on the injected clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from planty_broker.domain.dead_letters import DeadLetter, dead_letter
from planty_broker.domain.history import DAY_MS
from planty_broker.ports.store import DeadLetterStore
from planty_broker.protocol import ErrorKind
from planty_broker.services.bus import Bus, DeviceError
from planty_broker.services.registry import now_ms
from planty_broker.tasks import spawn

log = logging.getLogger(__name__)

DEAD_LETTER_KIND = ErrorKind.DEAD_LETTER.value  # the device error kind it counts as
PRUNE_CHUNK = 10_000
LOG_EVERY_S = 60.0
MAX_COUNTED_DEVICES = 100_000  # per-device counts held at most (then only the total grows)


class DeadLetterService:
    """Keeps, counts, lists, purges and prunes dead letters."""

    def __init__(
        self,
        port: DeadLetterStore,
        bus: Bus,
        *,
        keep_days: float,
        prune_every_s: float = 3600.0,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.port = port
        self._bus = bus
        self._keep_ms = int(keep_days * DAY_MS)
        self._prune_every_s = prune_every_s
        self._clock = clock
        self.held: dict[str, int] = {}  # per device ("" for none): what the store holds
        self.recorded = 0  # since start
        self.pruned = 0
        self._last_logged = -LOG_EVERY_S
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Load the counts; start pruning (a store that is down now is retried later)."""
        try:
            self.held = await self.port.dead_letter_counts()
        except Exception as exc:
            log.warning("dead letters: could not count them yet: %s", exc)

    def prune_loop(self) -> asyncio.Task[None]:
        self._task = spawn("dead-letters-prune", self._prune_loop)
        return self._task

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @property
    def total_held(self) -> int:
        return sum(self.held.values())

    async def record(
        self,
        device_id: str | None,
        topic: str,
        payload: bytes,
        error: BaseException | str,
        *,
        report: bool = True,
    ) -> DeadLetter:
        """Keep one refused message; raises what the store raises (a transient error: the
        caller holds the message and retries). `report`: also publish it as a device error
        (which the event log appends): False for the event log's own refusals, so a refused
        event can never lead to another event (and another refusal)."""
        at = self._clock()
        why = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        letter = dead_letter(device_id, topic, payload, why, at)
        await self.port.add_dead_letters([letter])
        self.recorded += 1
        key = letter.device_id or ""
        if key in self.held or len(self.held) < MAX_COUNTED_DEVICES:
            self.held[key] = self.held.get(key, 0) + 1
        if report:
            self._bus.publish(
                DeviceError(device_id, DEAD_LETTER_KIND, f"set aside on {topic}: {why}", at)
            )
        t = time.monotonic()
        if t - self._last_logged >= LOG_EVERY_S:
            self._last_logged = t
            log.warning(
                "dead letter from %s on %s (%d bytes): %s; acknowledged and kept "
                "(planty dead-letters; further ones logged at most once a minute)",
                device_id or "?",
                letter.topic,
                letter.size,
                letter.error,
            )
        return letter

    def writer_sink(
        self, topic_of: Callable[[Any], str], *, report: bool = True
    ) -> Callable[[Any, bytes | None, Exception], Awaitable[None]]:
        """A `BatchWriter` dead-letter sink for structured items (an event, a rule history
        line): the item's device (its `device_id`), `topic_of(item)`, the item as JSON."""

        async def sink(item: Any, source: bytes | None, exc: Exception) -> None:
            payload = source if source is not None else item_payload(item)
            device_id = getattr(item, "device_id", None)
            await self.record(device_id, topic_of(item), payload, exc, report=report)

        return sink

    async def list(
        self, device_id: str | None = None, before_id: int | None = None, limit: int = 100
    ) -> list[DeadLetter]:
        return await self.port.list_dead_letters(device_id, before_id, limit)

    async def purge(self, device_id: str | None = None, through_id: int | None = None) -> int:
        n = await self.port.purge_dead_letters(device_id, through_id)
        self.held = await self.port.dead_letter_counts()
        return n

    async def prune_once(self) -> int:
        cut = self._clock() - self._keep_ms
        total = 0
        while True:
            n = await self.port.prune_dead_letters(cut, PRUNE_CHUNK)
            total += n
            if n < PRUNE_CHUNK:
                break
        if total:
            self.pruned += total
            self.held = await self.port.dead_letter_counts()
            log.info("dead letters: %d older than the retention deleted", total)
        return total

    async def _prune_loop(self) -> None:
        while True:
            try:
                await self.prune_once()
            except Exception as exc:  # the store is down: the next pass retries
                log.warning("dead letters: retention pass failed: %s", exc)
            await asyncio.sleep(self._prune_every_s)


def item_payload(item: object) -> bytes:
    """A structured item as JSON for its dead letter; its repr where JSON cannot hold it
    (an integer past 64 bits, a lone surrogate: often why the store refused it)."""
    try:
        return msgspec.json.encode(item)
    except Exception:
        return repr(item).encode("utf-8", "backslashreplace")
