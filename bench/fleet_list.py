"""The fleet list page by page at 10,000 devices: GET /api/v1/devices and the dashboard's table.

    flock /work/coord/heavy.lock timeout 600 .venv/bin/python bench/fleet_list.py

One `planty run` (SQLite), `--devices` registered by bulk import (none connected: every
device is "never seen", with empty statistics). Then, each timed from outside over HTTP
on loopback (p50 / p95 / max, and bytes of the answer):
- the whole fleet walked with the cursor, 100 a page and 1,000 a page;
- the first page with a search (`q`) and with the presence filter (`state`);
- the dashboard's fleet fragment (50 rows, the headline over the whole fleet).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from gateway_proc import import_devices, running_gateway
from measure import machine_line, pct


def line(what: str, times: list[float], sizes: list[int]) -> None:
    ms = [t * 1000 for t in times]
    print(
        f"| {what} | {len(ms)} | {pct(ms, 0.5):.1f} | {pct(ms, 0.95):.1f} | {max(ms):.1f} "
        f"| {sum(sizes) / len(sizes) / 1000:.0f} kB |",
        flush=True,
    )


async def timed(api: Any, path: str, params: dict[str, Any]) -> tuple[float, int, Any]:
    t0 = time.perf_counter()
    r = await api.get(path, params=params)
    took = time.perf_counter() - t0
    r.raise_for_status()
    body = r.json() if r.headers.get("content-type", "").startswith("application/json") else None
    return took, len(r.content), body


async def walk(api: Any, limit: int) -> tuple[list[float], list[int], int]:
    times, sizes, seen = [], [], 0
    params: dict[str, Any] = {"limit": limit}
    while True:
        took, size, body = await timed(api, "/api/v1/devices", params)
        times.append(took)
        sizes.append(size)
        seen += len(body["devices"])
        if body["next_cursor"] is None:
            return times, sizes, seen
        params["cursor"] = body["next_cursor"]


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, default=10_000)
    p.add_argument("--repeat", type=int, default=20, help="requests per single-page case")
    args = p.parse_args()
    print(machine_line())
    workdir = Path(tempfile.mkdtemp(prefix="planty-bench-fleet-"))
    try:
        async with running_gateway(workdir) as gw:
            api = gw.api
            t0 = time.perf_counter()
            await import_devices(api, [f"pot-{i:06d}" for i in range(args.devices)])
            print(f"{args.devices:,} devices imported in {time.perf_counter() - t0:.1f} s")
            await asyncio.sleep(2)  # the credential bookkeeping of the import settles
            print("\n| request | n | p50 ms | p95 ms | max ms | answer |")
            print("|---|---|---|---|---|---|")
            for limit in (100, 1000):
                times, sizes, seen = await walk(api, limit)
                assert seen == args.devices, seen
                line(f"every page, limit={limit} (whole fleet walked)", times, sizes)
            cases: list[tuple[str, str, dict[str, Any]]] = [
                ("first page, limit=100", "/api/v1/devices", {"limit": 100}),
                ("search q=00042 (11 match)", "/api/v1/devices", {"q": "00042", "limit": 100}),
                ("search q=pot- (all match)", "/api/v1/devices", {"q": "pot-", "limit": 100}),
                ("state=offline, limit=100", "/api/v1/devices", {"state": "offline", "limit": 100}),
                ("state=online (none)", "/api/v1/devices", {"state": "online", "limit": 100}),
                ("dashboard fleet fragment (50 rows)", "/dashboard/fragments/fleet", {}),
                (
                    "dashboard, search q=pot-0099",
                    "/dashboard/fragments/fleet",
                    {"q": "pot-0099", "state": ""},
                ),
            ]
            for what, path, params in cases:
                times, sizes = [], []
                for _ in range(args.repeat):
                    took, size, _ = await timed(api, path, params)
                    times.append(took)
                    sizes.append(size)
                line(what, times, sizes)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
