"""Gateways for the identity tests: supervised Mosquitto (TLS, X.509 listener), SQLite in tmp."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from tests.conftest import free_port
from tests.integration.core.conftest import ADMIN, gateway_settings

from planty_broker.app import Gateway
from planty_broker.config import Settings
from planty_broker.mqttserver.probe import connect_packet
from planty_broker.simulator.claim import ClaimCredentials
from planty_broker.simulator.profile import DeviceCredentials, DeviceProfile

__all__ = ["ADMIN", "identity_settings", "started"]


def identity_settings(data_dir: Path, **sections: dict[str, Any]) -> Settings:
    mqtt = {"x509_port": free_port(), **sections.pop("mqtt", {})}
    return gateway_settings(data_dir, mqtt=mqtt, **sections)


@contextlib.asynccontextmanager
async def started(settings: Settings) -> AsyncIterator[Gateway]:
    async with Gateway(settings, announce=lambda _line: None) as gw:
        yield gw


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gw(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    """One gateway per test module (pairing and rate limits are per gateway)."""
    settings = identity_settings(
        tmp_path_factory.mktemp("identity"),
        provisioning={"claim_grace_s": 0.5, "delivery_retry_s": 1.0},
    )
    async with started(settings) as gateway:
        yield gateway


@pytest_asyncio.fixture(loop_scope="session")
async def admin(gw: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(gw, ADMIN) as c:
        yield c


def api_client(gw: Gateway, token: str | None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(base_url=f"{gw.api_url}/api/v1", timeout=15, headers=headers)


def device_credentials(created: dict[str, Any], port: int | None = None) -> DeviceCredentials:
    """`POST /devices` answer -> simulator credentials."""
    m = created["mqtt"]
    return DeviceCredentials(
        device_id=created["id"],
        token=created["token"],
        host=m["host"],
        port=port or m["port"],
        ca_pem=m["ca_pem"],
    )


async def claim_credentials(admin: httpx.AsyncClient) -> ClaimCredentials:
    r = await admin.get("/provisioning/claim-credential")
    assert r.status_code == 200, r.text
    data = r.json()
    m = data["mqtt"]
    return ClaimCredentials(
        host=m["host"],
        port=m["port"],
        ca_pem=m["ca_pem"],
        password=data["password"],
        slots=data["slots"],
        first_slot=data["first_slot"],
    )


FAST = DeviceProfile(interval_s=0.1, keepalive_s=5, reconnect_min_s=0.2, reconnect_max_s=1.0)


def tls(ca_pem: str, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=ca_pem)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


async def try_login(
    host: str,
    port: int,
    ctx: ssl.SSLContext,
    username: str | None,
    password: str | None,
    client_id: str | None = None,
) -> str:
    """One MQTT 3.1.1 login over TLS: "accepted", "refused: <CONNACK code>" or "tls: <why>".

    By hand (not gmqtt), so a certificate refused after the TLS 1.3 handshake shows up as
    the alert it is, and nothing waits forever.
    """
    try:
        async with asyncio.timeout(10):
            reader, writer = await asyncio.open_connection(host, port, ssl=ctx)
            try:
                if username is None:  # a client certificate alone
                    packet = connect_packet(client_id or "probe", None, None)
                else:
                    packet = connect_packet(
                        client_id or f"probe-{username}", username, password or ""
                    )
                writer.write(packet)
                await writer.drain()
                head = await reader.readexactly(4)
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
    except ssl.SSLError as exc:
        return f"tls: {exc.reason or exc}"
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        return f"tls: connection closed ({type(exc).__name__})"
    if head[0] != 0x20:
        return f"refused: not a CONNACK ({head.hex()})"
    return "accepted" if head[3] == 0 else f"refused: CONNACK {head[3]}"
