"""How fast the HTTP API answers guesses (wrong pairing codes, unknown API tokens): prints numbers.

A real gateway (supervised Mosquitto, SQLite) on loopback; the load comes from another
process (its own core, when there is one) with plain HTTP/1.1 keep-alive connections
written by hand, so the client costs as little as possible and the number is what the
gateway serves. The pairing limits are lifted for the first figure (an attacker with
unlimited addresses): that is the highest rate of pairing-code guesses the API serves,
the figure docs/security.md turns into a probability.

- pairing, limits lifted: wrong codes answered per second (403)
- pairing, one address over its limit: refusals per second (429)
- unknown bearer token: refusals per second (401, then 429 once the address is over)

Run: .venv/bin/python bench/guess_rate.py [--seconds 8] [--connections 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing as mp
import tempfile
import time
import uuid
from pathlib import Path

from measure import free_port, machine_line

from planty_broker.app import Gateway
from planty_broker.config import load_settings

ADMIN = "bench-admin-" + uuid.uuid4().hex
CODES = 31**8


async def _one(host: str, port: int, request: bytes, until: float, seen: dict[int, int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < until:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            seen[status] = seen.get(status, 0) + 1
    finally:
        writer.close()


async def _load(port: int, request: bytes, seconds: float, connections: int) -> dict[int, int]:
    seen: dict[int, int] = {}
    until = time.perf_counter() + seconds
    await asyncio.gather(
        *(_one("127.0.0.1", port, request, until, seen) for _ in range(connections))
    )
    return seen


def _client(port: int, request: bytes, seconds: float, connections: int, out: mp.Queue) -> None:
    t0 = time.perf_counter()
    seen = asyncio.run(_load(port, request, seconds, connections))
    out.put((seen, time.perf_counter() - t0))


def claim_request(port: int) -> bytes:
    body = json.dumps({"code": "2222-2222", "account_id": "bench"}).encode()
    return (
        f"POST /api/v1/pairing/claim HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def token_request(port: int) -> bytes:
    return (
        f"GET /api/v1/devices HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer pb_read_{'x' * 43}\r\n\r\n"
    ).encode()


async def run_load(
    port: int, request: bytes, seconds: float, connections: int
) -> tuple[dict[int, int], float]:
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()
    proc = ctx.Process(target=_client, args=(port, request, seconds, connections, out))
    proc.start()
    while out.empty():  # the gateway's loop keeps serving meanwhile
        await asyncio.sleep(0.05)
    seen, took = out.get()
    proc.join()
    return seen, took


def settings(data_dir: Path, lifted: bool) -> object:
    pairing = {"max_failures": 10**9, "max_account_failures": 10**9} if lifted else {}
    return load_settings(
        env={},
        overrides={
            "gateway": {"data_dir": str(data_dir), "admin_token": ADMIN},
            "api": {"port": free_port()},
            "mqtt": {
                "port": free_port(),
                "internal_port": free_port(),
                "x509_port": free_port(),
                "public_host": "localhost",
            },
            "pairing": pairing,
            "log": {"level": "error"},
        },
    )


def line(name: str, seen: dict[int, int], took: float) -> float:
    total = sum(seen.values())
    rate = total / took
    codes = ", ".join(f"{k}: {v}" for k, v in sorted(seen.items()))
    print(f"{name:<44} {rate:8.0f} /s   ({total} answers in {took:.1f} s; {codes})")
    return rate


async def main(seconds: float, connections: int) -> None:
    print(machine_line())
    print(f"{connections} keep-alive connections from another process, {seconds:g} s each")
    for lifted in (True, False):
        data_dir = Path(tempfile.mkdtemp(prefix="planty-bench-guess-"))
        async with Gateway(settings(data_dir, lifted), announce=lambda _l: None) as gw:  # type: ignore[arg-type]
            port = int(gw.api_url.rsplit(":", 1)[1])
            if lifted:
                seen, took = await run_load(port, claim_request(port), seconds, connections)
                rate = line("pairing, limits lifted (wrong code)", seen, took)
                for lifetime_s, what in (
                    (600, "one code's 10 minutes"),
                    (86400, "a day"),
                    (365 * 86400, "a year"),
                ):
                    p = rate * lifetime_s / CODES
                    print(f"  chance to hit the code within {what:<22} {p:.1e}")
            else:
                seen, took = await run_load(port, claim_request(port), seconds, connections)
                line("pairing, one address over its limit", seen, took)
                seen, took = await run_load(port, token_request(port), seconds, connections)
                line("unknown API token", seen, took)


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--connections", type=int, default=16)
    args = ap.parse_args()
    asyncio.run(main(args.seconds, args.connections))
