"""Waiting between retries: one exponential backoff for every retry loop.

    backoff = Backoff(initial_s=0.1, max_s=5.0)
    while True:
        try:
            await do_it()
            break
        except SomeError:
            await backoff.sleep()      # 0.1, 0.2, 0.4, ... 5.0, 5.0, ...
    backoff.reset()                    # after a success: start small again

`jitter` spreads the delays (0.5: each one is scaled by a random factor in
[0.5, 1.5)) so that many clients that lost the same server do not come back at once.
"""

from __future__ import annotations

import asyncio
import random


class Backoff:
    """Exponential delays from `initial_s` up to `max_s`, optionally jittered."""

    __slots__ = ("_current", "factor", "initial_s", "jitter", "max_s")

    def __init__(
        self,
        initial_s: float = 1.0,
        max_s: float = 30.0,
        *,
        factor: float = 2.0,
        jitter: float = 0.0,
    ) -> None:
        if not 0 < initial_s <= max_s or factor < 1 or not 0 <= jitter < 1:
            raise ValueError("need 0 < initial_s <= max_s, factor >= 1, 0 <= jitter < 1")
        self.initial_s = initial_s
        self.max_s = max_s
        self.factor = factor
        self.jitter = jitter
        self._current = initial_s

    @property
    def current(self) -> float:
        """The next delay before jitter."""
        return self._current

    def next(self) -> float:
        """The delay to wait now (jittered), and the following one grows."""
        delay = self._current
        self._current = min(self._current * self.factor, self.max_s)
        if self.jitter:
            delay *= 1 - self.jitter + 2 * self.jitter * random.random()  # noqa: S311 - not crypto
        return delay

    def reset(self) -> None:
        """Back to `initial_s` (after a success, or once things have been stable a while)."""
        self._current = self.initial_s

    async def sleep(self) -> float:
        """Wait `next()` seconds; returns how long it waited."""
        delay = self.next()
        await asyncio.sleep(delay)
        return delay
