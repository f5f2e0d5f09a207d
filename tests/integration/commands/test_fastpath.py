"""The command endpoint's fast path answers as the FastAPI route does (issue 17).

The same request is sent twice: as is (the fast path takes the plain case) and with a query
string (which the fast path always hands to the route). Statuses and bodies must match."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from planty_broker.app import Gateway
from planty_broker.northbound.api.fastpath import CommandFastPath
from tests.integration.commands.conftest import register, sim_device

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

VOLATILE = {"id", "created_at", "expires_at", "updated_at", "sent_at", "last_sent_at", "final_at"}


def stable(body: Any) -> Any:
    """A command body without its id and times (they differ between two commands)."""
    if isinstance(body, dict) and "action" in body:
        return {k: v for k, v in body.items() if k not in VOLATILE}
    return body


async def both(
    api: httpx.AsyncClient, device_id: str, **kw: Any
) -> tuple[httpx.Response, httpx.Response]:
    url = f"/api/v1/devices/{device_id}/commands"
    fast = await api.post(url, **kw)
    route = await api.post(url, params={"via": "route"}, **kw)
    return fast, route


async def test_fast_and_ordinary_paths_answer_alike(qapi: httpx.AsyncClient, qgw: Gateway) -> None:
    offline = await register(qapi, "fast")
    reader = (await qapi.post("/api/v1/tokens", json={"name": "r", "scope": "read"})).json()
    server = (await qapi.post("/api/v1/tokens", json={"name": "s", "scope": "server"})).json()
    before = CommandFastPath.served_total
    cases: list[tuple[str, dict[str, Any]]] = [
        (offline.device_id, {"json": {"action": "read"}}),
        (offline.device_id, {"json": {"action": "pump.on", "args": {"seconds": 3}, "ttl_s": 60}}),
        (
            offline.device_id,
            {
                "json": {"action": "read"},
                "headers": {"Authorization": f"Bearer {server['token']}"},
            },
        ),
        (offline.device_id, {"json": {"action": "read", "wait_s": 0.2}}),  # 202 after wait
        ("no-such-device", {"json": {"action": "read"}}),  # 404
        (offline.device_id, {"json": {"action": "fly"}}),  # 422 with the valid actions
        (offline.device_id, {"json": {"action": "pump.on", "args": {"seconds": -1}}}),  # 422
        (offline.device_id, {"json": {"action": "read", "colour": "red"}}),  # extra field
        (offline.device_id, {"json": {"action": "read", "wait_s": 301}}),  # over the limit
        (offline.device_id, {"json": {"action": ""}}),
        (offline.device_id, {"json": {"action": "read", "ttl_s": "5"}}),  # pydantic's lax mode
        (
            offline.device_id,
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
        ),
        (offline.device_id, {"content": b"action=read", "headers": {"content-type": "text/plain"}}),
        (
            offline.device_id,
            {"json": {"action": "read"}, "headers": {"Authorization": "Bearer nope"}},
        ),
        (
            offline.device_id,
            {"json": {"action": "read"}, "headers": {"Authorization": f"Bearer {reader['token']}"}},
        ),
        (offline.device_id, {"json": {"action": "read", "id": "my-own-id-1"}}),  # idempotent
        (offline.device_id, {"json": {"action": "pump.on", "id": "my-own-id-1"}}),  # 409
    ]
    for given, kw in cases:
        device_id = given
        if given == offline.device_id and "id" not in kw.get("json", {}):
            device_id = (await register(qapi, "fast")).device_id  # a fresh queue for each case
        fast, route = await both(qapi, device_id, **kw)
        assert fast.status_code == route.status_code, (kw, fast.text, route.text)
        assert stable(fast.json()) == stable(route.json()), (kw, fast.text, route.text)
        assert fast.headers["content-type"] == route.headers["content-type"]
    # the accepted reads (plain, server token, waited, own id) took the fast path
    assert CommandFastPath.served_total - before == 4
    no_token = httpx.AsyncClient(base_url=qgw.api_url, timeout=30)
    async with no_token:
        fast, route = await both(no_token, offline.device_id, json={"action": "read"})
    assert (
        (fast.status_code, fast.json()) == (route.status_code, route.json()) == (401, fast.json())
    )


async def test_commands_through_the_fast_path_all_arrive_in_order(qapi: httpx.AsyncClient) -> None:
    async with sim_device(qapi, "fastorder") as dev:
        url = f"/api/v1/devices/{dev.device_id}/commands"
        before = CommandFastPath.served_total
        answers = []
        for i in range(20):  # one after the other: the order is the submission order
            r = await qapi.post(url, json={"action": "pump.on", "args": {"seconds": i + 1}})
            assert r.status_code == 202, r.text
            answers.append(r.json()["id"])
        assert CommandFastPath.served_total - before == 20

        async def all_final() -> bool:
            states = [(await qapi.get(f"/api/v1/commands/{c}")).json()["state"] for c in answers]
            return all(s in ("acked", "superseded") for s in states)

        for _ in range(300):
            if await all_final():
                break
            await asyncio.sleep(0.1)
        assert await all_final()
        executed = [e.command_id for e in dev.executions(action="pump.on")]
        assert executed == [c for c in answers if c in executed]  # never out of order
        assert answers[-1] in executed  # the newest one always runs
        # nothing lost: every command is final, acked or superseded by a newer one
        waits = await asyncio.gather(
            *(
                qapi.post(url, json={"action": "read", "wait_s": 10}) for _ in range(4)
            )  # the queue holds 5 here
        )
        assert all(w.status_code == 200 and w.json()["state"] == "acked" for w in waits)
