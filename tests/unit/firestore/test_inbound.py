"""What the server writes, applied through (fake) services: idempotent, with reasons back."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio

from planty_broker.domain.rules.model import Rule, RuleError, parse_rule
from planty_broker.northbound.firestore.buffer import DocBuffer
from planty_broker.northbound.firestore.inbound import BrokerConfig, Inbound
from planty_broker.northbound.firestore.memory_port import MemoryFirestore
from planty_broker.northbound.firestore.model import Paths
from planty_broker.northbound.firestore.port import ChangeKind, DocChange, Snapshot
from planty_broker.services.bus import Bus
from planty_broker.services.registry import DeviceRegistry, UnknownDeviceError
from planty_broker.storage.memory import MemoryStore


@dataclass
class Info:
    rule: Rule
    origin: str


@dataclass
class FakeRules:
    info: dict[str, Info] = field(default_factory=dict)
    puts: list[str] = field(default_factory=list)
    thresholds: dict[str, Mapping[str, Any]] = field(default_factory=dict)

    def rules(self, device_id: str | None = None) -> list[Info]:
        return list(self.info.values())

    async def put_rule(self, rule: Rule | Mapping[str, Any], *, origin: str = "api") -> Info:
        parsed = rule if isinstance(rule, Rule) else parse_rule(rule)
        if parsed.action.startswith("sprinkler"):
            raise RuleError(["device has no actuator 'sprinkler'"])
        self.puts.append(parsed.id)
        self.info[parsed.id] = Info(parsed, origin)
        return self.info[parsed.id]

    async def delete_rule(self, rule_id: str, *, origin: str = "api") -> bool:
        return self.info.pop(rule_id, None) is not None

    async def set_thresholds(
        self, device_id: str, thresholds: Mapping[str, Any], *, origin: str = "api"
    ) -> list[Any]:
        if device_id == "nobody":
            raise UnknownDeviceError(device_id)
        self.thresholds[device_id] = dict(thresholds)
        return []


@dataclass
class Rec:
    id: str


@dataclass
class FakeCommands:
    submitted: list[dict[str, Any]] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)

    async def submit(self, device_id: str, action: str, args: dict[str, Any] | None = None,
                     **kw: Any) -> Rec:  # fmt: skip
        if action == "jump":
            raise ValueError("action 'jump' is not valid; valid: ping, read, pump.on")
        self.submitted.append({"device_id": device_id, "action": action, "args": args, **kw})
        return Rec(kw.get("command_id") or "c-gen")

    async def cancel(self, command_id: str) -> Rec:
        self.cancelled.append(command_id)
        return Rec(command_id)


RULE = {"devices": ["dv1"], "reading": "soil_moisture", "op": "<", "threshold": 0.3,
        "action": "pump.on", "args": {"seconds": 5}}  # fmt: skip


@pytest_asyncio.fixture
async def world() -> AsyncIterator[tuple[Inbound, MemoryFirestore, FakeRules, FakeCommands]]:
    async with MemoryStore() as store:
        registry = DeviceRegistry(store, Bus(), lambda t: "h:" + t)
        await registry.add("dv1")
        fs = MemoryFirestore()
        rules, commands = FakeRules(), FakeCommands()
        inbound = Inbound(
            Paths("b"), DocBuffer(fs, 0.0), registry, BrokerConfig(30, 60),
            commands=commands, rules=rules, wake=lambda: None,
        )  # fmt: skip
        yield inbound, fs, rules, commands


def snap(*changes: tuple[str, str, dict[str, Any] | None], ids: set[str]) -> Snapshot:
    return Snapshot(
        [DocChange(ChangeKind(k), doc_id, data) for k, doc_id, data in changes], frozenset(ids)
    )


async def test_rule_documents_are_applied_once_and_reasons_written_back(world: Any) -> None:
    inbound, fs, rules, _ = world
    await inbound.on_rules(snap(("added", "r1", RULE), ids={"r1"}))
    await inbound.on_rules(snap(("added", "r1", RULE), ids={"r1"}))  # re-attach re-delivery
    echo = {**RULE, "applied": {"ok": True}}
    await inbound.on_rules(snap(("modified", "r1", echo), ids={"r1"}))  # our own write back
    assert rules.puts == ["r1"]
    assert rules.info["r1"].origin == "firestore"
    await inbound._buffer.flush(force=True)
    assert fs.docs["brokers/b/rules/r1"]["applied"]["ok"] is True

    bad = {**RULE, "action": "sprinkler.on"}
    await inbound.on_rules(snap(("added", "r2", bad), ids={"r1", "r2"}))
    await inbound._buffer.flush(force=True)
    applied = fs.docs["brokers/b/rules/r2"]["applied"]
    assert applied["ok"] is False and "sprinkler" in applied["reasons"][0]

    await inbound.on_rules(snap(("modified", "r1", {**RULE, "threshold": 0.2}), ids={"r1", "r2"}))
    assert rules.info["r1"].rule.threshold == 0.2
    await inbound.on_rules(snap(("removed", "r1", None), ids={"r2"}))
    assert "r1" not in rules.info


async def test_rules_deleted_while_not_listening_are_removed(world: Any) -> None:
    inbound, _, rules, _ = world
    rules.info["old"] = Info(parse_rule({**RULE, "id": "old"}), "firestore")
    rules.info["api"] = Info(parse_rule({**RULE, "id": "api"}), "api")
    await inbound.on_rules(snap(ids=set()))  # the first snapshot: an empty collection
    assert set(rules.info) == {"api"}  # only Firestore's own rules follow Firestore


async def test_command_documents_are_submitted_with_their_id(world: Any) -> None:
    inbound, fs, _, commands = world
    doc = {"device_id": "dv1", "action": "pump.on", "args": {"seconds": 3}, "ttl_s": 60}
    await inbound.on_commands(snap(("added", "cmd1", doc), ids={"cmd1"}))
    mirrored = {**doc, "state": "queued"}
    await inbound.on_commands(snap(("modified", "cmd1", mirrored), ids={"cmd1"}))
    assert len(commands.submitted) == 1
    sent = commands.submitted[0]
    assert sent["command_id"] == "cmd1" and sent["origin"] == "firestore"
    assert sent["ttl_s"] == 60 and sent["args"] == {"seconds": 3}

    await inbound.on_commands(snap(("added", "cmd2", {"device_id": "dv1", "action": "jump"}),
                                   ids={"cmd1", "cmd2"}))  # fmt: skip
    await inbound.on_commands(snap(("added", "cmd3", {"action": "ping"}), ids={"cmd3"}))
    await inbound._buffer.flush(force=True)
    assert fs.docs["brokers/b/commands/cmd2"]["state"] == "rejected"
    assert "valid" in fs.docs["brokers/b/commands/cmd2"]["error"]
    assert "device_id" in fs.docs["brokers/b/commands/cmd3"]["error"]

    await inbound.on_commands(snap(("removed", "cmd1", None), ids=set()))
    assert commands.cancelled == ["cmd1"]


async def test_device_thresholds_and_interval(world: Any) -> None:
    inbound, fs, rules, commands = world
    await inbound.on_devices(snap(("added", "dv1", {"online": True}), ids={"dv1"}))
    assert rules.thresholds == {}  # never set from Firestore: API thresholds are left alone
    thr = {"soil_moisture": {"min": 0.3}}
    await inbound.on_devices(snap(("modified", "dv1", {"thresholds": thr}), ids={"dv1"}))
    await inbound.on_devices(snap(("modified", "dv1", {"thresholds": thr, "seq": 4}), ids={"dv1"}))
    assert rules.thresholds == {"dv1": thr}
    await inbound.on_devices(snap(("modified", "dv1", {"read_interval_s": 30}), ids={"dv1"}))
    await inbound.on_devices(snap(("modified", "dv1", {"read_interval_s": 30}), ids={"dv1"}))
    assert [c["action"] for c in commands.submitted] == ["config"]
    assert commands.submitted[0]["args"] == {"interval_s": 30.0}
    assert commands.submitted[0]["origin"] == "firestore-config"  # not mirrored as a doc
    await inbound._buffer.flush(force=True)
    device = fs.docs["brokers/b/devices/dv1"]
    assert device["thresholds_applied"]["ok"] is True
    assert device["read_interval_applied"]["ok"] is True


@pytest.mark.parametrize(
    ("config", "ignored"),
    [
        ({"heartbeat_s": 10, "read_every_s": {"dv1": 60}}, []),
        ({"heartbeat_s": 0, "colour": "green"}, ["heartbeat_s", "colour"]),
    ],
)
async def test_broker_config(world: Any, config: dict[str, Any], ignored: list[str]) -> None:
    inbound, fs, _, _ = world
    await inbound.on_broker(snap(("modified", "b", {"config": config}), ids={"b"}))
    await inbound._buffer.flush(force=True)
    applied = fs.docs["brokers/b"]["config_applied"]
    assert applied["ok"] is (not ignored)
    assert [i.split(":")[0] for i in applied["ignored"]] == ignored
    if not ignored:
        assert inbound.config.heartbeat_s == 10 and inbound.config.read_every_s == {"dv1": 60}
