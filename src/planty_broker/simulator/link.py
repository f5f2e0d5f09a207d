"""One MQTT connection of a simulated device, on gmqtt, with PUBACK accounting.

gmqtt keeps every unacked QoS 1 publish in a storage object and removes it on
PUBACK; a counting storage turns that into "acked" counts and publish-to-PUBACK
latency per message kind. gmqtt's own reconnect is replaced by a "lost" signal,
because the device owns its reconnect policy (jittered exponential backoff) and
opens a fresh link each time, like ESP-IDF firmware.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any

import gmqtt
from gmqtt.mqtt.constants import MQTTv311

from planty_broker.simulator.provision import SimulatorError
from planty_broker.transport.gmqtt_hooks import QosStorage, ReportingClient, abort_connection

log = logging.getLogger(__name__)

# gmqtt logs every lost connection with a stack trace at WARNING; a simulated
# fleet loses connections on purpose (kill, broker restart), so keep it quiet.
_GMQTT_LOG = logging.getLogger("planty_broker.simulator.gmqtt")
_GMQTT_LOG.setLevel(logging.ERROR)


class Kind(StrEnum):
    """What a publish carried, for the published/acked counters."""

    STATUS = "status"
    TELEMETRY = "telemetry"
    ACK = "ack"
    OTA = "ota"
    MALFORMED = "malformed"


class LinkError(SimulatorError, ConnectionError):
    """Connecting failed; the message says why in one line (never the token)."""


AckedCallback = Callable[[Kind, float], None]
MessageCallback = Callable[[str, bytes], None]


class _CountingStorage(QosStorage):
    """gmqtt's in-flight store, reporting each PUBACK with its kind and latency."""

    def __init__(self, on_acked: AckedCallback) -> None:
        super().__init__()
        self.next_kind = Kind.STATUS
        self.next_tag: int | None = None  # the telemetry seq of the next publish
        self.tag_acked: Callable[[int], None] | None = None
        self._sent: dict[int, tuple[Kind, float, int | None]] = {}
        self._report = on_acked

    def on_push(self, mid: int) -> None:
        self._sent.setdefault(mid, (self.next_kind, time.monotonic(), self.next_tag))

    def on_acked(self, mid: int) -> None:
        entry = self._sent.pop(mid, None)
        if entry is not None:
            self._report(entry[0], time.monotonic() - entry[1])
            if entry[2] is not None and self.tag_acked is not None:
                self.tag_acked(entry[2])

    def on_clear(self) -> None:
        self._sent.clear()

    @property
    def inflight(self) -> int:
        return len(self._sent)


class MqttLink:
    """One connection: connect, publish QoS 1 with accounting, receive, close or abort."""

    def __init__(
        self,
        client_id: str,
        password: str | None,
        *,
        will_topic: str,
        will_payload: bytes,
        clean_session: bool,
        on_message: MessageCallback,
        on_acked: AckedCallback,
        on_lost: Callable[[], None] | None = None,
        on_tag_acked: Callable[[int], None] | None = None,
    ) -> None:
        self.lost = asyncio.Event()
        self._lost_callback = on_lost
        self._storage = _CountingStorage(on_acked)
        self._storage.tag_acked = on_tag_acked
        self._on_message = on_message
        self._client = ReportingClient(
            client_id,
            clean_session=clean_session,
            will_message=gmqtt.Message(will_topic, will_payload, qos=1, retain=True),
            persistent_storage=self._storage,
            logger=_GMQTT_LOG,
            on_lost=self._mark_lost,
        )
        if password is not None:  # None: a client certificate logs in, with no username
            # (RabbitMQ takes a username with a certificate for a password login)
            self._client.set_auth_credentials(client_id, password)
        self._client.on_message = self._message
        self._client.on_disconnect = self._disconnected
        self._open = False

    @property
    def connected(self) -> bool:
        return self._open and not self.lost.is_set()

    @property
    def inflight(self) -> int:
        """QoS 1 publishes sent on this link and not yet PUBACKed."""
        return self._storage.inflight

    async def connect(
        self, host: str, port: int, tls: ssl.SSLContext | None, keepalive_s: int, timeout_s: float
    ) -> None:
        """Open the connection and wait for CONNACK; raises `LinkError` with the reason."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._client.connect(
                    host,
                    port,
                    ssl=tls if tls is not None else False,
                    keepalive=keepalive_s,
                    version=MQTTv311,
                )
        except TimeoutError:
            self.abort()
            raise LinkError(f"no CONNACK from {host}:{port} within {timeout_s:g} s") from None
        except gmqtt.MQTTConnectError as exc:
            self.abort()
            raise LinkError(
                f"{host}:{port} refused the login ({exc}): check the device id and its token"
            ) from None
        except socket.gaierror as exc:
            raise LinkError(
                f"cannot resolve {host!r} ({exc.strerror}): pass --mqtt-host, or set "
                "mqtt.public_host to a name or address devices can resolve"
            ) from None
        except ConnectionRefusedError:
            raise LinkError(
                f"{host}:{port} refused the connection: nothing listens there (is the gateway "
                "running, and is this its device port?)"
            ) from None
        except ssl.SSLCertVerificationError as exc:
            raise LinkError(
                f"TLS to {host}:{port} failed: certificate verify failed ({exc.verify_message}); "
                "is this the gateway's CA and the host name in its certificate?"
            ) from None
        except ssl.SSLError as exc:
            raise LinkError(f"TLS to {host}:{port} failed: {exc}") from None
        except OSError as exc:
            raise LinkError(f"cannot connect to {host}:{port}: {exc}") from None
        self._open = True

    def subscribe(self, topic: str) -> None:
        self._client.subscribe(topic, qos=1)

    def publish(
        self,
        topic: str,
        payload: bytes,
        kind: Kind,
        *,
        retain: bool = False,
        tag: int | None = None,
    ) -> bool:
        """Publish at QoS 1; False when the link is already down (nothing was sent).
        `tag` (a telemetry seq) is handed to `on_tag_acked` with its PUBACK."""
        if not self.connected:
            return False
        self._storage.next_kind = kind
        self._storage.next_tag = tag
        self._client.publish(topic, payload, qos=1, retain=retain)
        return True

    async def wait_acked(self, timeout_s: float) -> bool:
        """Wait until every publish on this link was PUBACKed (or the link died)."""
        drained = asyncio.ensure_future(self._storage.wait_empty())
        lost = asyncio.ensure_future(self.lost.wait())
        try:
            await asyncio.wait(
                {drained, lost}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            drained.cancel()
            lost.cancel()
        return self._storage.inflight == 0

    async def close(self) -> None:
        """Clean DISCONNECT: the broker discards the last will."""
        if not self._open:
            return
        self._open = False
        try:
            await asyncio.wait_for(self._client.disconnect(), timeout=2.0)
        except (OSError, TimeoutError):
            self.abort()

    def abort(self) -> None:
        """Drop the TCP connection without DISCONNECT, so the broker publishes the last will."""
        self._open = False
        abort_connection(self._client)
        self._mark_lost()

    def _message(self, _client: Any, topic: str, payload: bytes, _qos: int, _props: Any) -> None:
        self._on_message(topic, payload)

    def _disconnected(self, _client: Any, _packet: Any, _exc: Any = None) -> None:
        self._mark_lost()

    def _mark_lost(self) -> None:
        if self.lost.is_set():
            return
        self.lost.set()
        if self._lost_callback is not None:
            self._lost_callback()
