"""The broker side of a device test: a raw MQTT client that sees what the device says and commands it.

A gateway-backed version (commands through the HTTP API) can offer the same methods, so
the device tests need not change when the full gateway is swapped in.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
import uuid
from dataclasses import dataclass
from typing import Any

import gmqtt
from gmqtt.mqtt.constants import MQTTv311


@dataclass(frozen=True, slots=True)
class Seen:
    """One message a device published."""

    device_id: str
    channel: str
    payload: Any
    retain: bool
    at: float


class MqttBackend:
    """Subscribes to every device topic as the admin user; sends commands on `cmd`."""

    def __init__(
        self, host: str, port: int, ca_pem: str, user: str, password: str, prefix: str = "planty/v1"
    ) -> None:
        self._host, self._port = host, port
        self._ctx = ssl.create_default_context(cadata=ca_pem)
        self._user, self._password = user, password
        self._base = prefix + "/devices/"
        self.seen: list[Seen] = []
        self._changed = asyncio.Event()
        self._client: gmqtt.Client | None = None

    async def _connect(self, on_message: Any, topic: str) -> gmqtt.Client:
        client = gmqtt.Client("test-backend-" + uuid.uuid4().hex[:8])
        client.set_auth_credentials(self._user, self._password)
        client.on_message = on_message
        await client.connect(self._host, self._port, ssl=self._ctx, version=MQTTv311, keepalive=30)
        client.subscribe(topic, qos=1)
        return client

    async def start(self) -> None:
        self._client = await self._connect(self._on_message, self._base + "+/+")
        await asyncio.sleep(0.1)

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.disconnect()

    def _on_message(self, client: Any, topic: str, payload: bytes, qos: int, props: Any) -> int:
        device_id, _, channel = topic[len(self._base) :].partition("/")
        if channel == "ota":  # what we send the device (binary chunks among it)
            return 0
        body = json.loads(payload) if payload else None
        self.seen.append(
            Seen(device_id, channel, body, bool(props.get("retain")), time.monotonic())
        )
        self._changed.set()
        return 0

    def of(self, device_id: str, channel: str) -> list[Any]:
        return [s.payload for s in self.seen if s.device_id == device_id and s.channel == channel]

    async def wait_for(self, check: Any, timeout: float = 10.0, what: str = "a message") -> Any:
        """Wait until `check()` returns something truthy; return it."""
        deadline = time.monotonic() + timeout
        while True:
            got = check()
            if got:
                return got
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {what}; saw {self.seen[-10:]}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(left, 0.2))
            except TimeoutError:
                pass

    def send(self, device_id: str, cmd: dict[str, Any]) -> None:
        assert self._client is not None
        self._client.publish(self._base + device_id + "/cmd", json.dumps(cmd).encode(), qos=1)

    async def command(
        self,
        device_id: str,
        action: str,
        args: dict[str, Any] | None = None,
        exp: int | None = None,
        cid: str | None = None,
        timeout: float = 10.0,
    ) -> dict[str, Any]:
        """Send one command and return its ack (the first ack with that id)."""
        cid = cid or "c-" + uuid.uuid4().hex[:12]
        before = len(self.of(device_id, "ack"))
        cmd: dict[str, Any] = {"id": cid, "action": action}
        if args is not None:
            cmd["args"] = args
        if exp is not None:
            cmd["exp"] = exp
        self.send(device_id, cmd)

        def ack() -> dict[str, Any] | None:
            for a in self.of(device_id, "ack")[before:]:
                if a.get("id") == cid:
                    return a  # type: ignore[no-any-return]
            return None

        return await self.wait_for(ack, timeout, f"ack of {action} {cid}")  # type: ignore[no-any-return]

    async def retained_status(self, device_id: str) -> tuple[Any, bool]:
        """What a newcomer gets on `status`: (payload, retain flag)."""
        got: asyncio.Future[tuple[Any, bool]] = asyncio.get_running_loop().create_future()

        def on_message(client: Any, topic: str, payload: bytes, qos: int, props: Any) -> int:
            if not got.done():
                got.set_result((json.loads(payload), bool(props.get("retain"))))
            return 0

        client = await self._connect(on_message, self._base + device_id + "/status")
        try:
            return await asyncio.wait_for(got, 5)
        finally:
            await client.disconnect()
