"""`planty firmware ...`: device app releases and staged rollouts from the terminal.

Talks to the running gateway over its HTTP API, like every command but `run`.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from planty_broker.cli.client import (
    EXIT_NOT_DONE,
    ConfigOpt,
    DataDirOpt,
    UrlOpt,
    ago,
    client,
    console,
    fail,
)
from planty_broker.cli.tables import Column, cell, fit_table
from planty_broker.protocol import OTA_PROTECTED_FILES
from planty_broker.text import plural

firmware_app = typer.Typer(
    help="Update the device app over the air: add a release, roll it out wave by wave."
)

JsonOpt = Annotated[bool, typer.Option("--json", help="print the API's JSON")]
APP_SUFFIXES = (".py", ".mpy", ".json", ".bin", ".txt")
STATE_COLOR = {
    "pending": "dim",
    "sending": "cyan",
    "applied": "green",
    "failed": "red",
    "rolled_back": "yellow",
    "running": "cyan",
    "paused": "yellow",
    "halted": "red",
    "aborted": "red",
    "done": "green",
}


def release_files(folder: Path) -> dict[str, bytes]:
    """The app files of a device folder: its .py/.mpy (and data) files, never the boot guard
    or secrets (the device refuses those over the air), nor a .mpy's own .py twice."""
    if not folder.is_dir():
        fail(f"{folder} is not a folder: give the folder with the device app (e.g. ./device)")
    names = {p.name: p for p in sorted(folder.iterdir()) if p.is_file()}
    out: dict[str, bytes] = {}
    for name, path in names.items():
        if name in OTA_PROTECTED_FILES or not name.endswith(APP_SUFFIXES) or name.startswith("."):
            continue
        if name.endswith(".py") and name[:-3] + ".mpy" in names:
            continue  # the compiled one goes, as on the board
        out[name] = path.read_bytes()
    if not out:
        fail(f"no app files (.py, .mpy) in {folder}")
    return out


def _colored(state: str) -> Text:
    return cell(state, STATE_COLOR.get(state, ""))


@firmware_app.command("add")
def add(
    folder: Annotated[Path, typer.Argument(help="the device app folder, e.g. ./device")],
    version: Annotated[str, typer.Option("--version", help="e.g. 1.3.0")],
    notes: Annotated[str, typer.Option(help="what changed")] = "",
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    url: UrlOpt = None,
) -> None:
    """Store a release (immutable): every app file with its sha256, as the manifest."""
    files = release_files(folder)
    body = {
        "version": version,
        "notes": notes,
        "files": [
            {"name": n, "content_b64": base64.b64encode(b).decode()} for n, b in files.items()
        ],
    }
    r = client(config, data_dir, url).call("POST", "/firmware", json=body)
    skipped = sorted(n for n in OTA_PROTECTED_FILES if (folder / n).exists())
    console.print(
        f"release {r['version']}: {plural(len(r['files']), 'file')}, {r['size']:,} bytes"
        + (f" (left out, never sent over the air: {', '.join(skipped)})" if skipped else "")
    )
    for f in r["files"]:
        console.print(f"  {f['name']:<24} {f['size']:>8,}  sha256 {f['sha256'][:16]}...")


@firmware_app.command("list")
def list_releases(
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    url: UrlOpt = None,
) -> None:
    """Every release, newest first."""
    data = client(config, data_dir, url).call("GET", "/firmware")
    if as_json:
        console.print_json(json.dumps(data))
        return
    columns = [
        Column("version"),
        Column("files", 3, "right"),
        Column("bytes", 2, "right"),
        Column("added", 1),
        Column("notes", 4, shrink=10),
    ]
    rows = [
        [r["version"], str(len(r["files"])), f"{r['size']:,}", ago(r["created_at"]), r["notes"]]
        for r in data["releases"]
    ]
    n = len(data["releases"])
    console.print(fit_table(columns, rows, console, title=f"{n} release{'' if n == 1 else 's'}"))


