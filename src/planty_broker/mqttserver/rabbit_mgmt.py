"""A small client of RabbitMQ's management HTTP API, over any node of the cluster.

Every node serves the whole cluster's API, so a call goes to the first node that answers
and moves to the next when one is gone (connection refused, timeout, 5xx).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import httpx

from planty_broker.errors import MqttServerError

log = logging.getLogger("planty_broker.mqttserver")


class RabbitApiError(MqttServerError):
    """No node's management API could do the call; the message says what failed."""


def q(part: str) -> str:
    return quote(part, safe="")


class RabbitApi:
    """`await api.call("PUT", "/api/users/x", {...})` against the first node that answers."""

    def __init__(
        self, urls: Sequence[str], username: str, password: str, timeout_s: float = 10.0
    ) -> None:
        if not urls:
            raise ValueError("RabbitApi needs at least one management URL")
        self._urls = [u.rstrip("/") for u in urls]
        self._auth = (username, password)
        self._timeout = timeout_s
        self._client: httpx.AsyncClient | None = None
        self._first = 0  # the node that answered last: tried first next time

    async def __aenter__(self) -> RabbitApi:
        self._client = httpx.AsyncClient(auth=self._auth, timeout=self._timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        ok: tuple[int, ...] = (),
        headers: dict[str, str] | None = None,
    ) -> Any:
        """The decoded JSON answer (None when empty). Statuses in `ok` count as success.
        `headers`: extra request headers (`X-Reason` of a closed connection)."""
        client = self._client
        if client is None:
            raise RabbitApiError("RabbitApi is not open")
        errors: list[str] = []
        n = len(self._urls)
        for k in range(n):
            i = (self._first + k) % n
            url = self._urls[i] + path
            try:
                resp = await client.request(method, url, json=body, headers=headers)
            except httpx.HTTPError as exc:
                errors.append(f"{self._urls[i]}: {exc.__class__.__name__} {exc}")
                continue
            if resp.status_code >= 500 or resp.status_code == 503:
                errors.append(f"{self._urls[i]}: HTTP {resp.status_code}")
                continue
            self._first = i
            if resp.status_code >= 400 and resp.status_code not in ok:
                raise RabbitApiError(
                    f"RabbitMQ management {method} {path}: "
                    f"HTTP {resp.status_code} {resp.text[:200]}"
                )
            if not resp.content:
                return None
            try:
                return resp.json()
            except ValueError:
                return None
        raise RabbitApiError(f"no RabbitMQ node answered {method} {path}: {'; '.join(errors)}")
