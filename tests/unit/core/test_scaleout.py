"""Scale-out pieces without a cluster: routes a worker forwards, AMQP topic mapping,
RabbitMQ's password hash, and the registry re-read for a device not known yet."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from typing import Any

from planty_broker.mqttserver.rabbit_passwords import (
    hash_secret,
    rabbit_hash,
    to_rabbit,
    verify_secret,
)
from planty_broker.northbound.api.forward import LEADER_ONLY, LEADER_READS
from planty_broker.protocol import Channel, Topics
from planty_broker.scaleout import UnknownDeviceRefresh, control_handler
from planty_broker.transport.amqp import binding_key, routing_key


def test_a_worker_forwards_only_what_the_lease_holder_serves() -> None:
    forwarded = [
        "/api/v1/devices/dev-1/commands",
        "/api/v1/commands/c-1",
        "/api/v1/commands",
        "/api/v1/devices/dev-1/read",
        "/api/v1/rules/r-1/history",
        "/api/v1/devices/dev-1/thresholds",
        "/api/v1/firmware/1.2.0/rollouts",
        "/api/v1/devices/dev-1/rotate",
    ]
    local = [
        "/api/v1/devices",
        "/api/v1/devices/dev-1",
        "/api/v1/devices/dev-1/telemetry",
        "/api/v1/events",
        "/api/v1/stats",
        "/api/v1/pairing",  # shared in the store: any instance answers
        "/api/v1/pairing/claim",
        "/api/v1/provisioning/window",
        "/healthz",
        "/api/v1/devices/dev-1/commandsx",
    ]
    assert all(LEADER_ONLY.match(p) for p in forwarded)
    assert not any(LEADER_ONLY.match(p) for p in local)


def test_presence_and_statistics_are_read_from_the_lease_holder() -> None:
    """GETs of the fleet, a device and the statistics go to the lease holder (it sees every
    message); readings, events and the rest are read from the store by any instance."""
    from_holder = ["/api/v1/devices", "/api/v1/devices/dev-1", "/api/v1/devices/dev-1/stats",
                   "/api/v1/stats"]  # fmt: skip
    local = ["/api/v1/devices/dev-1/telemetry", "/api/v1/events", "/api/v1/pairing",
             "/api/v1/stats/x"]  # fmt: skip
    assert all(LEADER_READS.match(p) for p in from_holder)
    assert not any(LEADER_READS.match(p) for p in local)


def test_topics_map_onto_amq_topic_as_the_mqtt_plugin_does() -> None:
    assert routing_key("planty/v1/devices/dev-1/telemetry") == "planty.v1.devices.dev-1.telemetry"
    assert routing_key("planty/v1/devices/a.b/cmd") == "planty.v1.devices.a/b.cmd"
    assert routing_key(routing_key("x/y.z")) == "x/y.z"
    assert binding_key("planty/v1/devices/+/telemetry") == "planty.v1.devices.*.telemetry"
    assert binding_key("planty/v1/#") == "planty.v1.#"


def test_rabbitmq_hash_is_salt_then_sha256_of_salt_and_password() -> None:
    salt = b"\x01\x02\x03\x04"
    raw = base64.b64decode(rabbit_hash("s3cret", salt))
    assert raw[:4] == salt and raw[4:] == hashlib.sha256(salt + b"s3cret").digest()
    v = hash_secret("tok")
    assert verify_secret("tok", v) and not verify_secret("tok2", v)
    assert to_rabbit(v) is not None
    # another adapter's verifier is never taken for ours
    assert to_rabbit("$7$101$abc$def") is None and not verify_secret("tok", "$7$101$abc$def")
    assert to_rabbit("rmq256$not-base64!") is None


class _Registry:
    def __init__(self) -> None:
        self.devices: set[str] = {"known"}
        self.later: set[str] = set()
        self.refreshes = 0

    def __contains__(self, device_id: object) -> bool:
        return device_id in self.devices

    async def refresh(self) -> int:
        self.refreshes += 1
        self.devices |= self.later
        return len(self.later)


async def test_a_device_registered_elsewhere_is_looked_up_before_its_message_is_judged() -> None:
    registry = _Registry()
    seen: list[tuple[str, bool]] = []

    def handle(topic: str, payload: bytes, retain: bool, ack: Any) -> None:
        device = topic.split("/")[3]
        seen.append((device, device in registry))

    topics = Topics()
    route = UnknownDeviceRefresh(registry, topics, handle)  # type: ignore[arg-type]
    route(topics.device("known", Channel.TELEMETRY), b"{}", False, lambda: None)
    assert seen == [("known", True)] and registry.refreshes == 0
    registry.later = {"new-1"}
    for _ in range(3):  # three messages wait on one re-read
        route(topics.device("new-1", Channel.TELEMETRY), b"{}", False, lambda: None)
    route("not/a/planty/topic", b"", False, lambda: None)  # handed on at once
    await asyncio.sleep(0.05)
    assert seen[1:] == [("topic", False), ("new-1", True), ("new-1", True), ("new-1", True)]
    assert registry.refreshes == 1


def test_the_control_queue_sends_telemetry_copies_to_observe_and_the_rest_to_handle() -> None:
    topics = Topics()
    got: list[str] = []
    route = control_handler(
        topics, lambda t, *_: got.append("handle " + t), lambda t, *_: got.append("observe " + t)
    )
    route("planty/v1/devices/d-1/telemetry", b"", False, lambda: None)
    route("planty/v1/devices/d-1/ack", b"", False, lambda: None)
    assert got == [
        "observe planty/v1/devices/d-1/telemetry",
        "handle planty/v1/devices/d-1/ack",
    ]


class FakeLease:
    """The PostgreSQL lease's shape: acquire fails once, then holds until `gone` is set."""

    def __init__(self) -> None:
        self.acquires = 0
        self.releases = 0
        self.gone = asyncio.Event()

    async def acquire(self) -> None:
        self.acquires += 1
        if self.acquires == 1:
            raise RuntimeError("lease database glitch")

    async def lost(self) -> None:
        await self.gone.wait()

    async def release(self) -> None:
        self.releases += 1


