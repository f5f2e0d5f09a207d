"""`planty devices ...`: register, list, show and remove devices (the credential
sub-commands are added by `cli.identity`)."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from planty_broker.cli.client import (
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

devices_app = typer.Typer(
    help="Register, list, show and remove devices.", invoke_without_command=True
)


STATE_COLOR = {"online": "green", "late": "yellow", "offline": "red"}


def presence_cell(state: str) -> Text:
    """A presence state in words and colour (`never_seen` reads "never seen")."""
    return cell(state.replace("_", " "), STATE_COLOR.get(state, "dim"))


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
        list_devices(
            as_json=False,
            search=None,
            state=None,
            limit=None,
            config=config,
            data_dir=data_dir,
            url=url,
        )


def fetch_devices(
    api: Any, *, search: str | None = None, state: str | None = None, limit: int | None = None
) -> dict[str, Any]:
    """GET /devices page by page (following `next_cursor`) until `limit` devices or the end."""
    params: dict[str, Any] = {}
    if search:
        params["q"] = search
    if state:
        params["state"] = state
    devices: list[dict[str, Any]] = []
    data: dict[str, Any] = {}
    while True:
        if limit is not None:
            params["limit"] = max(1, min(1000, limit - len(devices)))
        data = api.call("GET", "/devices", params=params)
        devices += data["devices"]
        cursor = data.get("next_cursor")
        if not cursor or (limit is not None and len(devices) >= limit):
            break
        params["cursor"] = cursor
    return {**data, "devices": devices}


@devices_app.command("list")
def list_devices(
    as_json: Annotated[bool, typer.Option("--json")] = False,
    search: Annotated[
        str | None, typer.Option("--search", "-s", help="only ids or names containing this")
    ] = None,
    state: Annotated[
        str | None, typer.Option("--state", help="only `online` (or late) or `offline` devices")
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="at most this many (default: all)")
    ] = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    url: UrlOpt = None,
) -> None:
    """List devices with presence, last seen, latest readings, message and error counts
    (in id order, fetched a page of 1000 at a time)."""
    if state is not None and state not in ("online", "offline"):
        fail(f"--state must be online or offline, not {state!r}")
    data = fetch_devices(client(config, data_dir, url), search=search, state=state, limit=limit)
    if as_json:
        console.print_json(json.dumps(data))
        return
    columns = [
        Column("id"),
        Column("presence"),
        Column("since", 4),
        Column("cause", 5),
        Column("last seen", 3),
        Column("latest readings", 1, shrink=16),
        Column("msgs", 6, "right"),
        Column("errors", 2, "right"),
    ]
    rows = [
        [
            d["id"],
            presence_cell(d["presence"]["state"]),
            ago(d["presence"]["since"]),
            d["presence"]["cause"] or "-",
            ago(d["last_seen"]),
            _readings_cell(d),
            str(d["counts"]["messages"]),
            str(d["counts"]["errors"]),
        ]
        for d in data["devices"]
    ]
    n = data["count"]
    title = f"{n} device{'' if n == 1 else 's'}, {data['online']} online"
    if len(rows) < n:
        title += f" (first {len(rows)} shown)"
    console.print(fit_table(columns, rows, console, title=title))


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
    sensor: Annotated[
        list[str] | None,
        typer.Option("--sensor", help="a sensor it has, before it first connects (repeat)"),
    ] = None,
    actuator: Annotated[
        list[str] | None,
        typer.Option(
            "--actuator", help="an actuator it has (repeat): commands work before first contact"
        ),
    ] = None,
    profile: Annotated[
        str | None,
        typer.Option(help="a named set of sensors and actuators: pot, greenhouse, sensor"),
    ] = None,
    ca_file: Annotated[
        Path | None,
        typer.Option("--ca-file", help="also write the CA certificate (PEM) for MQTT clients"),
    ] = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    url: UrlOpt = None,
) -> None:
    """Register a device; prints its credentials once.

    `--actuator pump --sensor soil_moisture` (or `--profile pot`) declare what it has
    up front, so commands and rules can be set before it first connects; what the
    device declares on connect replaces them."""
    body: dict[str, Any] = {"id": device_id}
    if name:
        body["name"] = name
    if sensor:
        body["sensors"] = sensor
    if actuator:
        body["actuators"] = actuator
    if profile:
        body["profile"] = profile
    creds = client(config, data_dir, url).call("POST", "/devices", json=body)
    if ca_file is not None:
        _write_ca(ca_file, creds["mqtt"].get("ca_pem"))
    if export_device_config:
        secrets_doc = {
            "wifi": {"ssid": wifi_ssid, "password": wifi_password},
            "device_id": creds["id"],
            "token": creds["token"],
            # `mqtt.endpoints` (a cluster's nodes) when the gateway gives them; not null
            "mqtt": {k: v for k, v in creds["mqtt"].items() if v is not None or k != "endpoints"},
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
    warn("the token is shown only once: store it on the device now")


IMPORT_BATCH = 10_000  # the API's limit per request
_LIST_FIELDS = ("sensors", "actuators")


def read_import_file(path: Path) -> tuple[list[Any], bool]:
    """Rows of a bulk import and whether it was CSV: a JSON list of objects, or CSV with a
    header row (id, and optionally name, sensors, actuators, profile; lists separated by
    spaces or ';')."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {path}: {exc}")
    if path.suffix.lower() == ".json" or text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except ValueError as exc:
            fail(f"{path} is not valid JSON: {exc}")
        if not isinstance(rows, list):
            fail(f"{path}: expected a JSON list of devices")
        return rows, False
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or "id" not in [f.strip() for f in reader.fieldnames]:
        fail(f"{path}: the CSV needs a header row with an `id` column")
    out: list[Any] = []
    for raw in reader:
        row: dict[str, Any] = {}
        for raw_key, raw_value in raw.items():
            if raw_key is None or raw_value is None or not raw_value.strip():
                continue  # extra cells, empty cells
            key, value = raw_key.strip(), raw_value.strip()
            row[key] = value.replace(";", " ").split() if key in _LIST_FIELDS else value
        out.append(row)
    return out, True


