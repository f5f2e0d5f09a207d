"""How the gateway's links come back after losing their server: one policy for the MQTT
link (`mqtt.py`, gmqtt reconnects and asks us for the delay) and the AMQP link
(`amqp.py`, its own loop over the cluster's nodes).

    reconnect = Reconnect("MQTT link", Backoff(1.0, 30.0, jitter=0.5))
    on connect:       reconnect.up(where)        # delays start small again; counted
    on a lost link:   reconnect.lost(where)      # one warning
    an attempt fails: delay = reconnect.failed(where, exc)   # 1, 2, 4 ... max_s, jittered

The delays come from the link's `backoff.Backoff` (jittered, so many gateways that lost
the same server do not come back at once).
"""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Self

from planty_broker.backoff import Backoff

log = logging.getLogger("planty_broker.transport")


class Reconnect:
    """The delays, the count of reconnects and the log lines of one link."""

    def __init__(self, name: str, backoff: Backoff) -> None:
        self.name = name
        self._backoff = backoff
        self._ever_up = False
        self.count = 0  # reconnects: connections after the first

    def up(self, where: str) -> bool:
        """The link is connected; True when this was a reconnect."""
        self._backoff.reset()
        again = self._ever_up
        self._ever_up = True
        if again:
            self.count += 1
            log.info("%s to %s restored", self.name, where)
        return again

    def lost(self, where: str) -> None:
        log.warning("%s to %s lost; reconnecting with backoff", self.name, where)

    def failed(self, where: str, exc: BaseException | None = None) -> float:
        """An attempt failed (or the link dropped): the delay before the next one."""
        delay = self._backoff.next()
        if exc is not None:
            log.info("%s to %s: reconnect failed (%s); next try in %.1f s", self.name, where,
                     exc, delay)  # fmt: skip
        return delay


class Connects:
    """`async with link:` connects, and closes on the way out."""

    async def connect(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
