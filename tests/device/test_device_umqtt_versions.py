"""Every umqtt.simple interface docs/firmware.md lists, on each MicroPython TLS module layout.

MicroPython 1.22 has `ussl` and `ssl`; 1.23 and newer have only `ssl` (SSLContext). umqtt.simple
1.3.x does `import ussl`, which crashed the device on 1.23+ (issue 18): the device now lends
it one. And whatever fails at connect is one log line and a retry, never an exception.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable, Iterator
from typing import Any

import mpssl
import planty_device
import pytest

from tests.device import umqtt_source
from tests.device.backend import MqttBackend
from tests.device.broker import DeviceEndpoint
from tests.device.conftest import DeviceThread

pytestmark = pytest.mark.integration


def _umqtt(interface: str) -> types.ModuleType:
    mod = types.ModuleType("umqtt_simple_" + interface.replace(".", "_"))
    exec(
        compile(umqtt_source.source(interface), f"umqtt/simple.py ({interface})", "exec"),
        mod.__dict__,
    )
    return mod


@pytest.fixture
def no_ussl() -> Iterator[None]:
    """MicroPython 1.23+: no `ussl` anywhere (and none left over from an earlier test)."""
    sys.modules.pop("ussl", None)
    yield
    sys.modules.pop("ussl", None)


def _use(monkeypatch: pytest.MonkeyPatch, interface: str) -> None:
    mod = _umqtt(interface)
    monkeypatch.setattr(planty_device, "MQTTClient", mod.MQTTClient)
    monkeypatch.setattr(planty_device, "MQTTException", mod.MQTTException)


@pytest.mark.parametrize(
    ("interface", "micropython"),
    [("1.3.4", "1.22"), ("1.3.4", "1.23+"), ("1.4", "1.23+"), ("1.5", "1.23+")],
)
async def test_each_umqtt_interface_connects_over_tls_and_takes_commands(
    interface: str,
    micropython: str,
    no_ussl: None,
    monkeypatch: pytest.MonkeyPatch,
    make_device: Callable[..., Any],
    device_endpoint: DeviceEndpoint,
    backend: MqttBackend,
) -> None:
    _use(monkeypatch, interface)
    if micropython == "1.22":
        monkeypatch.setitem(sys.modules, "ussl", mpssl)  # 1.22 still had it
    dev = make_device(device_endpoint)
    did = device_endpoint.device_id
    with DeviceThread(dev):
        await backend.wait_for(lambda: backend.of(did, "status"), what="status")
        ack = await backend.command(did, "ping")
    assert ack == {"id": ack["id"], "ok": True}
    assert any(line.startswith("planty: online as " + did) for line in dev.logs)
    lent = sys.modules.get("ussl")
    if interface == "1.3.4" and micropython == "1.23+":
        assert lent is planty_device._Ussl  # lent by the device, since there was none
    elif micropython == "1.22":
        assert lent is mpssl  # the firmware's own was used, not replaced


async def test_any_error_at_connect_is_one_line_and_a_retry(
    no_ussl: None,
    monkeypatch: pytest.MonkeyPatch,
    make_device: Callable[..., Any],
    device_endpoint: DeviceEndpoint,
    backend: MqttBackend,
) -> None:
    """A firmware without ssl, then a library that raises ImportError: logged, retried, online."""
    dev = make_device(device_endpoint)
    monkeypatch.setattr(planty_device, "ssl", None)
    assert dev.connect() is False
    line = dev.logs[-1]
    assert "connect to " in line and "ImportError" in line and "no ssl module" in line
    real = planty_device.MQTTClient

    class Broken(real):  # type: ignore[misc, valid-type]
        def connect(self, *args: Any, **kwargs: Any) -> Any:
            raise ImportError("no module named 'ussl'")

    monkeypatch.setattr(planty_device, "ssl", mpssl)
    monkeypatch.setattr(planty_device, "MQTTClient", Broken)
    did = device_endpoint.device_id
    with DeviceThread(dev):
        await backend.wait_for(
            lambda: sum("no module named 'ussl'" in x for x in dev.logs) >= 2, what="two retries"
        )
        assert not backend.of(did, "status")
        monkeypatch.setattr(planty_device, "MQTTClient", real)  # "fixed": the next retry works
        await backend.wait_for(lambda: backend.of(did, "status"), what="status after the fix")
    assert any(x.startswith("planty: retry in ") for x in dev.logs)
