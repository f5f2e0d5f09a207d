"""A clean stop in cluster mode (issue 15): a SIGTERM'd instance stops taking deliveries,
lets its writer commit, acks everything it committed to RabbitMQ, and only then closes its
channel and connection. Nothing it stored is delivered again to the other instance.

Under load (readings published straight to `amq.topic`, as RabbitMQ's MQTT plugin routes
a device's publish, without `boot`, so the store cannot tell a redelivered reading from a
new one), one instance gets SIGTERM; it must exit 0, and once the survivor has drained the
queue every published reading must be stored exactly once.

The second test is the RabbitMQ half of it: acks written just before `Channel.Close` must
all reach the quorum queue. With RabbitMQ 3.10's default `quorum_commands_soft_limit` (32)
a channel keeps acks beyond 32 pending Raft commands in its own memory and drops them when
it closes (25-527 of 1,000 acked messages came back in 7 of 16 closes); the nodes
`bin/cluster` and these tests start raise it (`rabbit_nodes.QUORUM_COMMANDS_SOFT_LIMIT`).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from types import ModuleType
from typing import Any

import aiormq
import msgspec
import psycopg
import pytest
from pamqp.commands import Basic

from planty_broker.simulator.provision import provision_devices
from planty_broker.transport.amqp import EXCHANGE
from tests.integration.cluster.conftest import restart

pytestmark = pytest.mark.integration

DEVICES = 20
TOTAL = int(os.environ.get("PLANTY_TEST_STOP_READINGS", "15000"))  # published as fast as it goes
CHUNK = 500  # publishes awaiting their confirms at once


async def _publish(url: str, ids: list[str], sent: list[tuple[str, int]]) -> None:
    """TOTAL readings round-robin over the devices, faster than two instances store them:
    a backlog, so each instance holds a full prefetch and commits full batches."""
    conn = await aiormq.connect(url)
    try:
        ch = await conn.channel(publisher_confirms=True)
        for first in range(0, TOTAL, CHUNK):
            batch = [(ids[n % len(ids)], n) for n in range(first, min(first + CHUNK, TOTAL))]
            results = await asyncio.gather(
                *(
                    ch.basic_publish(
                        msgspec.json.encode({"seq": n, "readings": {"n": float(n)}}),
                        exchange=EXCHANGE,
                        routing_key=f"planty.v1.devices.{device}.telemetry",
                        properties=Basic.Properties(delivery_mode=2),
                    )
                    for device, n in batch
                ),
                return_exceptions=True,
            )
            sent.extend(k for k, r in zip(batch, results, strict=True) if isinstance(r, Basic.Ack))
    finally:
        await conn.close()


async def _wait_exit(pid: int) -> int | None:
    """The exit code of our child; None for a set-up started by another process."""
    try:
        _pid, status = await asyncio.to_thread(os.waitpid, pid, 0)
    except ChildProcessError:
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return None
            await asyncio.sleep(0.05)
    return os.waitstatus_to_exitcode(status)


async def _stored(pg: str, ids: list[str]) -> dict[tuple[str, int], int]:
    async with await psycopg.AsyncConnection.connect(pg) as conn:
        cur = await conn.execute(
            "SELECT device_id, seq, count(*) FROM readings WHERE device_id = ANY(%s) GROUP BY 1, 2",
            (ids,),
        )
        return {(d, int(s)): int(n) for d, s, n in await cur.fetchall()}


@pytest.mark.timeout(300)
async def test_sigterm_under_load_stores_each_reading_once(
    cluster: tuple[ModuleType, Any],
) -> None:
    cl, c = cluster
    holder = await cl.leader(c.gateways)
    (victim,) = [g for g in c.gateways if g is not holder]
    tag = os.urandom(3).hex()
    ids = [f"stop-{tag}-{i:02d}" for i in range(DEVICES)]
    await provision_devices(f"{holder.url}/api/v1", c.token, ids, concurrency=4)
    pg = cl._pg_conninfo(c.pg_url)
    sent: list[tuple[str, int]] = []
    publisher = asyncio.create_task(_publish(c.spec.amqp_urls()[0], ids, sent))
    try:
        deadline = time.monotonic() + 60
        before = 0
        while before < TOTAL // 5 and time.monotonic() < deadline:  # in the thick of it
            await asyncio.sleep(0.2)
            before = sum((await _stored(pg, ids)).values())
        assert before > 0, "nothing stored before the stop: no load to stop under"
        t = time.monotonic()
        os.kill(victim.pid, signal.SIGTERM)
        status = await _wait_exit(victim.pid)
        took = time.monotonic() - t
        victim.pid = 0
        await publisher
        assert status in (None, 0), f"the SIGTERM'd instance exited with {status}"
        assert sent, "nothing was published"
        deadline = time.monotonic() + 90
        stored = await _stored(pg, ids)
        while time.monotonic() < deadline and len(stored) < len(set(sent)):
            await asyncio.sleep(1)
            stored = await _stored(pg, ids)
        lost = set(sent) - stored.keys()
        doubled = {k: n for k, n in stored.items() if n > 1}
        print(
            f"clean stop: {len(sent)} published, {sum(stored.values())} stored, "
            f"{len(lost)} lost, {sum(n - 1 for n in doubled.values())} doubled; "
            f"{before} stored before the SIGTERM, stop took {took:.1f} s"
        )
        assert not lost, f"{len(lost)} readings lost: {sorted(lost)[:10]}"
        assert not doubled, f"{len(doubled)} readings stored twice: {sorted(doubled)[:10]}"
    finally:
        publisher.cancel()
        await restart(cl, c, victim)


@pytest.mark.timeout(120)
async def test_acks_written_before_the_channel_closes_all_count(
    cluster: tuple[ModuleType, Any],
) -> None:
    _cl, c = cluster
    url = c.spec.amqp_urls()[0]
    n = 1000
    conn = await aiormq.connect(url)
    consumer = await aiormq.connect(url)
    try:
        ch = await conn.channel(publisher_confirms=True)
        for attempt in range(3):
            queue = f"planty.test.acks-{os.urandom(3).hex()}"
            await ch.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
            await asyncio.gather(*(ch.basic_publish(b"x", routing_key=queue) for _ in range(n)))
            cc = await consumer.channel()
            await cc.basic_qos(prefetch_count=n)
            tags: list[int] = []
            all_in = asyncio.Event()

            async def on_message(
                m: aiormq.abc.DeliveredMessage,
                tags: list[int] = tags,
                all_in: asyncio.Event = all_in,
            ) -> None:
                tags.append(m.delivery_tag or 0)
                if len(tags) == n:
                    all_in.set()

            await cc.basic_consume(queue, on_message, no_ack=False)
            await asyncio.wait_for(all_in.wait(), 30)
            await asyncio.gather(*(cc.basic_ack(t) for t in tags))  # each one written
            await cc.close()  # at once: Channel.Close right behind the acks
            await asyncio.sleep(1.0)
            left = (await ch.queue_declare(queue, passive=True)).message_count
            await ch.queue_delete(queue)
            assert left == 0, f"close {attempt + 1}: {left} of {n} acked messages came back"
    finally:
        await consumer.close()
        await conn.close()
