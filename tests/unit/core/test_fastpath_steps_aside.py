"""The command fast path steps aside where this instance does not run the command service
(a scale-out worker forwards commands to the lease holder): the request, body intact, goes
to the ordinary app. (The fast path's answers are compared with the route's against a real
gateway in tests/integration/commands/test_fastpath.py.)"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from planty_broker.northbound.api.auth import Authenticator
from planty_broker.northbound.api.fastpath import CommandFastPath
from planty_broker.services.commands.service import CommandService

BODY = b'{"action": "read"}'


def _scope() -> dict[str, Any]:
    return {
        "type": "http",
        "method": "POST",
        "path": "/api/v1/devices/d1/commands",
        "query_string": b"",
        "headers": [
            (b"authorization", b"Bearer admin-token"),
            (b"content-type", b"application/json"),
        ],
    }


def _run(svc: Any) -> list[bytes]:
    seen: list[bytes] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.append((await receive())["body"])

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(_message: Any) -> None:
        raise AssertionError("the fast path answered")

    fast = CommandFastPath(inner, svc, Authenticator("admin-token"))
    asyncio.run(fast(_scope(), receive, send))
    return seen


def test_a_worker_hands_commands_to_the_ordinary_app() -> None:
    service = CommandService.__new__(CommandService)  # the role alone decides here
    assert _run(SimpleNamespace(role="worker", commands=service)) == [BODY]


def test_without_the_command_service_the_ordinary_app_answers() -> None:
    assert _run(SimpleNamespace(role="single", commands=None)) == [BODY]
