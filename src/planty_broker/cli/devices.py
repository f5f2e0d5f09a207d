"""`planty devices ...`: register, list, show and remove devices (the credential
sub-commands are added by `cli.identity`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from planty_broker.cli.client import ConfigOpt, DataDirOpt, UrlOpt, ago, client, console, err

devices_app = typer.Typer(
    help="Register, list, show and remove devices.", invoke_without_command=True
)


def _presence_cell(d: dict[str, Any]) -> str:
    state = d["presence"]["state"]
    color = {"online": "green", "late": "yellow", "offline": "red"}.get(state, "dim")
    return f"[{color}]{state}[/{color}]"


def _readings_cell(d: dict[str, Any]) -> str:
    latest = d.get("latest")
    if not latest:
        return "-"
    return " ".join(f"{k}={v:g}" for k, v in sorted(latest["readings"].items()))


@devices_app.callback()
def devices_default(
    ctx: typer.Context, config: ConfigOpt = None, data_dir: DataDirOpt = None, url: UrlOpt = None
) -> None:
    """With no sub-command: list devices (the options apply to that list)."""
    if ctx.invoked_subcommand is None:
        list_devices(config=config, data_dir=data_dir, url=url)


@devices_app.command("list")
def list_devices(
    as_json: Annotated[bool, typer.Option("--json")] = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    url: UrlOpt = None,
) -> None:
    """List devices with presence, last seen, latest readings, message and error counts."""
    data = client(config, data_dir, url).call("GET", "/devices")
    if as_json:
        console.print_json(json.dumps(data))
        return
    t = Table(title=f"{data['count']} devices, {data['online']} online")
    for col in (
        "id",
        "presence",
        "since (cause)",
        "last seen",
        "latest readings",
        "msgs",
        "errors",
    ):
        t.add_column(col, overflow="fold")
    for d in data["devices"]:
        p = d["presence"]
        t.add_row(
            d["id"],
            _presence_cell(d),
            f"{ago(p['since'])} ({p['cause'] or '-'})",
            ago(d["last_seen"]),
            _readings_cell(d),
            str(d["counts"]["messages"]),
            str(d["counts"]["errors"]),
        )
    console.print(t)


@devices_app.command("add")
def add_device(
    device_id: Annotated[str, typer.Argument(help="device id: 3-64 of a-z 0-9 -")],
    name: Annotated[str | None, typer.Option(help="a human name")] = None,
    export_device_config: Annotated[
        Path | None,
        typer.Option(
            "--export-device-config",
            help="write secrets.json for the MicroPython client (mode 0600)",
        ),
    ] = None,
    wifi_ssid: Annotated[str, typer.Option(help="Wi-Fi SSID to put in secrets.json")] = "",
    wifi_password: Annotated[str, typer.Option(help="Wi-Fi password to put in secrets.json")] = "",
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    url: UrlOpt = None,
) -> None:
    """Register a device; prints its credentials once."""
    body: dict[str, Any] = {"id": device_id}
    if name:
        body["name"] = name
    creds = client(config, data_dir, url).call("POST", "/devices", json=body)
    if export_device_config:
        secrets_doc = {
            "wifi": {"ssid": wifi_ssid, "password": wifi_password},
            "device_id": creds["id"],
            "token": creds["token"],
            "mqtt": creds["mqtt"],
        }
        fd = os.open(export_device_config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(secrets_doc, f, indent=2)
        console.print(
            f"device {creds['id']} registered; credentials written to {export_device_config} "
            "(keep it secret: the token is not shown again)"
        )
        return
    console.print_json(json.dumps(creds))
    err.print("[yellow]the token is shown only once: store it on the device now[/yellow]")


@devices_app.command("show")
def show_device(
    device_id: str, config: ConfigOpt = None, data_dir: DataDirOpt = None, url: UrlOpt = None
) -> None:
    """Everything the gateway knows about one device."""
    console.print_json(
        json.dumps(client(config, data_dir, url).call("GET", f"/devices/{device_id}"))
    )


@devices_app.command("remove")
def remove_device(
    device_id: str, config: ConfigOpt = None, data_dir: DataDirOpt = None, url: UrlOpt = None
) -> None:
    """Remove a device: its credentials stop working at once."""
    client(config, data_dir, url).call("DELETE", f"/devices/{device_id}")
    console.print(f"device {device_id} removed")
