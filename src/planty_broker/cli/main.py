"""The `planty` command: run the gateway, manage devices, simulate a fleet.

Every command except `run` talks to a running gateway over its HTTP API,
with the admin token from PLANTY_ADMIN_TOKEN or the data folder.
Errors a user can meet print one line and exit 1, never a stack trace.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import Annotated

import typer

from planty_broker.cli import backup, identity, status
from planty_broker.cli.client import ApiClient, ConfigOpt, DataDirOpt, UrlOpt, fail, settings_from
from planty_broker.cli.commands import commands_app, events_app
from planty_broker.cli.dead_letters import dead_letters_app
from planty_broker.cli.devices import devices_app
from planty_broker.cli.firmware import firmware_app
from planty_broker.cli.identity import pki_app, tokens_app
from planty_broker.cli.rules import rules_app

app = typer.Typer(
    help="Planty Broker: the gateway between ESP32 plant devices and the Planty server.",
    no_args_is_help=True,
    add_completion=False,
)

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
        # asyncio.run() of Python 3.11 takes no loop factory: the Runner does (uvloop, measured).
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(run_gateway(settings, announce=lambda line: print(line, flush=True)))
    except StartupError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        pass


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
        typer.Option(
            "--mqtt-host",
            help="host devices connect to (default: the API's host when it is loopback, "
            "else the host the gateway advertises)",
        ),
    ] = None,
    fresh: Annotated[
        bool,
        typer.Option(
            "--fresh", help="replace the simulated devices (new tokens) instead of reusing them"
        ),
    ] = False,
    update_failures: Annotated[
        float,
        typer.Option(
            "--update-failures",
            min=0.0,
            max=1.0,
            help="share of updates that crash at boot and roll back (to show a halt)",
        ),
    ] = 0.0,
) -> None:
    """Start a virtual ESP32 fleet that provisions itself through the API and connects over TLS.

    The devices take updates over the air: `planty firmware rollout` shows on them."""
    from planty_broker.simulator.fleet import run_simulation
    from planty_broker.simulator.profile import DeviceProfile, Faults
    from planty_broker.simulator.provision import TOKENS_FILE, SimulatorError

    settings = settings_from(config, data_dir)
    client = ApiClient(settings, url)
    # The tokens of the simulated devices, kept for the next run (devices reused, not replaced).
    tokens_file = settings.data_dir / TOKENS_FILE if settings.data_dir.is_dir() else None
    if fresh and tokens_file is not None:
        tokens_file.unlink(missing_ok=True)
    try:
        asyncio.run(
            run_simulation(
                client.url,
                client.token,
                devices=devices,
                interval_s=interval,
                prefix=prefix,
                mqtt_host=mqtt_host,
                profile=DeviceProfile(faults=Faults(update_crash_rate=update_failures)),
                tokens_file=tokens_file,
            )
        )
    except SimulatorError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        pass


# The command groups, each in its own module.
app.add_typer(devices_app, name="devices")
app.add_typer(pki_app, name="pki")
app.add_typer(commands_app, name="commands")
app.add_typer(events_app, name="events")
app.add_typer(tokens_app, name="tokens")
app.add_typer(rules_app, name="rules")
app.add_typer(firmware_app, name="firmware")
app.add_typer(dead_letters_app, name="dead-letters")
app.command()(identity.pair)
app.command()(identity.unpair)
app.command()(identity.audit)
app.command()(status.status)
app.command()(backup.backup)
app.command()(backup.restore)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
