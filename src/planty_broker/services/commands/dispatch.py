"""Sending commands out: one FIFO of command ids, paced by a token bucket, over the MQTT link.

Everything the broker publishes to devices goes through here, so a whole fleet
coming back at once (each device with its backlog, oldest first) reaches the
MQTT server at `dispatch_rate_per_s` at most, and nothing is published while the
link is down (it waits, then continues in order).

With send leases (several gateway instances, issue 15) the dispatcher first leases
the commands it is about to send, as many at once as it has tokens for (one store
round trip for the lot), and sends only those granted; the others go to `refused`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from planty_broker.domain.commands import SendLeases, TokenBucket
from planty_broker.ports.link import Publisher
from planty_broker.tasks import spawn

log = logging.getLogger(__name__)

Lease = Callable[[Sequence[str]], Awaitable[SendLeases]]
LEASE_BATCH = 128  # ids leased in one round trip at most
LEASE_FAILED_PAUSE_S = 1.0  # the store could not answer: wait this long, then lease again


class Dispatcher:
    """Calls `send(command_id)` for each enqueued id, in order, paced, with the link up."""

    def __init__(
        self,
        send: Callable[[str], Awaitable[None]],
        *,
        rate_per_s: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        lease: Lease | None = None,
        refused: Callable[[str, int | None], None] | None = None,
    ) -> None:
        self._send = send
        self._lease = lease
        self._refused = refused
        self.lease_refused = 0  # ids another instance held (or was leasing) when asked
        self.lease_failures = 0  # lease calls the store could not answer
        self._clock = clock
        self.bucket = TokenBucket(rate_per_s, burst, clock())
        self._ready: collections.deque[str] = collections.deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.link: Publisher | None = None
        self.sent = 0
        self.paced_s = 0.0  # total time spent waiting for tokens (visible pacing)

    def __len__(self) -> int:
        return len(self._ready)

    async def start(self) -> None:
        self._task = spawn("commands-dispatch", self._run)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def enqueue(self, command_id: str) -> None:
        self._ready.append(command_id)
        self._wake.set()

    @property
    def link_up(self) -> bool:
        return self.link is not None and self.link.connected

    def try_token(self) -> bool:
        """Take a token for a publish outside the queue (pings); False = skip it this time."""
        return not self._ready and self.bucket.take(self._clock())

    def token_wait_s(self) -> float:
        """Seconds until the next token (0: one is there)."""
        return self.bucket.wait_s(self._clock())

    async def _run(self) -> None:
        while True:
            if not self._ready:
                self._wake.clear()
                await self._wake.wait()
                continue
            link = self.link
            if link is None or not link.connected:
                await asyncio.sleep(0.05) if link is None else await link.wait_connected()
                continue
            wait_s = self.bucket.wait_s(self._clock())
            if wait_s > 0:
                self.paced_s += wait_s
                await asyncio.sleep(wait_s)
                continue
            if self._lease is not None:
                await self._leased_batch(self._lease, link)
                continue
            self.bucket.take(self._clock())
            await self._send_one(self._ready.popleft())

    async def _send_one(self, cid: str) -> None:
        try:
            await self._send(cid)
            self.sent += 1
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("commands: sending %s failed; its ack timeout will retry", cid)

    async def _leased_batch(self, lease: Lease, link: Publisher) -> None:
        """Lease the next ids (as many as there are tokens for), send the granted ones in order."""
        n = max(1, min(len(self._ready), LEASE_BATCH, int(self.bucket.tokens(self._clock()))))
        ids = [self._ready.popleft() for _ in range(n)]
        try:
            answer = await lease(ids)
        except asyncio.CancelledError:
            self._ready.extendleft(reversed(ids))
            raise
        except Exception as e:
            self.lease_failures += 1
            log.warning(
                "commands: could not lease %d command(s) for sending (%s); trying again in %g s",
                len(ids),
                e,
                LEASE_FAILED_PAUSE_S,
            )
            self._ready.extendleft(reversed(ids))
            await asyncio.sleep(LEASE_FAILED_PAUSE_S)
            return
        for i, cid in enumerate(ids):
            if cid not in answer.granted:
                self.lease_refused += 1
                if self._refused is not None:
                    self._refused(cid, answer.held_until.get(cid))
                continue
            if not link.connected:  # the rest waits for the link, in order (leased again then)
                self._ready.extendleft(reversed(ids[i:]))
                return
            wait_s = self.bucket.wait_s(self._clock())
            if wait_s > 0:
                self.paced_s += wait_s
                await asyncio.sleep(wait_s)
            self.bucket.take(self._clock())
            await self._send_one(cid)
