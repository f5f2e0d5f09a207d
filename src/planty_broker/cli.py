"""The `planty` command: run the gateway, manage devices, simulate a fleet.

Every command except `run` talks to a running gateway over its HTTP API,
with the admin token from PLANTY_ADMIN_TOKEN or the data folder.
Errors a user can meet print one line and exit 1, never a stack trace.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import typer
from rich.console import Console
from rich.table import Table

from planty_broker.config import ConfigError, Settings, load_settings

app = typer.Typer(
    help="Planty Broker: the gateway between ESP32 plant devices and the Planty server.",
    no_args_is_help=True,
    add_completion=False,
)
devices_app = typer.Typer(
    help="Register, list, show and remove devices.", invoke_without_command=True
)
app.add_typer(devices_app, name="devices")
console = Console()
err = Console(stderr=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="TOML config file")]
DataDirOpt = Annotated[
    Path | None, typer.Option("--data-dir", help="data folder (store, certs, tokens)")
]
UrlOpt = Annotated[str | None, typer.Option("--url", help="gateway API URL (default from config)")]


def fail(message: str) -> NoReturn:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(1)


def settings_from(
    config: Path | None, data_dir: Path | None = None, **api_mqtt: int | None
) -> Settings:
    overrides: dict[str, dict[str, Any]] = {}
    if data_dir is not None:
        overrides["gateway"] = {"data_dir": str(data_dir)}
    if api_mqtt.get("api_port"):
        overrides["api"] = {"port": api_mqtt["api_port"]}
    if api_mqtt.get("mqtt_port"):
        overrides["mqtt"] = {"port": api_mqtt["mqtt_port"]}
    try:
        return load_settings(config, overrides=overrides)
    except ConfigError as exc:
        fail(str(exc))


class ApiClient:
    """A small synchronous client of the gateway API for the CLI."""

    def __init__(self, settings: Settings, url: str | None) -> None:
        host = settings.api.host if settings.api.host not in ("0.0.0.0", "::") else "127.0.0.1"  # noqa: S104
        self.url = (url or f"http://{host}:{settings.api.port}").rstrip("/")
        token = settings.gateway.admin_token
        if not token:
            path = settings.data_dir / "admin-token"
            try:
                token = path.read_text().strip()
            except OSError:
                fail(
                    f"no admin token: set PLANTY_ADMIN_TOKEN or start the gateway once "
                    f"(it writes {path}); use --data-dir if it runs with another data folder"
                )
        self._client = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
        self.token = token

    def call(self, method: str, path: str, **kw: Any) -> Any:
        try:
            r = self._client.request(method, f"/api/v1{path}", **kw)
        except httpx.ConnectError:
            fail(
                f"cannot reach the gateway at {self.url}: is `planty run` running? (or pass --url)"
            )
        except httpx.HTTPError as exc:
            fail(f"request to {self.url} failed: {exc}")
        if r.status_code >= 400:
            try:
                e = r.json()["error"]
                fail(f"{e['message']} ({r.status_code} {e['code']})")
            except (ValueError, KeyError, TypeError):
                fail(f"{r.status_code} from the gateway: {r.text[:200]}")
        return r.json() if r.content else None


# ---------------------------------------------------------------- run


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed (it is a dependency; absent only on exotic platforms)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


@app.command()
def run(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    api_port: Annotated[
        int | None, typer.Option("--api-port", help="HTTP API port (default 8080)")
    ] = None,
    mqtt_port: Annotated[
        int | None, typer.Option("--mqtt-port", help="device MQTT/TLS port (default 8883)")
    ] = None,
) -> None:
    """Run the gateway: supervised Mosquitto with TLS, the store, the HTTP API."""
    from planty_broker.app import StartupError, run_gateway
    from planty_broker.logs import setup_logging

    settings = settings_from(config, data_dir, api_port=api_port, mqtt_port=mqtt_port)
    setup_logging(settings.log.level, settings.log.json)
    try:
        asyncio.run(run_gateway(settings, announce=lambda line: print(line, flush=True)))
    except StartupError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        pass


# ---------------------------------------------------------------- devices


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


def client(
    config: Path | None = None, data_dir: Path | None = None, url: str | None = None
) -> ApiClient:
    """An API client for the gateway that these settings describe."""
    return ApiClient(settings_from(config, data_dir), url)


def ago(iso_time: str | None) -> str:
    """'12s ago' from an API time, for tables."""
    if not iso_time:
        return "-"
    then = datetime.fromisoformat(iso_time.replace("Z", "+00:00"))
    secs = (datetime.now(UTC) - then).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{int(secs // size)}{unit} ago"
    return f"{max(0, int(secs))}s ago"


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


# ---------------------------------------------------------------- simulate


@app.command()
def simulate(
    devices: Annotated[
        int, typer.Option("--devices", "-n", min=1, help="how many virtual devices")
    ] = 10,
    interval: Annotated[
        float, typer.Option("--interval", min=0.01, help="telemetry interval, seconds")
    ] = 5.0,
    prefix: Annotated[str, typer.Option(help="device id prefix")] = "sim",
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    url: UrlOpt = None,
    mqtt_host: Annotated[
        str | None,
        typer.Option("--mqtt-host", help="host devices connect to (default: from the API)"),
    ] = None,
) -> None:
    """Start a virtual ESP32 fleet that provisions itself through the API and connects over TLS."""
    from planty_broker.simulator import SimulatorError
    from planty_broker.simulator.fleet import run_simulation

    client = ApiClient(settings_from(config, data_dir), url)
    try:
        asyncio.run(
            run_simulation(
                client.url,
                client.token,
                devices=devices,
                interval_s=interval,
                prefix=prefix,
                mqtt_host=mqtt_host,
            )
        )
    except SimulatorError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        pass


# Sub-command modules register themselves on `app` / `devices_app` when imported:
# commands+events, identity (pair, unpair, tokens, device credentials), rules, status.
from planty_broker import (  # noqa: E402
    cli_commands,  # noqa: F401
    cli_identity,  # noqa: F401
    cli_rules,  # noqa: F401
    cli_status,  # noqa: F401
)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