@devices_app.command("import")
def import_devices(
    file: Annotated[Path, typer.Argument(help="CSV (header: id,name,...) or JSON list")],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="write id,token of the imported devices to this CSV (mode 0600)"
        ),
    ] = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    url: UrlOpt = None,
) -> None:
    """Register many devices from a file: one MQTT server reload per 10,000; rows that are
    wrong are listed (with their line) and the others registered. The tokens are shown
    only once: with --out they go to that file, else to stdout as JSON."""
    rows, csv_file = read_import_file(file)
    if not rows:
        fail(f"{file}: no devices in it")
    api = client(config, data_dir, url)
    imported: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    mqtt: dict[str, Any] = {}
    for start in range(0, len(rows), IMPORT_BATCH):
        answer = api.call("POST", "/devices/import", json=rows[start : start + IMPORT_BATCH])
        mqtt = answer["mqtt"]
        imported += answer["devices"]
        for e in answer["errors"]:
            errors.append({**e, "row": e["row"] + start})
    for e in errors:
        where = f"line {e['row'] + 2}" if csv_file else f"row {e['row']}"
        warn(f"{file}: {where} ({e.get('id') or '?'}): {e['message']} ({e['code']})")
    tokens = [{"id": d["id"], "token": d["token"]} for d in imported]
    if out is not None:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["id", "token"])
            writer.writerows([t["id"], t["token"]] for t in tokens)
        console.print(
            f"{len(tokens)} devices imported, {len(errors)} rows refused; tokens written to "
            f"{out} (keep it secret: they are not shown again)"
        )
    else:
        console.print_json(json.dumps({"devices": tokens, "mqtt": mqtt}))
        warn(
            f"{len(tokens)} devices imported, {len(errors)} rows refused; the tokens are "
            "shown only once"
        )
    if errors:
        raise typer.Exit(1)


def _write_ca(path: Path, ca_pem: str | None) -> None:
    if not ca_pem:
        warn(f"no CA to write to {path}: this gateway's MQTT server does not use our CA")
        return
    path.write_text(ca_pem)
    warn(f"CA certificate written to {path}")


@devices_app.command("ca")
def ca(
    out: Annotated[
        Path | None, typer.Option("--out", help="write it to this file (default: stdout)")
    ] = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    url: UrlOpt = None,
) -> None:
    """The CA certificate (PEM) MQTT clients must trust: `planty devices ca > ca.pem`, then
    `mosquitto_sub --cafile ca.pem ...`."""
    data = client(config, data_dir, url).call("GET", "/mqtt")
    if out is not None:
        _write_ca(out, data["ca_pem"])
        return
    if not data["ca_pem"]:
        fail("this gateway's MQTT server does not use the gateway's CA (mqtt.url is set)")
    typer.echo(data["ca_pem"], nl=False)


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
