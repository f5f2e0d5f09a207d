"""Provision simulated devices through the gateway's HTTP API, like an operator would.

`POST /api/v1/devices {"id"}` with the admin bearer token returns the device's
credentials once. When the id already exists (409), the default policy
`replace` deletes it (`DELETE /api/v1/devices/{id}`) and adds it again: the old
token was shown only once and cannot be read back, and stable ids (`sim-0001`
...) keep a re-run of `planty simulate` from growing the registry forever. The
price: whatever the gateway keeps for the old device goes with it. `fail`
stops with a clear error instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Literal

import httpx
import msgspec

from planty_broker.errors import PlantyError
from planty_broker.protocol import valid_device_id
from planty_broker.simulator.profile import DeviceCredentials

OnConflict = Literal["replace", "fail"]


class SimulatorError(PlantyError):
    """A problem a user of `planty simulate` can fix; the message is one line saying how."""


class ProvisioningError(SimulatorError):
    """The gateway API did not hand out credentials."""


class _Mqtt(msgspec.Struct, frozen=True):
    host: str
    port: int
    tls: bool
    ca_pem: str | None = None


class _Issued(msgspec.Struct, frozen=True):
    id: str
    token: str
    mqtt: _Mqtt


_issued = msgspec.json.Decoder(_Issued)


def device_ids(prefix: str, count: int, start: int = 1) -> list[str]:
    """`sim-0001`, `sim-0002`, ...; raises `SimulatorError` if the prefix makes bad ids."""
    width = max(4, len(str(start + count - 1)))
    ids = [f"{prefix}-{n:0{width}d}" for n in range(start, start + count)]
    if ids and not (valid_device_id(ids[0]) and valid_device_id(ids[-1])):
        raise SimulatorError(
            f"device id prefix {prefix!r} gives invalid ids like {ids[0]!r}: "
            "use lower-case a-z, 0-9 and '-', starting with a letter or digit"
        )
    return ids


def api_root(api_url: str) -> str:
    """The gateway's base URL, accepting it with or without the `/api/v1` suffix."""
    url = api_url.rstrip("/")
    return url.removesuffix("/api/v1")


def _error_text(response: httpx.Response) -> str:
    try:
        err = response.json()["error"]
        return f"{err['message']} ({response.status_code} {err['code']})"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}: {response.text[:200]}"


class Provisioner:
    """Adds devices through one HTTP client; use as `async with Provisioner(url, token) as p:`."""

    def __init__(
        self,
        api_url: str,
        admin_token: str,
        *,
        on_conflict: OnConflict = "replace",
        mqtt_host: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        self.url = api_root(api_url)
        self.replaced: list[str] = []  # ids that existed and were deleted and added again
        self._on_conflict = on_conflict
        self._mqtt_host = mqtt_host
        self._http = httpx.AsyncClient(
            base_url=self.url,
            headers={"Authorization": f"Bearer {admin_token}"},
            timeout=timeout_s,
            transport=transport,
        )

    async def __aenter__(self) -> Provisioner:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()

    async def add(self, device_id: str) -> DeviceCredentials:
        """Register one device and return its credentials (replacing it on 409 if so configured)."""
        response = await self._request("POST", "/api/v1/devices", json={"id": device_id})
        if response.status_code == 409 and self._on_conflict == "replace":
            removed = await self._request("DELETE", f"/api/v1/devices/{device_id}")
            if removed.status_code not in (200, 204, 404):
                raise ProvisioningError(
                    f"cannot replace device {device_id}: {_error_text(removed)}"
                )
            self.replaced.append(device_id)
            response = await self._request("POST", "/api/v1/devices", json={"id": device_id})
        if response.status_code == 409:
            raise ProvisioningError(
                f"device {device_id} already exists: remove it (`planty devices remove "
                f"{device_id}`), pick another --prefix, or let the simulator replace it"
            )
        if response.status_code in (401, 403):
            raise ProvisioningError(
                f"the gateway at {self.url} refused the admin token ({_error_text(response)}): "
                "check PLANTY_ADMIN_TOKEN or the data folder's admin-token file"
            )
        if response.status_code != 201:
            raise ProvisioningError(f"adding device {device_id} failed: {_error_text(response)}")
        try:
            issued = _issued.decode(response.content)
        except msgspec.MsgspecError as exc:
            raise ProvisioningError(f"unexpected answer to POST /api/v1/devices: {exc}") from None
        mqtt = issued.mqtt
        return DeviceCredentials(
            device_id=issued.id,
            token=issued.token,
            host=self._mqtt_host or mqtt.host,
            port=mqtt.port,
            tls=mqtt.tls,
            ca_pem=mqtt.ca_pem,
        )

    async def _request(
        self, method: str, path: str, json: dict[str, str] | None = None
    ) -> httpx.Response:
        try:
            return await self._http.request(method, path, json=json)
        except httpx.ConnectError:
            raise ProvisioningError(
                f"cannot reach the gateway API at {self.url}: "
                "is `planty run` running? (or pass --url)"
            ) from None
        except httpx.HTTPError as exc:
            raise ProvisioningError(f"{method} {self.url}{path} failed: {exc!r}") from None


async def provision_devices(
    api_url: str,
    admin_token: str,
    ids: Sequence[str],
    *,
    on_conflict: OnConflict = "replace",
    concurrency: int = 8,
    mqtt_host: str | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    on_progress: Callable[[str], None] | None = None,
    replaced: list[str] | None = None,
) -> list[DeviceCredentials]:
    """Provision every id (at most `concurrency` requests at once), in the order given.

    Ids that already existed and were replaced are appended to `replaced` if given.
    """
    gate = asyncio.Semaphore(concurrency)

    async with Provisioner(
        api_url, admin_token, on_conflict=on_conflict, mqtt_host=mqtt_host, transport=transport
    ) as prov:

        async def one(device_id: str) -> DeviceCredentials:
            async with gate:
                creds = await prov.add(device_id)
            if on_progress is not None:
                on_progress(device_id)
            return creds

        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(one(i)) for i in ids]
        except ExceptionGroup as group:  # one clear line, not a group of 50 identical errors
            first = group.exceptions[0]
            if isinstance(first, SimulatorError):
                raise first from None
            raise
        if replaced is not None:
            replaced.extend(sorted(prov.replaced))
    return [t.result() for t in tasks]
