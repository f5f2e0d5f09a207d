"""Soak (issue 12): months of unattended running, squeezed into minutes.

A fleet of simulated devices (the simulator's own `Fleet`, over TLS to the gateway's
supervised Mosquitto) sends telemetry every `--interval` seconds for `--minutes`. Every
minute 10 % of the devices (`--reconnect-share`) lose their connection and come back;
every `--kill-every` minutes the gateway is killed with kill -9 and so is its Mosquitto,
then the gateway is started again on the same data folder (it starts Mosquitto again
from Mosquitto's persistence file). Reported:

- the gateway's RSS every minute, and its slope after `--warmup` minutes of each gateway
  process (one line per process, and the pooled slope with one intercept per process);
- store growth per device-day (SQLite pages in use, start to end, over the device-days
  simulated; readings with their events, presence, statistics);
- readings acknowledged to devices (PUBACK from the MQTT server, per device, boot and
  seq) against readings stored: lost (acknowledged, never stored), doubled (rows of the
  same device, boot and seq, or of the same device, seq and time), and stored without an
  acknowledgement (the PUBACK was lost at a kill; the device would re-send).

    .venv/bin/python bench/soak.py --devices 1000 --minutes 30 --kill-every 10
    .venv/bin/python bench/soak.py --devices 20 --minutes 2 --kill-every 1 --interval 2

Exit code 0 when it ran (whatever the numbers); 1 if it could not.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from measure import free_port, machine_line

from planty_broker.mqttserver.process import mosquitto_directory
from planty_broker.simulator.fleet import Fleet
from planty_broker.simulator.profile import DeviceProfile

MIB = 1024 * 1024


def rss_bytes(pid: int) -> int | None:
    """The resident set of a process (VmRSS), None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def slope_per_hour(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) points, per hour; None with < 2 points."""
    if len(points) < 2:
        return None
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in points) / sxx * 3600


def pooled_slope_per_hour(segments: list[list[tuple[float, float]]]) -> float | None:
    """One slope across segments, each with its own intercept (restarts reset the RSS)."""
    sxy = sxx = 0.0
    for pts in segments:
        if len(pts) < 2:
            continue
        mx = sum(x for x, _ in pts) / len(pts)
        my = sum(y for _, y in pts) / len(pts)
        sxx += sum((x - mx) ** 2 for x, _ in pts)
        sxy += sum((x - mx) * (y - my) for x, y in pts)
    return sxy / sxx * 3600 if sxx else None


class Gateway:
    """`planty run` on fixed ports and one data folder: started, killed, started again."""

    def __init__(self, data: Path, log_path: Path) -> None:
        self.data = data
        self.log_path = log_path
        self.token = "soak-admin-" + os.urandom(8).hex()
        self.api_port, self.mqtt_port = free_port(), free_port()
        self.env = {
            **os.environ,
            "PLANTY_ADMIN_TOKEN": self.token,
            "PLANTY_MQTT_INTERNAL_PORT": str(free_port()),
            "PLANTY_MQTT_X509_PORT": str(free_port()),
            "PLANTY_MQTT_PUBLIC_HOST": "localhost",
            "PLANTY_LOG_LEVEL": "warning",
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.api_url = f"http://127.0.0.1:{self.api_port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def mosquitto_pid(self) -> int | None:
        try:
            return int((mosquitto_directory(self.data) / "mosquitto.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    async def start(self, timeout_s: float = 120) -> float:
        """Start and wait until healthy with its MQTT link up; returns the seconds it took."""
        t0 = time.monotonic()
        planty = Path(sys.executable).parent / "planty"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    str(planty),
                    "run",
                    "--data-dir",
                    str(self.data),
                    "--api-port",
                    str(self.api_port),
                    "--mqtt-port",
                    str(self.mqtt_port),
                ],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        async with httpx.AsyncClient(base_url=self.api_url, timeout=2) as api:
            while time.monotonic() - t0 < timeout_s:
                if self.proc.poll() is not None:
                    break
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    if (await api.get("/healthz")).json().get("mqtt_connected"):
                        return time.monotonic() - t0
                await asyncio.sleep(0.1)
        tail = self.log_path.read_text(errors="replace")[-3000:]
        raise SystemExit(f"gateway did not start:\n{tail}")

    def kill9_both(self) -> None:
        """kill -9 the gateway, then its Mosquitto (it outlives the gateway otherwise)."""
        mosquitto = self.mosquitto_pid()
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
        if mosquitto is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(mosquitto, signal.SIGKILL)
            for _ in range(100):  # until it is gone (not our child: poll)
                if not Path(f"/proc/{mosquitto}").exists():
                    break
                time.sleep(0.02)

    def stop(self) -> None:
        """A clean stop (SIGTERM); the gateway stops its Mosquitto."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def db_pages_in_use(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        page = c.execute("PRAGMA page_size").fetchone()[0]
        pages = c.execute("PRAGMA page_count").fetchone()[0]
        free = c.execute("PRAGMA freelist_count").fetchone()[0]
    return int((pages - free) * page)