async def test_the_lease_loop_is_supervised_and_never_promotes_twice() -> None:
    """A crash before holding the lease: restarted, tries again. Killed while holding: it
    goes back to watching the lease; the single-owner services are started once only."""
    from planty_broker.config import Settings, StoreSettings
    from planty_broker.scaleout import Leadership
    from planty_broker.tasks import Supervisor, use_supervisor

    async def wait_for(condition: Any) -> None:
        for _ in range(1000):
            if condition():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("condition not met")

    async def body() -> None:  # in a task: the supervisor set here stays in its context
        sup = Supervisor(initial_s=0.01, max_s=0.05)
        use_supervisor(sup)
        promoted: list[int] = []
        lost: list[int] = []

        async def promote() -> None:
            promoted.append(1)

        lease = FakeLease()
        settings = Settings(store=StoreSettings(url="postgresql://localhost/planty"))
        leadership = Leadership(settings, "t", promote, lambda: lost.append(1))
        leadership._lease = lease  # type: ignore[assignment]
        try:
            leadership.start()
            await wait_for(lambda: leadership.held)
            assert promoted == [1]
            assert lease.acquires == 2 and lease.releases == 1  # the failed try, restarted
            assert sup.loops["cluster-lease"].restarts == 1
            assert sup.kill("cluster-lease")
            state = sup.loops["cluster-lease"]
            await wait_for(lambda: state.restarts == 2 and state.running)
            assert promoted == [1] and lease.acquires == 2 and leadership.held
            lease.gone.set()
            await wait_for(lambda: bool(lost))
            assert lost == [1] and not leadership.held
        finally:
            await leadership.stop()

    await asyncio.create_task(body())
