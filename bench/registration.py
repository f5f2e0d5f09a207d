"""Registration against fleet size, bulk import, and Mosquitto's reload against its password file.

    flock /work/coord/heavy.lock timeout 600 .venv/bin/python bench/registration.py

Phase 1 (one `planty run`, SQLite): the fleet is filled by bulk import to 0, 500, 3,000 and
10,000 devices; at each size, `--posts` single `POST /api/v1/devices` one after another,
three ways: `?wait=false` (answered before Mosquitto takes the token), the default
(answered once Mosquitto accepts it: coalesced reloads, at most one a second), and 16 at
once with the default (the reload is shared). Medians, and the ratio to the empty fleet.

Phase 2: a bulk import of 10,000 devices into an empty gateway (one request), timed until
every token works.

Phase 3 (`--reload-sizes`): Mosquitto alone (the supervisor, no gateway): rewrite the
password file with N entries and reload, until Mosquitto serves the new file (its probe
account logs in): the render + write time, and the whole; no client connected.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from gateway_proc import import_devices, running_gateway
from measure import free_port, machine_line

from planty_broker.mqttserver.atomic import write_atomic
from planty_broker.mqttserver.files import PasswordFile
from planty_broker.mqttserver.layout import MosquittoLayout
from planty_broker.mqttserver.passwords import hash_token
from planty_broker.mqttserver.supervisor import MosquittoSupervisor


async def post_costs(api, prefix: str, n: int, *, wait: bool, parallel: int = 1) -> list[float]:  # type: ignore[no-untyped-def]
    params = {} if wait else {"wait": "false"}
    costs: list[float] = []
    gate = asyncio.Semaphore(parallel)

    async def one(i: int) -> None:
        async with gate:
            t0 = time.perf_counter()
            r = await api.post("/api/v1/devices", json={"id": f"{prefix}-{i:04d}"}, params=params)
            costs.append(time.perf_counter() - t0)
            r.raise_for_status()

    if parallel == 1:
        for i in range(n):
            await one(i)
    else:
        await asyncio.gather(*(one(i) for i in range(n)))
    return costs


async def phase_posts(args: argparse.Namespace, workdir: Path) -> None:
    print("\n## single registrations against fleet size (median ms per POST)")
    print(
        "| devices registered | wait=false | default (waits for the reload) "
        "| 16 in parallel, default: registrations/s |"
    )
    print("|---|---|---|---|")
    base: tuple[float, float, float] | None = None
    async with running_gateway(workdir / "posts") as gw:
        registered = 0
        for size in args.sizes:
            fill = size - registered
            if fill > 0:
                await import_devices(gw.api, [f"fill-{registered + i:06d}" for i in range(fill)])
                registered = size
            quick = await post_costs(gw.api, f"nw{size}", args.quick_posts, wait=False)
            await asyncio.sleep(1.2)  # the coalescer quiet again
            waited = await post_costs(gw.api, f"w{size}", args.posts, wait=True)
            await asyncio.sleep(1.2)
            t0 = time.perf_counter()
            await post_costs(gw.api, f"b{size}", 64, wait=True, parallel=16)
            rate = 64 / (time.perf_counter() - t0)
            registered += args.quick_posts + args.posts + 64
            med = (
                statistics.median(quick) * 1000,
                statistics.median(waited) * 1000,
                rate,
            )
            if base is None:
                base = med
            ratios = [m / b for m, b in zip(med, base, strict=True)]
            print(
                f"| {size:,} | {med[0]:.1f} ({ratios[0]:.2f}x) | {med[1]:.0f} ({ratios[1]:.2f}x) "
                f"| {med[2]:.0f}/s ({ratios[2]:.2f}x) |",
                flush=True,
            )


async def phase_import(args: argparse.Namespace, workdir: Path) -> None:
    print(f"\n## bulk import of {args.import_n:,} devices into an empty gateway")
    async with running_gateway(workdir / "import") as gw:
        ids = [f"imp-{i:06d}" for i in range(args.import_n)]
        t0 = time.perf_counter()
        done = await import_devices(gw.api, ids)
        took = time.perf_counter() - t0
        assert len(done) == args.import_n
        print(f"import: {took:.2f} s ({args.import_n / took:,.0f} devices/s), one reload per batch")
        t0 = time.perf_counter()
        r = await gw.api.post("/api/v1/devices", json={"id": "after-import"})
        r.raise_for_status()
        print(f"the next single POST: {(time.perf_counter() - t0) * 1000:.0f} ms")


async def phase_reload(args: argparse.Namespace) -> None:
    print("\n## Mosquitto reload against password-file size (no client connected)")
    print(
        "| entries | file | first render (all checked) | render + write, one changed "
        "| whole update (until Mosquitto serves it) | of which Mosquitto (whole - render) |"
    )
    print("|---|---|---|---|---|---|")
    one_hash = hash_token("same-for-every-entry")  # format-valid; Mosquitto parses each
    for n in args.reload_sizes:
        data_dir = Path(tempfile.mkdtemp(prefix="planty-reload-", dir="/tmp"))
        data_dir.chmod(0o755)  # noqa: ASYNC240 - set-up, before anything is timed
        layout = MosquittoLayout(
            data_dir=data_dir,
            port=free_port(),
            internal_port=free_port(),
            public_host="localhost",
        )
        users = {f"dev-{i:07d}": one_hash for i in range(n)}

        async def provider(users: dict[str, str] = users) -> dict[str, str]:
            return users

        try:
            async with MosquittoSupervisor(layout, provider) as sup:
                table = PasswordFile()
                t0 = time.perf_counter()
                text = table.render(users, [])
                cold = time.perf_counter() - t0
                size_mb = len(text) / 1e6
                changed = dict(users)
                changed["dev-0000000"] = hash_token("one-changed")
                t0 = time.perf_counter()
                text = table.render(changed, [])
                table.render(changed, [])  # the supervisor renders twice: check, then write
                write_atomic(layout.directory / "passwd.bench", text)
                warm = time.perf_counter() - t0
                times = []
                for k in range(args.reloads):
                    changed = dict(users)
                    changed[f"dev-{k:07d}"] = hash_token(f"rotated-{k}")
                    t0 = time.perf_counter()
                    await sup.update_users(changed)
                    times.append(time.perf_counter() - t0)
                whole = statistics.median(times) * 1000
                print(
                    f"| {n:,} | {size_mb:.1f} MB | {cold * 1000:.0f} ms | {warm * 1000:.0f} ms "
                    f"| {whole:.0f} ms | {whole - warm * 1000:.0f} ms |",
                    flush=True,
                )
        finally:
            shutil.rmtree(data_dir, ignore_errors=True)


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[0, 500, 3000, 10000])
    p.add_argument("--posts", type=int, default=5, help="sequential waiting POSTs per size")
    p.add_argument("--quick-posts", type=int, default=40, help="sequential wait=false POSTs")
    p.add_argument("--import-n", type=int, default=10_000)
    p.add_argument("--reload-sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    p.add_argument("--reloads", type=int, default=5)
    p.add_argument("--skip", nargs="*", default=[], choices=["posts", "import", "reload"])
    args = p.parse_args()
    print(machine_line())
    workdir = Path(tempfile.mkdtemp(prefix="planty-bench-reg-"))
    try:
        if "posts" not in args.skip:
            await phase_posts(args, workdir)
        if "import" not in args.skip:
            await phase_import(args, workdir)
        if "reload" not in args.skip:
            await phase_reload(args)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
