"""Provisioning through the gateway API, against an in-process fake (httpx.MockTransport).

The real end-to-end with the gateway lives with the gateway's tests.
"""

from __future__ import annotations

import json

import httpx
import pytest

from planty_broker.simulator.fleet import Fleet, FleetOfflineError, run_simulation
from planty_broker.simulator.profile import DeviceProfile
from planty_broker.simulator.provision import (
    ProvisioningError,
    SimulatorError,
    api_root,
    device_ids,
    provision_devices,
)
from tests.conftest import free_port

ADMIN = "admin-secret-token"


class FakeGateway:
    """Just enough of `/api/v1/devices` to provision against, recording every request."""

    def __init__(
        self, *, existing: set[str] | None = None, mqtt_port: int = 8883, tls: bool = True
    ) -> None:
        self.tls = tls
        self.devices: set[str] = set(existing or ())
        self.requests: list[tuple[str, str]] = []
        self.mqtt_port = mqtt_port

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((request.method, request.url.path))
        if request.headers.get("authorization") != f"Bearer {ADMIN}":
            return httpx.Response(
                401, json={"error": {"code": "unauthorized", "message": "bad token"}}
            )
        if request.method == "POST" and request.url.path == "/api/v1/devices":
            device_id = json.loads(request.content)["id"]
            if device_id in self.devices:
                return httpx.Response(
                    409, json={"error": {"code": "device_exists", "message": f"{device_id} exists"}}
                )
            self.devices.add(device_id)
            return httpx.Response(
                201,
                json={
                    "id": device_id,
                    "token": f"tok-{device_id}",
                    "mqtt": {
                        "host": "gw.example",
                        "port": self.mqtt_port,
                        "tls": self.tls,
                        "ca_pem": "PEM",
                    },
                },
            )
        if request.method == "DELETE" and request.url.path.startswith("/api/v1/devices/"):
            self.devices.discard(request.url.path.rsplit("/", 1)[1])
            return httpx.Response(204)
        return httpx.Response(404, json={"error": {"code": "not_found", "message": "no route"}})


def test_device_ids_are_numbered_and_validated() -> None:
    assert device_ids("sim", 3) == ["sim-0001", "sim-0002", "sim-0003"]
    assert device_ids("bench", 2, start=9999) == ["bench-09999", "bench-10000"]
    with pytest.raises(SimulatorError, match="prefix 'Sim_'"):
        device_ids("Sim_", 2)


def test_api_root_accepts_either_form() -> None:
    assert api_root("http://h:8080/") == "http://h:8080"
    assert api_root("http://h:8080/api/v1/") == "http://h:8080"


async def test_provisioning_returns_credentials_in_order() -> None:
    gw = FakeGateway()
    creds = await provision_devices(
        "http://gw:8080/api/v1", ADMIN, ["sim-0001", "sim-0002"], transport=httpx.MockTransport(gw)
    )
    assert [c.device_id for c in creds] == ["sim-0001", "sim-0002"]
    assert creds[0].token == "tok-sim-0001"
    assert (creds[0].host, creds[0].port, creds[0].tls, creds[0].ca_pem) == (
        "gw.example",
        8883,
        True,
        "PEM",
    )
    assert "tok-" not in repr(creds[0])  # the token never reaches a log line


async def test_existing_device_is_deleted_and_added_again() -> None:
    gw = FakeGateway(existing={"sim-0001"})
    replaced: list[str] = []
    creds = await provision_devices(
        "http://gw:8080",
        ADMIN,
        ["sim-0001"],
        transport=httpx.MockTransport(gw),
        mqtt_host="127.0.0.1",
        replaced=replaced,
    )
    assert replaced == ["sim-0001"]
    assert gw.requests == [
        ("POST", "/api/v1/devices"),
        ("DELETE", "/api/v1/devices/sim-0001"),
        ("POST", "/api/v1/devices"),
    ]
    assert creds[0].host == "127.0.0.1"  # the override wins over what the API said


async def test_existing_device_with_fail_policy_says_what_to_do() -> None:
    gw = FakeGateway(existing={"sim-0002"})
    with pytest.raises(ProvisioningError, match="sim-0002 already exists: remove it"):
        await provision_devices(
            "http://gw:8080",
            ADMIN,
            ["sim-0001", "sim-0002"],
            on_conflict="fail",
            transport=httpx.MockTransport(gw),
        )


async def test_wrong_admin_token_is_one_clear_error() -> None:
    with pytest.raises(ProvisioningError, match="refused the admin token") as info:
        await provision_devices(
            "http://gw:8080",
            "wrong",
            ["sim-0001", "sim-0002"],
            transport=httpx.MockTransport(FakeGateway()),
        )
    assert "wrong" not in str(info.value)


async def test_unreachable_gateway_is_one_clear_error() -> None:
    port = free_port()
    with pytest.raises(
        ProvisioningError, match=r"cannot reach the gateway API .* is `planty run` running"
    ):
        await provision_devices(f"http://127.0.0.1:{port}", ADMIN, ["sim-0001"])


async def test_fleet_provision_builds_devices_from_the_answers() -> None:
    gw = FakeGateway()
    fleet = await Fleet.provision(
        "http://gw:8080", ADMIN, 3, prefix="green", transport=httpx.MockTransport(gw)
    )
    assert [d.device_id for d in fleet.devices] == ["green-0001", "green-0002", "green-0003"]
    assert fleet["green-0002"].credentials.token == "tok-green-0002"
    assert fleet.stats().devices == 3
    assert fleet.stats().online == 0


async def test_run_simulation_fails_in_one_line_when_no_device_can_connect() -> None:
    gw = FakeGateway(mqtt_port=free_port(), tls=False)  # nothing listens there
    with pytest.raises(
        FleetOfflineError,
        match=r"no simulated device came online .* refused the connection: nothing listens there",
    ):
        await run_simulation(
            "http://gw:8080",
            ADMIN,
            2,
            1.0,
            "sim",
            mqtt_host="127.0.0.1",
            wait_online_s=0.5,
            progress=False,
            transport=httpx.MockTransport(gw),
            profile=DeviceProfile(reconnect_min_s=0.05, reconnect_max_s=0.1),
        )
    assert gw.devices == {"sim-0001", "sim-0002"}


async def test_a_bad_ca_from_the_gateway_is_reported_not_retried() -> None:
    gw = FakeGateway()  # hands out "PEM" as the CA certificate
    with pytest.raises(FleetOfflineError, match="CA certificate is not usable PEM"):
        await run_simulation(
            "http://gw:8080",
            ADMIN,
            1,
            1.0,
            "sim",
            wait_online_s=0.3,
            progress=False,
            transport=httpx.MockTransport(gw),
        )
