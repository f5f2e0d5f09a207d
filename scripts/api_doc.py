"""Generate docs/api.md from the API's own OpenAPI description.

    .venv/bin/python scripts/api_doc.py > docs/api.md

tests/unit/core/test_api_doc.py fails when docs/api.md is out of date.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from planty_broker.config import Settings
from planty_broker.northbound.api.app import create_api
from planty_broker.northbound.api.auth import Authenticator

HEADER = """# HTTP API

Base URL `http://127.0.0.1:8080` (`api.host`, `api.port`). The live, complete
description (request and response schemas) is served by the gateway itself at
`/openapi.json`, with an interactive page at `/docs`.

## Authentication

Every route needs `Authorization: Bearer <token>` except `GET /healthz` and
`POST /api/v1/pairing/claim` (whose pairing code is its secret; rate-limited).
Tokens have a scope: `admin` (everything), `server` (devices, commands, events,
rules) and `read` (GET only). The admin token is `PLANTY_ADMIN_TOKEN` or the
one generated into `data/admin-token`; more tokens come from `POST
/api/v1/tokens` or `planty tokens create` ([security.md](security.md)). A
missing, wrong or revoked token gets 401; a token whose scope does not allow the
call gets 403. An address that sent more than `api.auth_max_failures` (20) wrong
tokens in `api.auth_failure_window_s` (60 s) gets 429 with `Retry-After` for
further wrong ones (a valid token still passes).

Every admin action (tokens, devices, credentials, pairing, the claim window,
rules, firmware, dead letters, consumers) is recorded with the acting token's
name and the client address: `GET /api/v1/audit` (admin only; filters `action`,
`actor`, `device`, cursor `after`) and events of type `audit`
([events.md](events.md)).

## Errors

Every error is JSON with the right status:

```json
{"error": {"code": "unknown_device", "message": "no device with id 'greenhouse-9'"}}
```

| status | when |
|---|---|
| 400 | the body is not valid JSON (`bad_json`) |
| 401 | no token, wrong token, revoked token |
| 403 | the token's scope does not allow this |
| 404 | unknown device, command, rule, consumer |
| 409 | the thing exists already (e.g. a device id) |
| 422 | a value is wrong: the message says which and why (unknown action lists the valid ones) |
| 429 | a limit: per-device command queue full, too many wrong pairing codes or tokens \
from one address (`Retry-After` says when to come back) |

Times are ISO 8601 UTC in responses (`2026-11-27T12:00:00.123Z`); query
parameters take ISO 8601 or unix milliseconds.

## The fleet list, page by page

`GET /api/v1/devices` answers a page at a time, in device-id order:

| parameter | meaning |
|---|---|
| `limit` | devices per page, 1..1000 (default 1000: a fleet that small comes whole) |
| `cursor` | `next_cursor` (or `prev_cursor`) of the page before; opaque |
| `q` | only devices whose id or name contains this (any case), at most 200 characters |
| `state` | `online` (online or late) or `offline` (every other state) |

```json
{"devices": [...], "count": 10000, "online": 9874, "limit": 100,
 "next_cursor": "ZDE6cG90LTAwMTAw", "prev_cursor": null}
```

`count` and `online` cover every page of the query; `next_cursor` is null on the
last page. Pass the same `q` and `state` with a cursor. A cursor is a position in
the id order, not an offset, so devices added or removed while you page never
shift a page, repeat a device or skip one. A cursor this API did not give out is
a 422 (`invalid_cursor`). At 10,000 devices a page of 100 takes a few ms
([benchmarks.md](benchmarks.md)). `planty devices list --search Q --state online
--limit N` follows the pages.

## Registering many devices

`POST /api/v1/devices/import` takes a JSON list of up to 10,000 rows, each as for
`POST /api/v1/devices` (`id`, and optionally `name`, `sensors`, `actuators`,
`profile`). Each row is checked on its own; the good ones are registered in one
store write per 1,000 and **one** reload of the MQTT server for the whole batch,
and the answer comes once every returned token works:

```json
{"imported": 2, "failed": 1,
 "devices": [{"row": 0, "id": "pot-0001", "token": "..."},
             {"row": 2, "id": "pot-0003", "token": "..."}],
 "errors": [{"row": 1, "id": "Pot 2", "code": "invalid_device_id",
             "message": "device id 'Pot 2' is invalid: ..."}],
 "mqtt": {"host": "...", "port": 8883, "tls": true, "ca_pem": "...", "prefix": "planty/v1"}}
```

Error codes per row: `invalid` (not an object, an unknown field, a wrong type),
`invalid_device_id`, `device_exists`, `duplicate_in_batch`, `invalid_declaration`,
`unknown_profile`. A refused row changes nothing. The tokens are shown only in
this answer. From a file: `planty devices import FILE [--out tokens.csv]` (CSV with
a header row `id,name,sensors,actuators,profile`, lists separated by `;` or spaces,
or a JSON list; refused rows are printed with their line and the exit code is 1).

Credential changes reach the supervised Mosquitto in one reload per second at most
(`mqtt.reload_interval_s`), however many arrive: a single `POST /api/v1/devices`
answers once its token works (up to a second when other changes just went out);
`?wait=false` answers at once and the token works from the next reload.

## Routes

This list is generated from the OpenAPI description by `scripts/api_doc.py`.
"""


def build_app() -> Any:
    svc = SimpleNamespace(settings=Settings(), extra={})
    return create_api(svc, Authenticator("doc-only"))  # type: ignore[arg-type]


def render() -> str:
    spec = build_app().openapi()
    rows: dict[str, list[str]] = {}
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            tag = (op.get("tags") or ["other"])[0]
            doc = (op.get("description") or op.get("summary") or "").strip()
            text = " ".join(doc.split("\n\n")[0].split()).replace("|", "\\|")
            rows.setdefault(tag, []).append(f"| `{method.upper()}` | `{path}` | {text} |")
    parts = [HEADER]
    for tag in sorted(rows):
        parts.append(f"\n### {tag}\n\n| method | path | what |\n|---|---|---|")
        parts.extend(rows[tag])
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    print(render(), end="")
