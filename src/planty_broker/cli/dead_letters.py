"""`planty dead-letters ...`: device messages the store refused for good (list, purge).

Talks to the running gateway over its HTTP API, like every command but `run`.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from planty_broker.cli.client import ConfigOpt, DataDirOpt, UrlOpt, ago, client, console
from planty_broker.text import plural

dead_letters_app = typer.Typer(
    help="Messages the store refused for good: set aside (and acknowledged) so nothing "
    "else waits on them.",
    invoke_without_command=True,
)

DeviceOpt = Annotated[str | None, typer.Option("--device", "-d", help="only this device")]


@dead_letters_app.callback()
def dead_letters(
    ctx: typer.Context,
    device: DeviceOpt = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="newest ones at most")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="print the API's JSON")] = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    url: UrlOpt = None,
) -> None:
    """List dead letters, newest first (`planty dead-letters purge` deletes them)."""
    if ctx.invoked_subcommand is not None:
        return
    params: dict[str, str | int] = {"limit": limit}
    if device:
        params["device"] = device
    data = client(config, data_dir, url).call("GET", "/dead-letters", params=params)
    if as_json:
        console.print_json(json.dumps(data))
        return
    held = ", ".join(f"{d or '(none)'}: {n}" for d, n in data["held"].items()) or "none"
    t = Table(title=f"{plural(data['total'], 'dead letter')} kept ({held})")
    for col in ("id", "device", "topic", "when", "bytes", "error", "payload"):
        t.add_column(col, overflow="fold")
    for d in data["dead_letters"]:
        payload = d.get("payload")
        shown = payload if payload is not None else f"base64:{d.get('payload_base64', '')}"
        shown = shown[:80] + ("…" if len(shown) > 80 or d["truncated"] else "")
        t.add_row(
            str(d["id"]),
            d["device_id"] or "-",
            escape(d["topic"]),
            ago(d["at"]),
            str(d["size"]),
            escape(d["error"]),
            escape(shown),
        )
    console.print(t)


@dead_letters_app.command("purge")
def purge(
    device: DeviceOpt = None,
    through: Annotated[int | None, typer.Option(min=1, help="only ids up to this one")] = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    url: UrlOpt = None,
) -> None:
    """Delete dead letters: all, one device's (--device), or up to an id (--through)."""
    params: dict[str, str | int] = {}
    if device:
        params["device"] = device
    if through is not None:
        params["through"] = through
    data = client(config, data_dir, url).call("DELETE", "/dead-letters", params=params)
    console.print(f"purged {data['purged']} dead letter(s)")
