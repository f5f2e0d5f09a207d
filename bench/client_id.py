"""How long a device that connects with another device's client id stays on the RabbitMQ
cluster (issue 15, docs/scale-out.md "Client ids and logins"), on bin/cluster's set-up.

Three devices are registered: the owner of a client id, a thief, and one that stays away.
1. `--away N` times the thief connects with the away device's client id (a raw MQTT 3.1.1
   client over TLS, the nodes in turn): RabbitMQ accepts it, the lease holder closes it.
   Prints the CONNACK codes and the time from its CONNECT written to the socket closed.
2. `--online M` times it connects with the online owner's client id: RabbitMQ cuts the
   owner (the takeover) and refuses the thief; prints the thief's CONNACK and close time,
   and when the owner (a simulated device, reconnect backoff from 0.5 s) is online again.

    bin/cluster start                # or: a set-up in BIN_CLUSTER_DIR
    .venv/bin/python bench/client_id.py --away 30 --online 5
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

import httpx
from measure import cluster_script, machine_line

from planty_broker.simulator.device import SimDevice
from planty_broker.simulator.profile import DeviceProfile
from planty_broker.simulator.provision import provision_devices

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.integration.cluster.test_client_id import RawSession  # noqa: E402


async def _attempt(
    port: int, ca: str, client_id: str, user: str, token: str
) -> tuple[int | None, float | None]:
    """(CONNACK code or None, seconds from CONNECT to the close or None: not in 60 s)."""
    rc, session = await RawSession.login(port, ca, client_id, user, token)
    try:
        closed = await session.closed_by_server(60)
    finally:
        session.close()
    return rc, session.stayed_s if closed else None


def _spread(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{min(values):.3f}-{max(values):.3f} s (median {statistics.median(values):.3f})"


async def main(away_n: int, online_n: int) -> None:
    cl = cluster_script()
    cluster = cl.Cluster.load(cl.base_dir())
    if cluster is None:
        raise SystemExit(f"no set-up in {cl.base_dir()}: bin/cluster start")
    print(machine_line())
    ports = cluster.spec.mqtts_ports()
    api = cluster.gateways[0].url + "/api/v1"
    tag = uuid.uuid4().hex[:6]
    ids = [f"bcid-{tag}-owner", f"bcid-{tag}-thief", f"bcid-{tag}-away"]
    owner_c, thief_c, away_c = await provision_devices(api, cluster.token, ids, concurrency=3)
    ca = owner_c.ca_pem or ""
    try:
        rows = []
        for i in range(away_n):
            port = ports[i % len(ports)]
            rows.append(
                await _attempt(port, ca, away_c.device_id, thief_c.device_id, thief_c.token)
            )
            await asyncio.sleep(0.3)
        closes = [s for _rc, s in rows if s is not None]
        codes = [rc for rc, _s in rows]
        print(
            f"owner away, {away_n} attempts: CONNACK 0 {codes.count(0)}, none (closed first) "
            f"{codes.count(None)}, other {away_n - codes.count(0) - codes.count(None)}; "
            f"closed {len(closes)}: {_spread(closes)}; still there after 60 s: "
            f"{away_n - len(closes)}"
        )
        profile = DeviceProfile(
            interval_s=0.5, reconnect_min_s=0.5, reconnect_max_s=2.0, keepalive_s=10, ota=False
        )
        owner = SimDevice(replace(owner_c, host="localhost", port=ports[0]), profile, seed=1)
        await owner.start()
        try:
            await owner.wait_online(60)
            refused, back = [], []
            for i in range(online_n):
                await owner.wait_online(60)
                await asyncio.sleep(1.0)
                cut = owner.stats.disconnects
                port = ports[(i + 1) % len(ports)]
                rc, stayed = await _attempt(
                    port, ca, owner_c.device_id, thief_c.device_id, thief_c.token
                )
                t0 = time.monotonic()
                refused.append((rc, stayed))
                while owner.stats.disconnects == cut and time.monotonic() - t0 < 20:
                    await asyncio.sleep(0.05)
                await owner.wait_online(60)
                back.append(time.monotonic() - t0)
            print(
                f"owner online, {online_n} attempts: CONNACK {[rc for rc, _ in refused]}, "
                f"thief closed {_spread([s for _, s in refused if s is not None])}; owner cut "
                f"{owner.stats.disconnects} times, online again {_spread(back)} after"
            )
        finally:
            await owner.stop()
    finally:
        async with httpx.AsyncClient(
            headers={"authorization": f"Bearer {cluster.token}"}, timeout=30
        ) as client:
            for device_id in ids:
                await client.delete(f"{api}/devices/{device_id}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    for noisy in ("gmqtt", "asyncio", "planty_broker.simulator"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--away", type=int, default=30)
    ap.add_argument("--online", type=int, default=5)
    args = ap.parse_args()
    asyncio.run(main(args.away, args.online))
