"""The event log end to end: cursor reads, named consumers, SSE with Last-Event-ID resume."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.integration.commands.conftest import sim_device
from tests.integration.core.conftest import eventually

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


async def blocks(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """SSE blocks as dicts: id, event, data (parsed JSON), comments."""
    block: dict[str, Any] = {"comments": []}
    async for line in response.aiter_lines():
        if line == "":
            if len(block) > 1 or block["comments"]:
                yield block
            block = {"comments": []}
        elif line.startswith(":"):
            block["comments"].append(line[1:].strip())
        else:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            block[field] = json.loads(value) if field == "data" else value


async def last_id(api: httpx.AsyncClient) -> int:
    body = (await api.get("/api/v1/events", params={"limit": 1})).json()
    return int(body["log"]["last_id"])


async def test_sse_consumer_that_disconnects_mid_stream_resumes_without_gap_or_duplicate(
    qapi: httpx.AsyncClient,
) -> None:
    async with sim_device(qapi, prefix="sse", interval_s=0.05) as dev:  # 20 readings a second
        start = await last_id(qapi)
        first: list[int] = []
        async with qapi.stream(
            "GET", "/api/v1/events/stream", params={"after": start}, timeout=30
        ) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            async for b in blocks(r):
                if "id" in b:
                    assert b["event"] == b["data"]["type"] and int(b["id"]) == b["data"]["id"]
                    first.append(int(b["id"]))
                if len(first) >= 40:
                    break  # hang up in the middle of the stream
        await asyncio.sleep(0.5)  # events keep coming while it is away
        second: list[int] = []
        async with qapi.stream(
            "GET",
            "/api/v1/events/stream",
            headers={"Last-Event-ID": str(first[-1])},
            timeout=30,
        ) as r:
            target: int | None = None
            async for b in blocks(r):
                if "id" in b:
                    second.append(int(b["id"]))
                if target is None and len(second) >= 20:
                    await dev.stop()  # no more readings; wait for the log to settle
                    await asyncio.sleep(1.0)
                    target = await last_id(qapi)
                if target is not None and second and second[-1] >= target:
                    break
        got = first + second
        assert len(got) == len(set(got)), "duplicates"
        assert got == list(range(start + 1, got[-1] + 1)), "gap"
        assert got[-1] >= target  # type: ignore[operator]


async def test_idle_stream_sends_keep_alive_comments(qapi: httpx.AsyncClient) -> None:
    async with qapi.stream(
        "GET", "/api/v1/events/stream", params={"types": "command"}, timeout=30
    ) as r:
        comments: list[str] = []
        async with asyncio.timeout(10):
            async for b in blocks(r):
                comments += b["comments"]
                if "keep-alive" in comments:
                    break
        assert comments[0].startswith("connected")


async def test_reading_by_cursor_and_confirming_as_a_named_consumer(
    qapi: httpx.AsyncClient,
) -> None:
    async with sim_device(qapi, prefix="ev", interval_s=0.1) as dev:
        start = await last_id(qapi)
        await eventually(lambda: _has_readings(qapi, start, dev.device_id, 5))
        body = (
            await qapi.get("/api/v1/events", params={"after": start, "types": "reading"})
        ).json()
        mine = [e for e in body["events"] if e["device_id"] == dev.device_id]
        assert all(e["type"] == "reading" and "readings" in e["data"] for e in mine)
        assert body["missed"] is None and body["next_after"] == body["events"][-1]["id"]
        name = f"server-{dev.device_id}"
        r = await qapi.put(f"/api/v1/consumers/{name}/cursor", json={"acked": start + 2})
        assert r.status_code == 200, r.text
        c = r.json()
        assert c["acked"] == start + 2 and c["dropped"] == 0 and c["lag"] >= 3
        r = await qapi.put(f"/api/v1/consumers/{name}/cursor", json={"acked": start + 1})
        assert r.status_code == 409 and "only moves forward" in r.json()["error"]["message"]
        r = await qapi.put(f"/api/v1/consumers/{name}/cursor", json={"acked": 10**12})
        assert r.status_code == 422
        r = await qapi.put("/api/v1/consumers/bad name/cursor", json={"acked": 1})
        assert r.status_code == 422
        listed = (await qapi.get("/api/v1/consumers")).json()
        assert name in [x["name"] for x in listed["consumers"]]
        assert listed["log"]["last_id"] >= start + 5
        # the stream can start from a consumer's cursor
        async with qapi.stream(
            "GET", "/api/v1/events/stream", params={"consumer": name}, timeout=30
        ) as r:
            async for b in blocks(r):
                if "id" in b:
                    assert int(b["id"]) == start + 3
                    break
        assert (await qapi.delete(f"/api/v1/consumers/{name}")).status_code == 204
        r = await qapi.get("/api/v1/events/stream", params={"consumer": name})
        assert r.status_code == 404


async def _has_readings(api: httpx.AsyncClient, after: int, device_id: str, n: int) -> bool:
    body = (await api.get("/api/v1/events", params={"after": after, "types": "reading"})).json()
    return sum(1 for e in body["events"] if e["device_id"] == device_id) >= n
