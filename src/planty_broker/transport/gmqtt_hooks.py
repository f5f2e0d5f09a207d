"""Every use of gmqtt's internals, in one place (gmqtt 0.8; `tests/unit/core/test_gmqtt_hooks.py`
fails loudly if an upgrade moves any of them).

We rely on five things gmqtt does not document:
1. `client._package_handler._handle_qos_1_publish_packet(mid, packet, topic, properties)`
   receives every QoS 1 PUBLISH: replacing it lets us send the PUBACK ourselves, after
   the message is stored (`take_over_qos1`).
2. `client._package_handler._send_puback(mid)` and `client._connection.is_closing()`:
   the PUBACK on the connection the message came in on, never on a newer one
   (`puback_for`).
3. `PersistentStorage.push_message(mid, raw)`, `.remove_message_by_mid(mid)`, `.clear()`
   and its `_messages` dict: gmqtt's store of our unacknowledged QoS 1 publishes, which
   we subclass to count in-flight messages and time PUBACKs (`QosStorage`).
4. `Client.reconnect(delay)`: called by gmqtt's own reconnect logic; the simulator
   overrides it to report a lost link instead of reconnecting (`ReportingClient`).
5. `client._connection._transport` and `._keep_connection_callback`: the simulator drops
   a device's TCP connection without DISCONNECT, as a power cut would (`abort_connection`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gmqtt import Client
from gmqtt.storage import PersistentStorage

QoS1Handler = Callable[[int, bytes, str, dict[str, Any]], None]
"""handler(mid, payload, topic, properties) for every QoS 1 PUBLISH received."""


def take_over_qos1(client: Client, handler: QoS1Handler) -> None:
    """Deliver QoS 1 messages to `handler`, which sends (or withholds) the PUBACK itself."""
    client._package_handler._handle_qos_1_publish_packet = handler


def puback_for(client: Client, mid: int) -> Callable[[], None]:
    """A callable that acknowledges message `mid` on the connection it arrived on; once the
    connection is replaced or closing it does nothing (packet ids are per connection)."""
    connection = client._connection
    handler = client._package_handler

    def ack() -> None:
        if (
            connection is not None
            and client._connection is connection
            and not connection.is_closing()
        ):
            handler._send_puback(mid)

    return ack


class QosStorage(PersistentStorage):  # type: ignore[misc]
    """gmqtt's store of unacknowledged outgoing QoS 1 messages, with hooks for subclasses:
    `on_push(mid)` when a message is stored, `on_acked(mid)` when its PUBACK removed it,
    `on_clear()` when the session was reset."""

    def push_message(self, mid: int, raw_package: bytes) -> None:
        self.on_push(mid)
        super().push_message(mid, raw_package)

    def remove_message_by_mid(self, mid: int) -> None:
        super().remove_message_by_mid(mid)
        self.on_acked(mid)

    def clear(self) -> None:
        super().clear()
        self.on_clear()

    def __len__(self) -> int:
        return len(self._messages)

    def __bool__(self) -> bool:
        # gmqtt takes `persistent_storage or PersistentStorage()`: an empty store must not
        # be falsy, or gmqtt silently uses a fresh one of its own and our hooks never run.
        return True

    def on_push(self, mid: int) -> None:
        """A message is about to be stored (before it is sent)."""

    def on_acked(self, mid: int) -> None:
        """The message's PUBACK arrived (it is no longer stored)."""

    def on_clear(self) -> None:
        """Every stored message was dropped (a clean session)."""


class ReportingClient(Client):  # type: ignore[misc]
    """A gmqtt client whose automatic reconnect only reports the loss to `on_lost`."""

    def __init__(self, *args: Any, on_lost: Callable[[], None], **kwargs: Any) -> None:
        self._on_lost = on_lost
        super().__init__(*args, **kwargs)

    async def reconnect(self, delay: bool = False) -> None:
        self._on_lost()


def abort_connection(client: Client) -> None:
    """Drop the TCP connection at once, without DISCONNECT (the server sends the last will)."""
    conn = client._connection
    if conn is not None:
        conn._transport.abort()
        if conn._keep_connection_callback is not None:
            conn._keep_connection_callback.cancel()
