"""`planty status`: the dashboard's fleet table in the terminal (rich)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from planty_broker.cli.client import ConfigOpt, DataDirOpt, UrlOpt, ago, client, console

STATE_COLOR = {"online": "green", "late": "yellow", "offline": "red"}


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{share * 100:.1f}%"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms"


def _state(state: str) -> str:
    color = STATE_COLOR.get(state, "dim")
    return f"[{color}]{state}[/{color}]"


def _readings(d: dict[str, Any]) -> str:
    latest = d.get("latest")
    if not latest:
        return "-"
    return " ".join(f"{k}={v:g}" for k, v in sorted(latest["readings"].items()))


def headline(fleet: dict[str, Any]) -> str:
    p = fleet["presence"]
    lat = fleet["latency"]
    return (
        f"{fleet['devices']} devices: [green]{p['online']} online[/green], "
        f"[yellow]{p['late']} late[/yellow], [red]{p['offline']} offline[/red], "
        f"{p['unknown']} unknown | available {_pct(fleet['availability']['share'])} "
        f"over {fleet['window']} | round trip p50 {_ms(lat['p50_ms'])} p99 {_ms(lat['p99_ms'])} "
        f"| errors {fleet['errors_total']} | reconnects {fleet['reconnects_total']}"
    )


def fleet_table(devices: list[dict[str, Any]]) -> Table:
    t = Table(show_edge=False, pad_edge=False)
    for col, justify in (
        ("device", "left"),
        ("presence", "left"),
        ("since (cause)", "left"),
        ("last seen", "left"),
        ("latest readings", "left"),
        ("avail 1h", "right"),
        ("p99 1h", "right"),
        ("errors", "right"),
        ("msgs", "right"),
        ("rssi", "right"),
    ):
        t.add_column(col, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for d in devices:
        s = d.get("stats") or {}
        p = d["presence"]
        errors = s.get("errors_total", d["counts"]["errors"])
        t.add_row(
            d["id"],
            _state(p["state"]),
            f"{ago(p['since'])} ({p['cause'] or '-'})",
            ago(d["last_seen"]),
            _readings(d),
            _pct(s.get("availability_1h")),
            _ms(s.get("latency_p99_ms_1h")),
            f"[red]{errors}[/red]" if errors else "0",
            str(d["counts"]["messages"]),
            "-" if s.get("rssi") is None else str(s["rssi"]),
        )
    return t


def status(
    window: Annotated[
        str, typer.Option("--window", "-w", help="window of the fleet figures: 1h, 1d, 7d")
    ] = "1h",
    as_json: Annotated[bool, typer.Option("--json", help="raw fleet stats and devices")] = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    url: UrlOpt = None,
) -> None:
    """Fleet health: presence, last seen, readings, availability, p99 latency and errors."""
    api = client(config, data_dir, url)
    fleet = api.call("GET", "/stats", params={"window": window})
    devices = api.call("GET", "/devices")["devices"]
    if as_json:
        console.print_json(json.dumps({"fleet": fleet, "devices": devices}))
        return
    console.print(headline(fleet), highlight=False)
    console.print(fleet_table(devices))
