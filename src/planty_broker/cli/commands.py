"""`planty commands ...` and `planty events ...`: the message queue from the terminal.

Both talk to the running gateway over its HTTP API (like every command but `run`).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import httpx
import typer
from rich.text import Text

from planty_broker.cli.client import (
    EXIT_NOT_DONE,
    EXIT_WAIT_ENDED,
    ConfigOpt,
    DataDirOpt,
    UrlOpt,
    ago,
    client,
    console,
    fail,
    warn,
)
from planty_broker.cli.tables import Column, cell, fit_table

commands_app = typer.Typer(help="Send commands to devices and follow them to their outcome.")
events_app = typer.Typer(help="Read the event log, follow it live, manage consumers.")

STATE_COLOR = {
    "queued": "cyan",
    "sent": "yellow",
    "acked": "green",
    "failed": "red",
    "expired": "magenta",
    "cancelled": "dim",
    "superseded": "dim",
}
JsonOpt = Annotated[bool, typer.Option("--json", help="print the API's JSON")]


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_args(pairs: list[str], raw: str | None) -> dict[str, Any]:
    """`--arg seconds=30 --arg mode=eco` and/or `--args '{"seconds": 30}'` as one dict."""
    out: dict[str, Any] = {}
    if raw:
        parsed = _value(raw)
        if not isinstance(parsed, dict):
            fail("--args must be a JSON object, e.g. --args '{\"seconds\": 30}'")
        out.update(parsed)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail(f"--arg {pair!r}: use key=value, e.g. --arg seconds=30")
        out[key] = _value(value)
    return out


def _state(state: str) -> Text:
    return cell(state, STATE_COLOR.get(state, ""))


def _line(c: dict[str, Any]) -> Text:
    extra = ""
    if c.get("error"):
        extra = f": {c['error']}"
    elif c.get("result") is not None:
        extra = f": {json.dumps(c['result'])}"
    rtt = f" in {c['rtt_ms']:.0f} ms" if c.get("rtt_ms") is not None else ""
    return Text.assemble(
        f"{c['id']} {c['action']} on {c['device_id']}: ",
        _state(c["state"]),
        f" (attempts {c['attempts']}){rtt}{extra}",
    )


@commands_app.command("send")
def send(
    device_id: str,
    action: Annotated[str, typer.Argument(help="pump.on, lamp.set, read, ping, config, ...")],
    arg: Annotated[list[str] | None, typer.Option("--arg", help="key=value (repeat)")] = None,
    args: Annotated[str | None, typer.Option("--args", help="args as a JSON object")] = None,
    ttl: Annotated[float | None, typer.Option("--ttl", help="deadline from now, s")] = None,
    wait: Annotated[
        float, typer.Option("--wait", help="wait up to this long for the outcome, s")
    ] = 0,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    url: UrlOpt = None,
) -> None:
    """Queue a command for a device (sent when it is online); `--wait 10` waits for the ack.

    With `--wait`, the exit code says how it ended: 0 acked, 3 final but not acked
    (failed, expired, cancelled, superseded), 4 the wait ended first (still queued or
    sent: it goes on in the gateway)."""
    body: dict[str, Any] = {"action": action, "args": parse_args(arg or [], args), "wait_s": wait}
    if ttl is not None:
        body["ttl_s"] = ttl
    c = client(config, data_dir, url).call("POST", f"/devices/{device_id}/commands", json=body)
    if as_json:
        console.print_json(json.dumps(c))
    else:
        console.print(_line(c))
    if wait and not c["final"]:
        if not as_json:
            warn(
                f"no outcome within --wait {wait:g} s: the command is {c['state']} and stays "
                f"in the gateway (`planty commands show {c['id']}`)"
            )
        raise typer.Exit(EXIT_WAIT_ENDED)
    if wait and c["state"] != "acked":
        raise typer.Exit(EXIT_NOT_DONE)


@commands_app.command("read")
def read(
    device_id: str,
    wait: Annotated[float | None, typer.Option("--wait", help="seconds to wait")] = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    url: UrlOpt = None,
) -> None:
    """Ask a device for its readings now (they are stored as telemetry too)."""
    body = {"wait_s": wait} if wait else {}
    r = client(config, data_dir, url).call("POST", f"/devices/{device_id}/read", json=body)
    console.print_json(json.dumps(r["readings"]))


@commands_app.command("list")
def list_commands(
    device_id: Annotated[str | None, typer.Argument(help="one device (default: all)")] = None,
    state: Annotated[str | None, typer.Option(help="e.g. queued,sent")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    url: UrlOpt = None,
) -> None:
    """Commands, newest first, with their state."""
    params: dict[str, Any] = {"limit": limit}
    if state:
        params["state"] = state
    path = f"/devices/{device_id}/commands" if device_id else "/commands"
    data = client(config, data_dir, url).call("GET", path, params=params)
    if as_json:
        console.print_json(json.dumps(data))
        return
    columns = [
        Column("id", shrink=10),
        Column("device", 1, shrink=10),
        Column("action"),
        Column("state"),
        Column("tries", 5, "right"),
        Column("created", 3),
        Column("rtt", 4, "right"),
        Column("outcome", 2, shrink=10),
    ]
    rows = [
        [
            c["id"],
            c["device_id"],
            c["action"],
            _state(c["state"]),
            str(c["attempts"]),
            ago(c["created_at"]),
            f"{c['rtt_ms']:.0f} ms" if c.get("rtt_ms") is not None else "-",
            c.get("error") or (json.dumps(c["result"]) if c.get("result") else ""),
        ]
        for c in data["commands"]
    ]
    n = data["count"]
    console.print(fit_table(columns, rows, console, title=f"{n} command{'' if n == 1 else 's'}"))


@commands_app.command("show")
def show(
    command_id: str, config: ConfigOpt = None, data_dir: DataDirOpt = None, url: UrlOpt = None
) -> None:
    """One command with its history."""
    console.print_json(
        json.dumps(client(config, data_dir, url).call("GET", f"/commands/{command_id}"))
    )


@commands_app.command("cancel")
def cancel(
    command_id: str, config: ConfigOpt = None, data_dir: DataDirOpt = None, url: UrlOpt = None
) -> None:
    """Cancel a command that was not sent yet."""
    c = client(config, data_dir, url).call("DELETE", f"/commands/{command_id}")
    console.print(_line(c))


# ---------------------------------------------------------------- events


def _event_line(e: dict[str, Any]) -> str:
    data = json.dumps(e["data"], separators=(",", ":"))
    return f"{e['id']:>8} {e['at']} {e['type']:<12} {e.get('device_id') or '-':<20} {data}"


@events_app.command("tail")
def tail(
    after: Annotated[
        int | None, typer.Option(help="start after this id (default: the last 20)")
    ] = None,
    types: Annotated[str | None, typer.Option(help="reading,presence,command,device_error")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep streaming (SSE)")] = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    url: UrlOpt = None,
) -> None:
    """Print events; with `--follow`, keep printing them as they happen."""
    api = client(config, data_dir, url)
    params: dict[str, Any] = {"limit": 1000}
    if types:
        params["types"] = types
    if after is None:
        last = api.call("GET", "/events", params={"limit": 1})["log"]["last_id"]
        after = max(0, last - 20)
    body = api.call("GET", "/events", params={**params, "after": after})
    if body.get("missed"):
        m = body["missed"]
        console.print(
            cell(f"events {m['after'] + 1}..{m['through']} were deleted by retention", "yellow")
        )
    for e in body["events"]:
        console.print(_event_line(e))
    if not follow:
        return
    headers = {"Authorization": f"Bearer {api.token}", "Last-Event-ID": str(body["next_after"])}
    stream_params = {"types": types} if types else {}
    try:
        with httpx.stream(
            "GET",
            f"{api.url}/api/v1/events/stream",
            headers=headers,
            params=stream_params,
            timeout=httpx.Timeout(10, read=None),
        ) as r:
            for line in r.iter_lines():
                if line.startswith("data:"):
                    data = json.loads(line[5:])
                    if "id" in data:
                        console.print(_event_line(data))
                    else:
                        console.print(cell(f"gap: {data}", "yellow"))
    except httpx.HTTPError as exc:
        fail(f"the event stream from {api.url} ended: {exc}")
    except KeyboardInterrupt:
        pass


@events_app.command("consumers")
def consumers(
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    url: UrlOpt = None,
) -> None:
    """Named consumers: what each confirmed, its lag, and events retention dropped for it."""
    data = client(config, data_dir, url).call("GET", "/consumers")
    if as_json:
        console.print_json(json.dumps(data))
        return
    log = data["log"]
    columns = [
        Column("consumer", shrink=12),
        Column("acked", 0, "right"),
        Column("lag", 0, "right"),
        Column("dropped", 1, "right"),
        Column("updated", 2),
    ]
    rows = [
        [
            c["name"],
            str(c["acked"]),
            str(c["lag"]),
            cell(c["dropped"], "red") if c["dropped"] else "0",
            ago(c["updated_at"]),
        ]
        for c in data["consumers"]
    ]
    title = (
        f"event log: ids {log['first_id'] or '-'}..{log['last_id']}, "
        f"{log['deleted_unconfirmed']} deleted unconfirmed"
    )
    console.print(fit_table(columns, rows, console, title=title))


@events_app.command("confirm")
def confirm(
    name: str,
    acked: int,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    url: UrlOpt = None,
) -> None:
    """Confirm events up to `acked` for consumer `name` (registers it on first use)."""
    c = client(config, data_dir, url).call(
        "PUT", f"/consumers/{name}/cursor", json={"acked": acked}
    )
    console.print(
        f"consumer {c['name']}: acked {c['acked']}, lag {c['lag']}, dropped {c['dropped']}"
    )
