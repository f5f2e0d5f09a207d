"""A real gateway in-process: supervised Mosquitto with TLS on free ports, SQLite in tmp."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from gmqtt import Client

from planty_broker.app import Gateway
from planty_broker.config import Settings, load_settings
from tests.conftest import free_port

ADMIN = "test-admin-token-" + uuid.uuid4().hex


def gateway_settings(data_dir: Path, **sections: dict[str, Any]) -> Settings:
    overrides: dict[str, dict[str, Any]] = {
        "gateway": {"data_dir": str(data_dir), "admin_token": ADMIN},
        "api": {"port": free_port()},
        "mqtt": {
            "port": free_port(),
            "internal_port": free_port(),
            "public_host": "localhost",
            "keepalive_s": 2,
            "x509_port": free_port(),
        },
        "presence": {"check_every_s": 0.2},
    }
    for name, values in sections.items():
        overrides.setdefault(name, {}).update(values)
    return load_settings(env={}, overrides=overrides)


@contextlib.asynccontextmanager
async def running_gateway(settings: Settings) -> AsyncIterator[Gateway]:
    async with Gateway(settings, announce=lambda _line: None) as gw:
        yield gw


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    """One gateway shared by the tests of this folder; tests use their own device ids."""
    async with running_gateway(gateway_settings(tmp_path_factory.mktemp("gw"))) as gw:
        yield gw


@pytest_asyncio.fixture(loop_scope="session")
async def api(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=gateway.api_url, timeout=10, headers={"Authorization": f"Bearer {ADMIN}"}
    ) as client:
        yield client


def unique_id(prefix: str = "dev") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def tls_context(ca_pem: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=ca_pem)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class RawDevice:
    """A bare MQTT client speaking PROTOCOL.md by hand, for security and bad-input tests."""

    def __init__(
        self,
        device_id: str,
        token: str,
        mqtt: dict[str, Any],
        *,
        client_id: str | None = None,
        will: bool = True,
        prefix: str = "planty/v1",
    ) -> None:
        from gmqtt import Message

        self.device_id = device_id
        self.base = f"{prefix}/devices/{device_id}"
        will_msg = (
            Message(f"{self.base}/status", b'{"online": false}', qos=1, retain=True)
            if will
            else None
        )
        self.client = Client(client_id or device_id, will_message=will_msg)
        self.client.set_auth_credentials(device_id, token)
        self.mqtt = mqtt
        self.received: list[tuple[str, bytes]] = []
        self.client.on_message = self._on_message
        self.disconnected = asyncio.Event()
        self.client.on_disconnect = lambda *_a, **_k: self.disconnected.set()

    def _on_message(self, _c: Client, topic: str, payload: bytes, _qos: int, _p: Any) -> int:
        self.received.append((topic, payload))
        return 0

    async def connect(self, version: int = 4) -> None:
        self.client.set_config({"reconnect_retries": 0})
        await self.client.connect(
            self.mqtt["host"],
            self.mqtt["port"],
            ssl=tls_context(self.mqtt["ca_pem"]),
            keepalive=30,
            version=version,
        )

    def publish(
        self,
        channel: str,
        payload: bytes,
        *,
        retain: bool = False,
        qos: int = 1,
        topic: str | None = None,
    ) -> None:
        self.client.publish(topic or f"{self.base}/{channel}", payload, qos=qos, retain=retain)

    async def kill(self) -> None:
        """Drop the TCP connection without DISCONNECT: the MQTT server fires the last will."""
        transport = self.client._connection._transport
        transport.abort()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.client.disconnect()


async def eventually(check: Callable[[], Any], timeout: float = 10.0, every: float = 0.05) -> Any:
    """Poll `check` (sync or async) until it returns a truthy value; fail with its last value."""
    deadline = asyncio.get_running_loop().time() + timeout
    last: Any = None
    while True:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s (last value: {last!r})")
        await asyncio.sleep(every)
