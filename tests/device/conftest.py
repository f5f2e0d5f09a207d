"""Device tests: the MicroPython module under CPython with shims, a real Mosquitto, a cuttable link.

Swap point for the end-to-end tests: `device_endpoint` (what the device is provisioned
with) and `backend` (what sees its messages and sends commands). A gateway fixture that
returns the same two shapes runs every test here against the full gateway.
"""

from __future__ import annotations

import sys
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from tests.conftest import free_port
from tests.device import umqtt_source

HERE = Path(__file__).parent
DEVICE_DIR = HERE.parent.parent / "device"
SHIMS = HERE / "shims"

# MicroPython-only modules come from shims/, umqtt.simple is the real PyPI source.
for p in (str(SHIMS), str(umqtt_source.umqtt_path()), str(DEVICE_DIR)):
    if p not in sys.path:
        sys.path.insert(0, p)
import mpssl  # noqa: E402
import mptime  # noqa: E402

mptime.install()
import planty_device  # noqa: E402

# MicroPython 1.23+ has `ssl` (SSLContext and the old wrap_socket) and no `ussl`. CPython's
# own ssl is loaded already, so the device module gets the MicroPython-style one this way.
planty_device.ssl = mpssl

from tests.device.backend import MqttBackend  # noqa: E402
from tests.device.broker import DeviceEndpoint, Mosquitto  # noqa: E402
from tests.device.linkproxy import LinkProxy  # noqa: E402
from tests.device.pki import Pki, make_pki  # noqa: E402
from tests.integration.core.conftest import ADMIN, gateway_settings, running_gateway  # noqa: E402


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def device_id() -> str:
    return "plant-" + uuid.uuid4().hex[:8]


@pytest.fixture
def token() -> str:
    return uuid.uuid4().hex + uuid.uuid4().hex


@pytest.fixture
def mosquitto(tmp_path: Path, pki: Pki, device_id: str, token: str) -> Iterator[Mosquitto]:
    folder = tmp_path / "mosquitto"
    folder.mkdir()
    m = Mosquitto(folder, pki, free_port(), "planty-admin", "admin-" + uuid.uuid4().hex)
    m.users[device_id] = token
    m.start()
    yield m
    m.stop()


@pytest.fixture
def link(mosquitto: Mosquitto) -> Iterator[LinkProxy]:
    """The device's only way to the broker; `link.cut()` is a Wi-Fi drop."""
    with LinkProxy(mosquitto.port) as proxy:
        yield proxy


@pytest.fixture
def device_endpoint(link: LinkProxy, pki: Pki, device_id: str, token: str) -> DeviceEndpoint:
    return DeviceEndpoint("localhost", link.port, pki.ca_pem, device_id, token)


@pytest.fixture
async def backend(mosquitto: Mosquitto, pki: Pki) -> AsyncIterator[MqttBackend]:
    b = MqttBackend(
        "127.0.0.1", mosquitto.port, pki.ca_pem, mosquitto.admin_user, mosquitto.admin_password
    )
    await b.start()
    yield b
    await b.stop()


class DeviceThread:
    """Runs `device.run()` in a thread, as the board's main loop; re-raises what killed it."""

    def __init__(self, device: Any) -> None:
        self.device = device
        self.error: BaseException | None = None
        self._t = threading.Thread(target=self._main, daemon=True, name="device")

    def _main(self) -> None:
        try:
            self.device.run()
        except BaseException as exc:
            self.error = exc

    def __enter__(self) -> DeviceThread:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.device.running = False
        self._t.join(20)
        assert not self._t.is_alive(), "device loop did not stop"
        if self.error is not None:
            raise self.error


@pytest.fixture
def make_device(tmp_path: Path) -> Callable[..., Any]:
    """Build a Device from an endpoint's secrets.json with test-friendly timings."""

    def make(endpoint: DeviceEndpoint, **opts: Any) -> Any:
        logs: list[str] = opts.pop("logs", [])
        kw: dict[str, Any] = {
            "interval_s": 60,
            "keepalive": 30,
            "backoff_ms": (100, 800),
            "poll_ms": 10,
            "io_timeout_s": 5,
            "state_dir": str(tmp_path / "flash"),
            "log": logs.append,
        }
        kw.update(opts)
        Path(kw["state_dir"]).mkdir(exist_ok=True)
        dev = planty_device.Device.from_secrets(endpoint.secrets(), **kw)
        dev.logs = logs
        return dev

    return make


# ---------------------------------------------------------------- the full gateway (e2e)

# Short ack timeout so a lost ack is re-sent within a second; no pings in the device's way.
GATEWAY_COMMANDS: dict[str, Any] = {"ack_timeout_s": 1.0, "max_attempts": 6, "ping_interval_s": 0}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def planty_gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Any]:
    """The whole Planty Broker in-process (supervised Mosquitto over TLS, API, outbox)."""
    settings = gateway_settings(tmp_path_factory.mktemp("gw"), commands=GATEWAY_COMMANDS)
    async with running_gateway(settings) as gw:
        yield gw


@pytest_asyncio.fixture(loop_scope="session")
async def gateway_api(planty_gateway: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=planty_gateway.api_url + "/api/v1",
        timeout=30,
        headers={"Authorization": f"Bearer {ADMIN}"},
    ) as client:
        yield client


@pytest_asyncio.fixture(loop_scope="session")
async def gateway_device(gateway_api: httpx.AsyncClient, device_id: str) -> dict[str, Any]:
    """A device registered through the API: `{"id", "token", "mqtt": {...}}`."""
    r = await gateway_api.post("/devices", json={"id": device_id})
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


@pytest.fixture
def gateway_link(planty_gateway: Any) -> Iterator[LinkProxy]:
    """The device's cuttable way to the gateway's device listener."""
    with LinkProxy(planty_gateway.settings.mqtt.port) as proxy:
        yield proxy


@pytest.fixture
def gateway_endpoint(gateway_device: dict[str, Any], gateway_link: LinkProxy) -> DeviceEndpoint:
    """What `planty devices add` hands out, with the port pointing through `gateway_link`."""
    m = gateway_device["mqtt"]
    return DeviceEndpoint(
        m["host"], gateway_link.port, m["ca_pem"], gateway_device["id"], gateway_device["token"]
    )
