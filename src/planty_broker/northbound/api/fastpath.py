"""The command endpoint's fast path (issue 17): `POST /api/v1/devices/{id}/commands` served
by a plain ASGI layer in front of the FastAPI app (what uvicorn runs, app.py), without
FastAPI's per-request work, routing, dependency resolution and pydantic validation, which
cost more CPU than the command itself.

Only the plain successful case is taken here: a JSON body that msgspec decodes into the
same fields with the same limits as the route's `NewCommand`, an admin or server token, no
query string. Everything else (a missing or refused token, a body msgspec refuses, another
content type) is handed, body replayed, to the FastAPI route, which answers exactly as
before; so are errors' shapes: the command service's own refusals (unknown device, queue
full, ...) are answered here with the body the route's error handler writes. The fast path
steps aside on an instance that does not run the command service itself (a scale-out
worker, `svc.role == "worker"`: its requests are forwarded to the lease holder).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Annotated, Any

import msgspec
from starlette.responses import JSONResponse

from planty_broker.domain.commands import CommandError
from planty_broker.northbound.api.auth import Authenticator, Scope
from planty_broker.northbound.api.commands import MAX_WAIT_S, _command_error, command_json
from planty_broker.northbound.api.errors import error_body
from planty_broker.northbound.api.limits import MAX_SECONDS
from planty_broker.services.commands.service import CommandService
from planty_broker.services.context import Services
from planty_broker.services.registry import UnknownDeviceError

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[MutableMapping[str, Any], Receive, Send], Awaitable[None]]

_PATH = re.compile(r"/api/v1/devices/([^/]+)/commands")
_JSON = (b"application/json", b"application/json; charset=utf-8")
_ALLOWED = (Scope.ADMIN, Scope.SERVER)
_encode = msgspec.json.Encoder().encode
MAX_BODY = 256 * 1024  # larger bodies go the ordinary way


class FastCommand(msgspec.Struct, forbid_unknown_fields=True):
    """`commands.NewCommand` for msgspec: the same fields, types and limits."""

    action: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    args: dict[str, Any] = msgspec.field(default_factory=dict)
    ttl_s: Annotated[float, msgspec.Meta(gt=0, le=MAX_SECONDS)] | None = None
    wait_s: Annotated[float, msgspec.Meta(ge=0, le=MAX_WAIT_S)] = 0.0
    id: str | None = None


_decode = msgspec.json.Decoder(FastCommand).decode


class CommandFastPath:
    """ASGI middleware: see the module docstring."""

    served_total = 0  # requests answered here in this process (the rest went to FastAPI)

    def __init__(self, app: ASGIApp, svc: Services, authenticator: Authenticator) -> None:
        self.app = app
        self.svc = svc
        self.auth = authenticator

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["query_string"]:
            return await self.app(scope, receive, send)
        m = _PATH.fullmatch(scope["path"])
        service = self.svc.commands
        if m is None or self.svc.role == "worker" or not isinstance(service, CommandService):
            return await self.app(scope, receive, send)
        token = b""
        ctype = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                token = value
            elif name == b"content-type":
                ctype = value
        scheme, _, secret = token.partition(b" ")
        body, more = await _read_body(receive)
        replay = _replay(body, more, receive)
        if ctype.lower() not in _JSON or scheme.lower() != b"bearer" or not secret or more:
            return await self.app(scope, replay, send)
        try:
            cmd = _decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return await self.app(scope, replay, send)  # the route says what is wrong
        who = await self.auth.authenticate(secret.decode("latin-1"))
        if who is None or who.scope not in _ALLOWED:
            return await self.app(scope, replay, send)
        try:
            rec = await service.submit(
                m.group(1),
                cmd.action,
                cmd.args,
                ttl_s=cmd.ttl_s,
                wait_s=cmd.wait_s,
                command_id=cmd.id,
            )
        except (UnknownDeviceError, CommandError) as exc:
            err = _command_error(exc)
            out = JSONResponse(error_body(err.code, err.message, **err.details), err.status)
            return await out(scope, replay, send)
        CommandFastPath.served_total += 1
        payload = _encode(command_json(rec))
        await send(
            {
                "type": "http.response.start",
                "status": 200 if rec.final else 202,
                "headers": [
                    (b"content-length", str(len(payload)).encode()),
                    (b"content-type", b"application/json"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})
        return None


async def _read_body(receive: Receive) -> tuple[bytes, bool]:
    """The request body, up to MAX_BODY; `more` when it is larger (not read to the end)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), False
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), False
        if size > MAX_BODY:
            return b"".join(chunks), True


def _replay(body: bytes, more: bool, receive: Receive) -> Receive:
    """A `receive` that hands out what was read first, then goes on with the real one."""
    sent = False

    async def again() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": more}
        return await receive()

    return again
