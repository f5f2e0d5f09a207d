"""No secret ever reaches a log: every credential flow runs at log level debug, then the
captured log lines and Mosquitto's own log are searched for each secret handed out."""

from __future__ import annotations

import io
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.integration.core.conftest import eventually
from tests.integration.identity.conftest import (
    ADMIN,
    FAST,
    api_client,
    claim_credentials,
    device_credentials,
    identity_settings,
)

from planty_broker.app import Gateway
from planty_broker.logs import TextFormatter, setup_logging
from planty_broker.simulator.claim import FactoryDevice, FactoryIdentity
from planty_broker.simulator.device import SimDevice

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Everything logged, as `planty run --log-level debug` would log it."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    setup_logging("debug")
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(TextFormatter())
    root.addHandler(handler)
    try:
        yield buffer
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])


def body_lines(pem: str) -> list[str]:
    """The base64 lines of a PEM block (what would show if it leaked in pieces)."""
    return [line for line in pem.splitlines() if line and not line.startswith("-----")]


async def test_no_secret_appears_in_any_log(captured: io.StringIO, tmp_path: Path) -> None:
    secrets: dict[str, str] = {"admin token": ADMIN}
    settings = identity_settings(
        tmp_path, provisioning={"claim_grace_s": 0.3, "delivery_retry_s": 1.0}
    )
    async with Gateway(settings) as gw:  # no announce callback: start-up lines go to the log
        async with api_client(gw, ADMIN) as admin:
            # pairing: the code (once used) and the server's token
            code = (await admin.get("/pairing")).json()["code"]
            async with api_client(gw, None) as anonymous:
                await anonymous.post(
                    "/pairing/claim", json={"code": "WRONG-123", "account_id": "a"}
                )
                r = await anonymous.post("/pairing/claim", json={"code": code, "account_id": "a"})
            secrets["pairing code"] = code
            secrets["pairing code (typed)"] = code.replace("-", "")
            secrets["server token"] = r.json()["token"]
            r = await admin.post("/tokens", json={"name": "reader", "scope": "read"})
            secrets["read token"] = r.json()["token"]
            async with api_client(gw, secrets["read token"]) as reader:
                await reader.post("/devices", json={"id": "nope-1"})  # refused: 403
            async with api_client(gw, "pb_read_not-a-token") as wrong:
                await wrong.get("/devices")
            # a device: its token, a certificate and its key, a rotation, a revocation
            device_id = f"dev-{uuid.uuid4().hex[:8]}"
            created = (await admin.post("/devices", json={"id": device_id})).json()
            secrets["device token"] = created["token"]
            issued = (await admin.post(f"/devices/{device_id}/credentials", json={})).json()
            for i, line in enumerate(body_lines(issued["key_pem"])):
                secrets[f"certificate key line {i}"] = line
            dev = SimDevice(device_credentials(created), FAST)
            await dev.start()
            await dev.wait_online(10)
            await admin.post(f"/devices/{device_id}/rotate", json={})
            await eventually(lambda: dev.stats.credential_switches == 1, timeout=15)
            secrets["rotated token"] = dev.credentials.token
            await dev.stop()
            await admin.post(f"/devices/{device_id}/revoke")
            # provisioning by claim: the claim secret and the claimed token
            await admin.post("/provisioning/window", json={"duration_s": 30})
            creds = await claim_credentials(admin)
            secrets["claim secret"] = creds.password
            async with FactoryDevice(FactoryIdentity(creds, "SN-LOGS-1"), FAST) as factory:
                claimed = await factory.wait_claimed(20)
                assert factory.device is not None
                await factory.device.wait_online(10)
            secrets["claimed token"] = claimed.token
            await admin.delete("/provisioning/window")
        mosquitto_log = gw.supervisor.layout.log_path
    logged = captured.getvalue()
    assert "pairing claim refused" in logged and "revoked" in logged  # the capture works
    texts = {"gateway log": logged, "mosquitto log": mosquitto_log.read_text()}
    stderr = mosquitto_log.with_name("mosquitto.stderr.log")
    if stderr.exists():
        texts["mosquitto stderr"] = stderr.read_text()
    leaks = [
        f"{what} in the {where}"
        for what, secret in secrets.items()
        for where, text in texts.items()
        if secret and secret in text
    ]
    assert leaks == []
    assert len(secrets) >= 10
