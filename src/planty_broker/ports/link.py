"""The gateway's own MQTT connection, as the services and the front doors see it.

Adapter: `transport.mqtt.MqttLink` (gmqtt). The services publish through it; the
health route and /metrics read its state and counters.
"""

from __future__ import annotations

from typing import Protocol


def no_ack() -> None:
    """The `ack` handed with a QoS 0 message: nothing to acknowledge. A handler tells QoS 0
    apart by identity (`ack is no_ack`), e.g. to drop it, counted, when its queue is full."""
    return


class Publisher(Protocol):
    """What sending to devices needs: publish, and whether the link is up."""

    @property
    def connected(self) -> bool: ...

    async def wait_connected(self) -> None: ...

    async def publish(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False
    ) -> None: ...


class Link(Publisher, Protocol):
    """The link with its counters (for /metrics)."""

    @property
    def reconnects(self) -> int: ...

    @property
    def messages_in(self) -> int: ...

    @property
    def messages_out(self) -> int: ...

    @property
    def inflight(self) -> int: ...
