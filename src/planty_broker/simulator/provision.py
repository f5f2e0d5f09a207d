"""Provision simulated devices through the gateway's HTTP API, like an operator would.

`POST /api/v1/devices {"id"}` with the admin bearer token returns the device's
credentials once. `planty simulate` keeps the tokens it was given in a file of
the data folder (`simulator-tokens.json`, mode 0600) and, on a re-run, reuses the
devices it finds there: same ids, same tokens, their history kept. A device that
exists without a kept token (409) is, by the default policy `replace`, deleted
(`DELETE /api/v1/devices/{id}`) and added again: its old token was shown only once
and cannot be read back. `fail` stops with a clear error instead. `--fresh`
replaces every device.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

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
    endpoints: list[tuple[str, int]] | None = None  # a cluster's nodes, host:port first


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


LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def device_host(api_url: str, advertised: str, ca_pem: str | None) -> str:
    """Where a local tool reaches the gateway's MQTT server: on loopback when the API was
    reached on loopback and the gateway runs its own MQTT server (our CA: its certificate
    covers localhost, 127.0.0.1 and ::1), not on the advertised host name, which may not
    resolve here. Otherwise the advertised host (pass --mqtt-host to choose)."""
    host = urlsplit(api_url).hostname or ""
    if ca_pem and host in LOOPBACK:
        return host
    return advertised


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
        self.reused: list[str] = []  # ids that existed and whose kept token was used again
        self._kept: Mapping[str, str] = {}
        self._endpoint: _Mqtt | None = None
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

    def keep(self, tokens: Mapping[str, str]) -> None:
        """Tokens kept from an earlier run (device id -> token): those devices are reused."""
        self._kept = tokens

    async def add(self, device_id: str) -> DeviceCredentials:
        """Register one device and return its credentials: reused when its token was kept and
        it still exists, else added (replacing it on 409 if so configured)."""
        token = self._kept.get(device_id)
        if token is not None:
            found = await self._request("GET", f"/api/v1/devices/{device_id}")
            if found.status_code == 200:
                self.reused.append(device_id)
                return self._credentials(device_id, token, await self._mqtt())
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
        return self._credentials(issued.id, issued.token, issued.mqtt)

    def _credentials(self, device_id: str, token: str, mqtt: _Mqtt) -> DeviceCredentials:
        return DeviceCredentials(
            device_id=device_id,
            token=token,
            host=self._mqtt_host or device_host(self.url, mqtt.host, mqtt.ca_pem),
            port=mqtt.port,
            tls=mqtt.tls,
            ca_pem=mqtt.ca_pem,
            alternates=tuple(e for e in mqtt.endpoints or () if e != (mqtt.host, mqtt.port)),
        )

    async def _mqtt(self) -> _Mqtt:
        """Where devices connect (GET /api/v1/mqtt), asked once."""
        if self._endpoint is None:
            r = await self._request("GET", "/api/v1/mqtt")
            if r.status_code != 200:
                raise ProvisioningError(f"GET /api/v1/mqtt failed: {_error_text(r)}")
            self._endpoint = msgspec.json.decode(r.content, type=_Mqtt)
        return self._endpoint

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
    kept: Mapping[str, str] | None = None,
    reused: list[str] | None = None,
) -> list[DeviceCredentials]:
    """Provision every id (at most `concurrency` requests at once), in the order given.

    Ids that already existed and were replaced are appended to `replaced` if given;
    `kept` tokens (device id -> token) are reused for devices that still exist, and
    those ids are appended to `reused`.
    """
    gate = asyncio.Semaphore(concurrency)

    async with Provisioner(
        api_url, admin_token, on_conflict=on_conflict, mqtt_host=mqtt_host, transport=transport
    ) as prov:
        prov.keep(kept or {})

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
        if reused is not None:
            reused.extend(sorted(prov.reused))
    return [t.result() for t in tasks]


TOKENS_FILE = "simulator-tokens.json"


def load_tokens(path: Path) -> dict[str, str]:
    """Device tokens kept by an earlier `planty simulate` (empty when none or unreadable)."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(raw, dict):
        return {}
    return {k: v for k, v in raw.items() if isinstance(k, str) and isinstance(v, str)}


def save_tokens(path: Path, creds: Sequence[DeviceCredentials]) -> None:
    """Keep the simulated devices' tokens (mode 0600) for the next run, beside older ones."""
    tokens = load_tokens(path)
    tokens.update({c.device_id: c.token for c in creds if c.token})
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(tokens, f, indent=1, sort_keys=True)
    tmp.replace(path)