def stored_count(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as c:
        return int(c.execute("SELECT count(*) FROM readings").fetchone()[0])


@dataclass
class Samples:
    """RSS samples per gateway process: (seconds since that process started, bytes)."""

    segments: list[list[tuple[float, float]]] = field(default_factory=list)
    started: float = 0.0

    def new_process(self) -> None:
        self.segments.append([])
        self.started = time.monotonic()

    def add(self, rss: int) -> None:
        self.segments[-1].append((time.monotonic() - self.started, float(rss)))


async def run(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("gmqtt").setLevel(logging.ERROR)  # the kills drop links on purpose
    workdir = Path(args.workdir)
    data = workdir / "data"
    db = data / "planty.sqlite3"
    gw = Gateway(data, workdir / "gateway.log")
    rng = random.Random(args.seed)
    print(machine_line())
    print(
        f"soak: {args.devices} devices over TLS, telemetry every {args.interval:g} s, "
        f"{args.minutes:g} min, {args.reconnect_share:.0%} reconnect each minute, "
        f"kill -9 of gateway and Mosquitto every {args.kill_every:g} min; data in {workdir}",
        flush=True,
    )
    await gw.start()
    profile = DeviceProfile(
        interval_s=args.interval,
        track_acks=True,
        ota=False,
        reconnect_min_s=0.5,
        reconnect_max_s=args.reconnect_max,
        keepalive_s=30,
    )
    fleet = await Fleet.provision(
        gw.api_url,
        gw.token,
        args.devices,
        prefix="soak",
        profile=profile,
        seed=args.seed,
        wait_online_s=120,
        connect_concurrency=32,
    )
    size_start = db_pages_in_use(db)
    samples = Samples()
    samples.new_process()
    kills = 0
    await fleet.start()
    print(f"fleet online: {fleet.online}/{len(fleet)}", flush=True)
    t_start = time.monotonic()
    next_minute = 1
    next_kill = args.kill_every
    end_s = args.minutes * 60
    try:
        while (elapsed := time.monotonic() - t_start) < end_s:
            rss = rss_bytes(gw.pid)
            if rss is not None:
                samples.add(rss)
            if elapsed >= next_minute * 60:
                acked = sum(len(d.acked_seqs) for d in fleet.devices)
                print(
                    f"minute {next_minute:3d}: gateway pid {gw.pid} RSS "
                    f"{(rss or 0) / MIB:7.1f} MiB | online {fleet.online}/{len(fleet)} | "
                    f"acked {acked:,} | stored {stored_count(db):,}",
                    flush=True,
                )
                for dev in rng.sample(fleet.devices, round(len(fleet) * args.reconnect_share)):
                    dev.drop_connection()
                next_minute += 1
            if args.kill_every and elapsed >= next_kill * 60 and elapsed < end_s - 5:
                gw.kill9_both()
                kills += 1
                took = await gw.start()
                samples.new_process()
                print(
                    f"  kill -9 #{kills} at {elapsed / 60:.1f} min: gateway and Mosquitto "
                    f"back in {took:.1f} s (new pid {gw.pid})",
                    flush=True,
                )
                next_kill += args.kill_every
            await asyncio.sleep(min(args.sample_s, max(0.05, end_s - elapsed)))
    finally:
        await fleet.stop()
    acked_set = {(d.device_id, d.boot, seq) for d in fleet.devices for seq in d.acked_seqs}
    acked_total = sum(len(d.acked_seqs) for d in fleet.devices)
    # Let the gateway store its backlog: until every acknowledged reading is stored or the
    # count stops moving for 15 s.
    last, still_since = -1, time.monotonic()
    while time.monotonic() - still_since < 15:
        n = stored_count(db)
        if n != last:
            last, still_since = n, time.monotonic()
        if n >= len(acked_set):
            break
        await asyncio.sleep(0.5)
    gw.stop()
    size_end = db_pages_in_use(db)
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        rows = c.execute("SELECT device_id, boot, seq, ts_ms FROM readings").fetchall()
    stored_keys = [(d, b, s) for d, b, s, _ in rows]
    stored_set = set(stored_keys)
    doubled = len(stored_keys) - len(stored_set)
    doubled_by_time = len(rows) - len({(d, s, t) for d, _, s, t in rows})
    lost = acked_set - stored_set
    unacked_stored = stored_set - acked_set
    minutes = (time.monotonic() - t_start) / 60

    print()
    print("gateway RSS (MiB) per process, after warm-up:")
    warm = args.warmup * 60
    for i, seg in enumerate(samples.segments):
        after = [(x, y / MIB) for x, y in seg if x >= warm]
        slope = slope_per_hour(after)
        first = seg[0][1] / MIB if seg else float("nan")
        last_rss = seg[-1][1] / MIB if seg else float("nan")
        print(
            f"  process {i + 1}: {len(seg)} samples over {seg[-1][0] / 60 if seg else 0:.1f} min,"
            f" {first:.1f} -> {last_rss:.1f} MiB, slope after {args.warmup:g} min: "
            + (f"{slope:+.2f} MiB/h" if slope is not None else "n/a (too short)")
        )
    pooled = pooled_slope_per_hour(
        [[(x, y / MIB) for x, y in seg if x >= warm] for seg in samples.segments]
    )
    print(
        "  pooled slope (one intercept per process): "
        + (f"{pooled:+.2f} MiB/h" if pooled is not None else "n/a")
        + " (aim: < 1 MiB/h)"
    )
    device_days = args.devices * minutes / 1440
    growth = size_end - size_start
    print(
        f"store growth: {growth / MIB:.1f} MiB over {minutes:.1f} min = "
        f"{growth / device_days / MIB:.1f} MiB per device-day at one reading every "
        f"{args.interval:g} s ({growth / max(1, len(stored_set)):.0f} B per stored reading, "
        "with its event, presence and statistics)"
    )
    print(
        f"readings: {acked_total:,} acknowledged to devices, {len(rows):,} stored; "
        f"lost {len(lost):,}, doubled {doubled:,} (same device, boot, seq) / "
        f"{doubled_by_time:,} (same device, seq, time); stored without a device PUBACK "
        f"{len(unacked_stored):,}; kills {kills}"
    )
    if lost:
        sample = sorted(lost)[:10]
        print(f"  lost (first 10): {sample}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--minutes", type=float, default=30)
    p.add_argument("--kill-every", type=float, default=10, help="minutes; 0: never")
    p.add_argument("--interval", type=float, default=5, help="seconds between telemetry")
    p.add_argument("--warmup", type=float, default=3, help="minutes of each process not sloped")
    p.add_argument("--reconnect-share", type=float, default=0.1)
    p.add_argument("--reconnect-max", type=float, default=10, help="device backoff cap, s")
    p.add_argument("--sample-s", type=float, default=10, help="RSS sampling period")
    p.add_argument("--seed", type=int, default=12)
    p.add_argument("--workdir", default="", help="keep data and logs here (default: a tmp dir)")
    args = p.parse_args()
    args.workdir = args.workdir or tempfile.mkdtemp(prefix="planty-soak-")
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
