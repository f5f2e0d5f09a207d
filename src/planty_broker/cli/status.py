"""`planty status`: the dashboard's fleet table in the terminal (rich)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from planty_broker.cli.client import (
    ConfigOpt,
    DataDirOpt,
    UrlOpt,
    ago,
    client,
    console,
    readiness,
)
from planty_broker.cli.devices import presence_cell
from planty_broker.cli.tables import Column, cell, fit_table


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{share * 100:.1f}%"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms"


def _readings(d: dict[str, Any]) -> str:
    latest = d.get("latest")
    if not latest:
        return "-"
    return " ".join(f"{k}={v:g}" for k, v in sorted(latest["readings"].items()))


def headline(fleet: dict[str, Any]) -> Text:
    p = fleet["presence"]
    lat = fleet["latency"]
    n = fleet["devices"]
    never = p.get("never_seen", 0)
    return Text.assemble(
        f"{n} device{'' if n == 1 else 's'}: ",
        (f"{p['online']} online", "green"),
        ", ",
        (f"{p['late']} late", "yellow"),
        ", ",
        (f"{p['offline']} offline", "red"),
        f", {p['unknown']} unknown",
        f", {never} never seen" if never else "",
        f" | available {_pct(fleet['availability']['share'])} over {fleet['window']}",
        f" | round trip p50 {_ms(lat['p50_ms'])} p99 {_ms(lat['p99_ms'])}"
        f" (of {lat['count']}, max {_ms(lat['max_ms'])})",
        f" | errors {fleet['errors_total']} | reconnects {fleet['reconnects_total']}",
    )


COLUMNS = (
    Column("device"),
    Column("presence"),
    Column("since", 6),
    Column("cause", 7),
    Column("last seen", 3),
    Column("latest readings", 4, shrink=16),
    Column("avail 1h", 1, "right"),
    Column("p99 1h", 2, "right"),
    Column("errors", 5, "right"),
    Column("msgs", 8, "right"),
    Column("rssi", 9, "right"),
)


def fleet_table(devices: list[dict[str, Any]], width: int | None = None) -> Table:
    """The fleet table, fitted to `width` (default: the console's; 80 when piped)."""
    rows = []
    for d in devices:
        s = d.get("stats") or {}
        p = d["presence"]
        errors = s.get("errors_total", d["counts"]["errors"])
        rows.append(
            [
                d["id"],
                presence_cell(p["state"]),
                ago(p["since"]),
                p["cause"] or "-",
                ago(d["last_seen"]),
                _readings(d),
                _pct(s.get("availability_1h")),
                _ms(s.get("latency_p99_ms_1h")),
                cell(errors, "red") if errors else "0",
                str(d["counts"]["messages"]),
                "-" if s.get("rssi") is None else str(s["rssi"]),
            ]
        )
    return fit_table(COLUMNS, rows, console, width=width)


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
    ready = readiness(api)
    fleet = api.call("GET", "/stats", params={"window": window})
    devices = api.call("GET", "/devices")["devices"]
    if as_json:
        console.print_json(json.dumps({"ready": ready, "fleet": fleet, "devices": devices}))
        return
    console.print(headline(fleet))
    if ready.get("ready"):
        console.print("gateway: [green]ready[/green]", highlight=False)
    else:
        console.print("gateway: [red]NOT READY[/red]", highlight=False)
        for reason in ready.get("reasons", []):
            console.print(f"  [red]-[/red] {escape(reason)}", highlight=False)
    for warning in ready.get("warnings", []):
        console.print(f"  [yellow]warning:[/yellow] {escape(warning)}", highlight=False)
    console.print(fleet_table(devices))