@firmware_app.command("rollout")
def rollout(
    version: Annotated[str, typer.Argument(help="the release to send")],
    devices: Annotated[
        str | None, typer.Option("--devices", help="device ids, comma-separated")
    ] = None,
    percent: Annotated[float | None, typer.Option(help="a share of the fleet, e.g. 10")] = None,
    everything: Annotated[bool, typer.Option("--all", help="every registered device")] = False,
    first_wave: Annotated[
        int | None, typer.Option(help="devices in the first wave (then doubling)")
    ] = None,
    threshold: Annotated[
        float | None, typer.Option(help="failed share of a wave that halts (0.2 = 20 %)")
    ] = None,
    wait: Annotated[
        bool,
        typer.Option(help="follow it until it ends (exit 0 done, 3 halted or aborted)"),
    ] = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    url: UrlOpt = None,
) -> None:
    """Start a staged rollout: `--devices a,b | --percent 10 | --all`."""
    body: dict[str, Any] = {}
    if devices:
        body["devices"] = [d.strip() for d in devices.split(",") if d.strip()]
    if percent is not None:
        body["percent"] = percent
    if everything:
        body["all"] = True
    if first_wave is not None:
        body["first_wave"] = first_wave
    if threshold is not None:
        body["threshold"] = threshold
    api = client(config, data_dir, url)
    r = api.call("POST", f"/firmware/{version}/rollouts", json=body)
    console.print(
        f"rollout {r['id']}: {version} to {plural(len(r['targets']), 'device')}, "
        f"waves {r['wave_sizes']}, "
        f"halts above {r['threshold']:.0%} failed per wave"
    )
    if wait:
        _follow(api, r["id"])


def _follow(api: Any, rollout_id: int) -> None:
    last = ""
    while True:
        r = api.call("GET", f"/rollouts/{rollout_id}")
        line = Text.assemble(
            _colored(r["state"]),
            f" wave {r['wave']}/{len(r['wave_sizes'])} "
            + ", ".join(f"{k} {v}" for k, v in sorted(r["counts"].items())),
        )
        if line.plain != last:
            console.print(line)
            last = line.plain
        if r["state"] in ("done", "aborted", "halted"):
            if r["reason"]:
                console.print(f"  {r['reason']}")
            if r["state"] != "done":
                raise typer.Exit(EXIT_NOT_DONE)
            return
        time.sleep(1)


@firmware_app.command("status")
def status(
    rollout_id: Annotated[int | None, typer.Argument(help="a rollout (default: the list)")] = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    url: UrlOpt = None,
) -> None:
    """Rollouts, or one rollout with every device's state and reason."""
    api = client(config, data_dir, url)
    if rollout_id is None:
        data = api.call("GET", "/rollouts")
        if as_json:
            console.print_json(json.dumps(data))
            return
        columns = [
            Column("id", 0, "right"),
            Column("version"),
            Column("state"),
            Column("wave", 2),
            Column("started", 3),
            Column("reason", 1, shrink=10),
        ]
        rows = [
            [
                str(r["id"]),
                r["version"],
                _colored(r["state"]),
                f"{r['wave']}/{len(r['wave_sizes'])}",
                ago(r["created_at"]),
                r["reason"] or "",
            ]
            for r in data["rollouts"]
        ]
        console.print(fit_table(columns, rows, console, title="rollouts"))
        return
    r = api.call("GET", f"/rollouts/{rollout_id}")
    if as_json:
        console.print_json(json.dumps(r))
        return
    columns = [
        Column("device"),
        Column("wave", 3, "right"),
        Column("state"),
        Column("progress", 2, "right"),
        Column("reason", 1, shrink=10),
        Column("changed", 4),
    ]
    rows = []
    for d in r["targets"]:
        prog = ""
        if "bytes_confirmed" in d:
            prog = f"{d['bytes_confirmed'] * 100 // max(1, d['bytes_total'])} %"
        rows.append(
            [
                d["device_id"],
                str(d["wave"]),
                _colored(d["state"]),
                prog,
                d["reason"] or "",
                ago(d["updated_at"]),
            ]
        )
    title = f"rollout {r['id']} of {r['version']}: {r['state']} {r['reason'] or ''}".rstrip()
    console.print(fit_table(columns, rows, console, title=title))


def _admin(action: str, rollout_id: int, config: Any, data_dir: Any, url: Any) -> None:
    r = client(config, data_dir, url).call("POST", f"/rollouts/{rollout_id}/{action}")
    console.print(Text.assemble(f"rollout {r['id']}: ", _colored(r["state"])))


@firmware_app.command("pause")
def pause(
    rollout_id: int, config: ConfigOpt = None, data_dir: DataDirOpt = None, url: UrlOpt = None
) -> None:
    """No new device starts; transfers under way finish."""
    _admin("pause", rollout_id, config, data_dir, url)


@firmware_app.command("resume")
def resume(
    rollout_id: int, config: ConfigOpt = None, data_dir: DataDirOpt = None, url: UrlOpt = None
) -> None:
    """Go on after a pause, or after the rollout halted itself."""
    _admin("resume", rollout_id, config, data_dir, url)


@firmware_app.command("abort")
def abort(
    rollout_id: int, config: ConfigOpt = None, data_dir: DataDirOpt = None, url: UrlOpt = None
) -> None:
    """Stop for good; devices not yet switched keep their version."""
    _admin("abort", rollout_id, config, data_dir, url)
