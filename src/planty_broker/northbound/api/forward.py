"""Scale-out: a worker instance hands what only the lease holder serves to the lease holder.

In a deployment of several instances (docs/scale-out.md) the command outbox, the rules
and updates run on the instance holding the PostgreSQL lease.
Any instance's API takes those requests all the same: a worker forwards them over HTTP
to the lease holder's API (its address is in the store, `cluster.leader_api`, written
when it took the lease) and returns the answer as it came, status and body. The device
list, a device and the statistics are read from the lease holder as well: it alone sees
every message (statuses, wills, a copy of every reading), so presence and the counts are
its. Everything else (registration, readings, events, and pairing and the claim window,
whose state is shared in the store) a worker answers itself from the store.

The worker names the caller's address in `x-planty-client` (any such header from the
caller is dropped). The lease holder keys its per-address limits and the audit's
`client` by "<worker>><caller>" (`deps.client_address`): so callers behind one worker
are told apart, and a caller that sends the header itself only names keys under its
own address, never anybody else's.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

import httpx
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from planty_broker.northbound.api.errors import error_body
from planty_broker.services.context import Services

LEADER_API_KEY = "cluster.leader_api"
CLIENT_HEADER = "x-planty-client"  # the caller's address, as the forwarding worker saw it
FORWARD_TIMEOUT_S = 330.0  # longer than any `wait_s` a command request may ask for
_HEADERS = ("authorization", "content-type", "accept", "x-request-id")
LEADER_ONLY = re.compile(
    r"^/api/v1/(?:"
    r"(?:commands|rules|firmware|rollouts)(?:/.*)?"
    r"|devices/[^/]+/(?:commands|read|latency|thresholds|firmware|rotate|credentials|revoke)"
    r"(?:/.*)?"
    r")$"
)
# Read from the lease holder too: it alone sees every message (statistics, presence from
# statuses and wills); a worker sees only the readings it happened to consume.
LEADER_READS = re.compile(r"^/api/v1/(?:stats|devices|devices/[^/]+|devices/[^/]+/stats)$")


def install_forwarding(app: FastAPI, svc: Services) -> None:
    """On a worker (`svc.role == "worker"`), forward the lease holder's routes to it."""
    client: list[httpx.AsyncClient] = []

    @app.middleware("http")
    async def forward(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        path = request.url.path
        to_leader = LEADER_ONLY.match(path) or (
            request.method == "GET" and LEADER_READS.match(path)
        )
        if svc.role != "worker" or not to_leader:
            return await call_next(request)
        leader = await svc.store.get_meta(LEADER_API_KEY)
        if not isinstance(leader, str) or not leader:
            return _unavailable("no instance holds the lease yet; retry in a moment")
        if not client:
            client.append(httpx.AsyncClient(timeout=FORWARD_TIMEOUT_S))
        headers = {k: v for k, v in request.headers.items() if k.lower() in _HEADERS}
        headers[CLIENT_HEADER] = request.client.host if request.client else "?"
        try:
            r = await client[0].request(
                request.method,
                leader.rstrip("/") + request.url.path,
                params=request.url.query,
                content=await request.body(),
                headers=headers,
            )
        except httpx.HTTPError as exc:
            return _unavailable(f"the lease holder at {leader} did not answer ({exc!r})")
        out = Response(r.content, r.status_code, media_type=r.headers.get("content-type"))
        out.headers["x-planty-served-by"] = leader
        return out


def _unavailable(message: str) -> Response:
    return JSONResponse(error_body("unavailable", message), 503, headers={"retry-after": "1"})
