"""`planty rules ...`: threshold rules from the terminal (list, add, history, thresholds).

Talks to the running gateway over its HTTP API, like every command but `run`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from planty_broker.cli.client import ConfigOpt, DataDirOpt, UrlOpt, ago, client, console, fail
from planty_broker.cli.commands import parse_args
from planty_broker.cli.tables import Column, cell, fit_table

rules_app = typer.Typer(
    help="Threshold rules that run in the broker: water when dry, light when dark, cool when hot."
)

JsonOpt = Annotated[bool, typer.Option("--json", help="print the API's JSON")]
_DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd]?)$")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_WHEN_RE = re.compile(r"^\s*([A-Za-z0-9_.-]+)\s*(<=|>=|<|>)\s*(-?[0-9.]+(?:e-?\d+)?)\s*$")
OUTCOME_COLOR = {
    "fire": "green",
    "suppressed": "yellow",
    "warning": "magenta",
    "hold": "cyan",
    "changed": "dim",
    "error": "red",
}


def _seconds(text: str | None, what: str) -> float | None:
    """`90`, `30m`, `2h` -> seconds (None stays None)."""
    if text is None:
        return None
    m = _DURATION_RE.match(text.strip())
    if m is None:
        fail(f"{what} {text!r}: use seconds or a duration like 90s, 30m, 2h, 1d")
    return float(m.group(1)) * _UNIT_S[m.group(2) or "s"]


def _when(text: str) -> dict[str, Any]:
    m = _WHEN_RE.match(text)
    if m is None:
        fail(f"--when {text!r}: use '<reading> <op> <number>', e.g. 'soil_moisture < 0.3'")
    return {"reading": m.group(1), "op": m.group(2), "threshold": float(m.group(3))}


def _guards(r: dict[str, Any]) -> str:
    parts = []
    if r.get("rearm") is not None:
        parts.append(f"rearm {r['rearm']:g}")
    if r.get("window"):
        parts.append(f"{r['window']} {r['tz']}")
    if r.get("cooldown_s"):
        parts.append(f"cooldown {r['cooldown_s']:g}s")
    if r.get("max_fires_per_day") is not None:
        parts.append(f"max {r['max_fires_per_day']}/day")
    if r.get("max_seconds_per_day") is not None:
        parts.append(f"max {r['max_seconds_per_day']:g}s/day")
    return ", ".join(parts) or "-"


def _devices(r: dict[str, Any]) -> str:
    d = r["devices"]
    return d if isinstance(d, str) else ", ".join(d)


@rules_app.command("list")
def list_rules(
    device: Annotated[str | None, typer.Option(help="only rules watching this device")] = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    url: UrlOpt = None,
) -> None:
    """Every rule: when, then, guards, who set it."""
    params = {"device": device} if device else {}
    data = client(config, data_dir, url).call("GET", "/rules", params=params)
    if as_json:
        console.print_json(json.dumps(data))
        return
    columns = [
        Column("id", shrink=8),
        Column("devices", 2, shrink=10),
        Column("when"),
        Column("then", 1, shrink=10),
        Column("guards", 4, shrink=8),
        Column("on"),
        Column("origin", 5),
        Column("updated", 3),
    ]
    rows = [
        [
            r["id"],
            _devices(r),
            f"{r['reading']} {r['op']} {r['threshold']:g}",
            r["action"] + (" " + json.dumps(r["args"]) if r["args"] else ""),
            _guards(r),
            "yes" if r["enabled"] else cell("no", "dim"),
            r["origin"],
            ago(r["updated_at"]),
        ]
        for r in data["rules"]
    ]
    n = data["count"]
    title = f"{n} rule{'' if n == 1 else 's'} (broker time zone {data['time_zone']})"
    console.print(fit_table(columns, rows, console, title=title))
    for rule_id, reasons in data.get("unusable", {}).items():
        console.print(
            Text.assemble((f"stored rule {rule_id} is not used:", "red"), " ", "; ".join(reasons))
        )


@rules_app.command("show")
def show(
    rule_id: str, config: ConfigOpt = None, data_dir: DataDirOpt = None, url: UrlOpt = None
) -> None:
    """One rule and its live state per device (armed, last fire, today's budget, hold)."""
    console.print_json(json.dumps(client(config, data_dir, url).call("GET", f"/rules/{rule_id}")))


@rules_app.command("add")
def add(
    rule_id: Annotated[str, typer.Argument(help="a name for the rule, e.g. water-basil")],
    device: Annotated[
        list[str] | None, typer.Option("--device", "-d", help="device id (repeat), or '*'")
    ] = None,
    when: Annotated[str | None, typer.Option(help="e.g. 'soil_moisture < 0.3'")] = None,
    then: Annotated[str | None, typer.Option(help="e.g. pump.on")] = None,
    arg: Annotated[list[str] | None, typer.Option("--arg", help="key=value (repeat)")] = None,
    rearm: Annotated[float | None, typer.Option(help="hysteresis bound, e.g. 0.4")] = None,
    window: Annotated[str | None, typer.Option(help="local time, e.g. 06:00-20:00")] = None,
    tz: Annotated[str | None, typer.Option(help="zone (default: the broker's)")] = None,
    cooldown: Annotated[str | None, typer.Option(help="e.g. 30m")] = None,
    max_fires: Annotated[int | None, typer.Option(help="fires per day")] = None,
    max_seconds: Annotated[float | None, typer.Option(help="actuator seconds per day")] = None,
    hold: Annotated[str | None, typer.Option(help="manual commands win this long")] = None,
    stale_after: Annotated[str | None, typer.Option(help="ignore older readings")] = None,
    file: Annotated[Path | None, typer.Option(help="the rule as a JSON file")] = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    url: UrlOpt = None,
) -> None:
    """Add or replace a rule: `planty rules add water -d dev-1 --when 'soil_moisture < 0.3'
    --then pump.on --arg seconds=20 --rearm 0.4 --cooldown 30m --max-fires 5`."""
    body: dict[str, Any] = {}
    if file is not None:
        try:
            body = json.loads(file.read_text())
        except (OSError, ValueError) as exc:
            fail(f"--file {file}: {exc}")
        if not isinstance(body, dict):
            fail(f"--file {file}: the rule must be a JSON object")
    if device:
        body["devices"] = device[0] if len(device) == 1 else device
    if when:
        body.update(_when(when))
    if then:
        body["action"] = then
    if arg:
        body["args"] = parse_args(arg, None)
    optional = {
        "rearm": rearm,
        "window": window,
        "tz": tz,
        "cooldown_s": _seconds(cooldown, "--cooldown"),
        "max_fires_per_day": max_fires,
        "max_seconds_per_day": max_seconds,
        "hold_s": _seconds(hold, "--hold"),
        "stale_after_s": _seconds(stale_after, "--stale-after"),
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    body["id"] = rule_id
    r = client(config, data_dir, url).call("PUT", f"/rules/{rule_id}", json=body)
    args = " " + json.dumps(r["args"]) if r["args"] else ""
    console.print(
        f"rule {r['id']}: when {r['reading']} {r['op']} {r['threshold']:g} then "
        f"{r['action']}{args} on {_devices(r)} ({_guards(r)})",
        highlight=False,
    )


@rules_app.command("delete")
def delete(
    rule_id: str, config: ConfigOpt = None, data_dir: DataDirOpt = None, url: UrlOpt = None
) -> None:
    """Delete a rule (its history stays readable)."""
    client(config, data_dir, url).call("DELETE", f"/rules/{rule_id}")
    console.print(f"rule {rule_id} deleted")


def _enable(rule_id: str, on: bool, config: Any, data_dir: Any, url: Any) -> None:
    client(config, data_dir, url).call("PATCH", f"/rules/{rule_id}", json={"enabled": on})
    console.print(f"rule {rule_id} {'enabled' if on else 'disabled'}")


@rules_app.command("enable")
def enable(
    rule_id: str, config: ConfigOpt = None, data_dir: DataDirOpt = None, url: UrlOpt = None
) -> None:
    """Evaluate the rule again."""
    _enable(rule_id, True, config, data_dir, url)


@rules_app.command("disable")
def disable(
    rule_id: str, config: ConfigOpt = None, data_dir: DataDirOpt = None, url: UrlOpt = None
) -> None:
    """Keep the rule (and its state) but stop evaluating it."""
    _enable(rule_id, False, config, data_dir, url)


@rules_app.command("history")
def history(
    rule_id: str,
    device: Annotated[str | None, typer.Option(help="only this device")] = None,
    since: Annotated[str | None, typer.Option(help="ISO 8601 time or unix ms")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    url: UrlOpt = None,
) -> None:
    """Why did the pump run? Fires, suppressions, holds, warnings and changes, newest last."""
    params: dict[str, Any] = {"limit": limit}
    if device:
        params["device"] = device
    if since:
        params["since"] = since
    data = client(config, data_dir, url).call("GET", f"/rules/{rule_id}/history", params=params)
    if as_json:
        console.print_json(json.dumps(data))
        return
    columns = [
        Column("at", 2),
        Column("device", 3, shrink=10),
        Column("outcome"),
        Column("value", 4, "right"),
        Column("detail", 1, shrink=10),
        Column("command", 5, shrink=10),
    ]
    rows = []
    for e in reversed(data["events"]):
        cmd = e.get("command") or {}
        value = e.get("value")
        rows.append(
            [
                e["at"],
                e.get("device_id") or "-",
                cell(e["outcome"], OUTCOME_COLOR.get(e["outcome"], "")),
                "-" if value is None else f"{value:g}",
                e.get("detail") or "",
                f"{cmd['id']} {cmd['state']}" if cmd else (e.get("command_id") or ""),
            ]
        )
    console.print(fit_table(columns, rows, console, title=f"history of rule {rule_id}"))


@rules_app.command("thresholds")
def thresholds(
    device_id: str,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="reading.min|max=value (repeat), e.g. soil_moisture.min=0.3"),
    ] = None,
    clear: Annotated[bool, typer.Option("--clear", help="remove every threshold")] = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    url: UrlOpt = None,
) -> None:
    """Show a device's thresholds, or set them (the original design's `set_thresholds`);
    `--set` replaces all of them, so give every threshold the device should keep."""
    api = client(config, data_dir, url)
    path = f"/devices/{device_id}/thresholds"
    if set_ or clear:
        wanted: dict[str, dict[str, float]] = {}
        for item in set_ or []:
            key, sep, value = item.partition("=")
            reading, dot, bound = key.rpartition(".")
            try:
                number = float(value)
            except ValueError:
                number = None
            if not sep or not dot or not reading or number is None:
                fail(f"--set {item!r}: use reading.min=value or reading.max=value")
            wanted.setdefault(reading, {})[bound] = number
        data = api.call("PUT", path, json=wanted)
    else:
        data = api.call("GET", path)
    shown = ", ".join(
        f"{reading} {bound} {value:g}"
        for reading, bounds in sorted(data["thresholds"].items())
        for bound, value in sorted(bounds.items())
    )
    console.print(f"{device_id}: {shown or 'no thresholds'}", highlight=False)
    for r in data["rules"]:
        console.print(
            f"  {r['id']}: {r['reading']} {r['op']} {r['threshold']:g} -> {r['action']} "
            f"({_guards(r)})",
            highlight=False,
        )
