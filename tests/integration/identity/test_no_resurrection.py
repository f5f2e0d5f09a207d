"""A revoked or rotated-away token never comes back (issue 13): not through a status message
processed while the credential changes, not through a restart, not through a replayed status.

Real SQLite file. The interleaving is forced, not hoped for: a status arrives exactly while the
credential change is writing the device's row (a gate on the store's `update_device`), and a
property test tries every order of status messages around revocations and rotations.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planty_broker.domain.identity import CredentialState
from planty_broker.ports.memory_authority import MemoryDeviceAuthority
from planty_broker.protocol import Status, Topics
from planty_broker.services.bus import AckReceived, Bus
from planty_broker.services.credentials.events import EventRecorder
from planty_broker.services.credentials.service import CredentialService, NoLiveCredentialError
from planty_broker.services.registry import DeviceRegistry
from planty_broker.storage.sql import SqlStore
from planty_broker.storage.sql_identity import SqlIdentityStore


class GatedStore(SqlStore):
    """The real SQLite store; once the row of a revocation (`token_hash == ""`) is written, the
    write announces itself and waits for the test before it returns (the window in which the
    store thread is done but the caller has not resumed yet)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.gate: asyncio.Event | None = None
        self.reached = asyncio.Event()

    async def update_device(self, device: Any) -> None:
        await super().update_device(device)
        if self.gate is not None and device.token_hash == "":
            self.reached.set()
            await self.gate.wait()

    async def patch_device(self, device_id: str, changes: dict[str, Any]) -> None:
        await super().patch_device(device_id, changes)
        if self.gate is not None and changes.get("token_hash") == "":
            self.reached.set()
            await self.gate.wait()


class Gateway:
    """Registry + credential service over one SQLite file, as the app wires them."""

    def __init__(self, path: Path) -> None:
        self.store = GatedStore(f"sqlite:///{path}")
        self.bus = Bus()
        self.mqtt = MemoryDeviceAuthority()
        self.registry = DeviceRegistry(self.store, self.bus, self.mqtt.hash_secret)
        self.creds = CredentialService(
            SqlIdentityStore(self.store),
            self.registry,
            self.bus,
            EventRecorder(self.bus),
            Topics(),
            authority=self.mqtt,
            overlap_s=60,
        )
        self.registry.credentials_hook = self.mqtt.apply
        self.sent: list[tuple[str, bytes]] = []

        async def publish(topic: str, payload: bytes) -> None:
            self.sent.append((topic, payload))

        self.creds.publish = publish

    async def start(self) -> Gateway:
        await self.store.open()
        await self.registry.load()
        await self.creds.start()
        return self

    async def stop(self) -> None:
        await self.creds.stop()
        await self.store.close()

    async def add(self, device_id: str) -> str:
        _, token = await self.registry.add(device_id)
        async with self.creds._lock:  # as the DevicesChanged task does
            await self.creds._adopt_token(device_id)
        return token

    def live_hashes(self, device_id: str) -> set[str]:
        return {c.secret_hash for c in self.creds.credentials_of(device_id) if c.live}


STATUS = Status(online=True, sensors=("moisture",), actuators=("pump",), fw="1.2.3")


async def test_a_status_during_revocation_does_not_leave_the_old_hash_for_a_restart(
    tmp_path: Path,
) -> None:
    db = tmp_path / "planty.db"
    gw = await Gateway(db).start()
    token = await gw.add("dev-a")
    old_hash = gw.registry.require("dev-a").token_hash
    gw.store.gate = asyncio.Event()
    revoking = asyncio.ensure_future(gw.creds.revoke("dev-a"))
    await asyncio.wait_for(gw.store.reached.wait(), 10)
    # The device's status arrives while the revocation writes the device's row.
    status = asyncio.ensure_future(gw.registry.note_status("dev-a", STATUS))
    await asyncio.sleep(0)
    gw.store.gate.set()
    await asyncio.wait_for(asyncio.gather(revoking, status), 10)
    assert not gw.mqtt.accepts("dev-a", token)
    stored = await gw.store.get_device("dev-a")
    assert stored is not None and stored.token_hash == "", "the old hash was written back"
    assert stored.sensors == ("moisture",) and stored.fw == "1.2.3"
    device = gw.registry.require("dev-a")
    assert device.token_hash == "" and device.sensors == ("moisture",)  # both changes kept
    await gw.stop()

    again = await Gateway(db).start()  # the restart: _adopt_token must not bring it back
    try:
        assert not again.mqtt.accepts("dev-a", token)
        assert old_hash not in again.live_hashes("dev-a")
        assert "dev-a" not in again.creds.desired().devices
    finally:
        await again.stop()


async def test_a_stale_hash_in_the_store_is_never_reactivated_at_start(tmp_path: Path) -> None:
    """A row written back by an older version (or another instance) holds a revoked token's
    hash: the start refuses it, clears it and says so, instead of tracking it as new."""
    db = tmp_path / "planty.db"
    gw = await Gateway(db).start()
    token = await gw.add("dev-b")
    old = gw.registry.require("dev-b")
    await gw.creds.revoke("dev-b")
    await gw.store.update_device(old)  # the lost update, as it used to happen
    await gw.stop()

    again = await Gateway(db).start()
    try:
        assert not again.mqtt.accepts("dev-b", token)
        assert again.live_hashes("dev-b") == set()
        assert again.registry.require("dev-b").token_hash == ""
        stored = await again.store.get_device("dev-b")
        assert stored is not None and stored.token_hash == ""
        states = [c.state for c in await again.creds.history("dev-b")]
        assert states == [CredentialState.REVOKED]
    finally:
        await again.stop()


async def test_a_rotated_away_token_never_comes_back(tmp_path: Path) -> None:
    db = tmp_path / "planty.db"
    gw = await Gateway(db).start()
    old_token = await gw.add("dev-c")
    old = gw.registry.require("dev-c")
    issued = await gw.creds.rotate("dev-c")
    new = issued.credential
    (_topic, _payload), *_ = gw.sent
    await gw.creds.handle_ack(AckReceived("dev-c", f"cred-{new.id}", True, None, None, 0))
    assert not gw.mqtt.accepts("dev-c", old_token) and gw.mqtt.accepts("dev-c", issued.token or "")
    # A status replayed with the record as it was before the switch (an older writer).
    await gw.store.update_device(old)
    await gw.stop()

    again = await Gateway(db).start()
    try:
        assert not again.mqtt.accepts("dev-c", old_token)
        # The device's current token is not it either (the row was overwritten): it must be
        # re-issued, but nothing revoked or retired is live again.
        assert old.token_hash not in again.live_hashes("dev-c")
    finally:
        await again.stop()


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    ops=st.lists(
        st.sampled_from(["status", "status_during_change", "revoke", "rotate", "ack", "restart"]),
        min_size=1,
        max_size=8,
    )
)
def test_property_no_ended_token_is_ever_live_again(
    tmp_path_factory: pytest.TempPathFactory, ops: list[str]
) -> None:
    asyncio.run(_run_ops(tmp_path_factory.mktemp("prop") / "planty.db", ops))


async def _run_ops(db: Path, ops: list[str]) -> None:
    gw = await Gateway(db).start()
    await gw.add("dev-p")
    ended_hashes: set[str] = set()
    pending: list[str] = []
    try:
        for op in ops:
            if op == "status":
                await gw.registry.note_status("dev-p", STATUS)
            elif op == "status_during_change":
                gw.store.gate = asyncio.Event()
                gw.store.reached.clear()
                revoking = asyncio.ensure_future(gw.creds.revoke("dev-p"))
                reached = asyncio.ensure_future(gw.store.reached.wait())
                await asyncio.wait({revoking, reached}, return_when=asyncio.FIRST_COMPLETED)
                reached.cancel()
                status = asyncio.ensure_future(gw.registry.note_status("dev-p", STATUS))
                await asyncio.sleep(0)
                gw.store.gate.set()
                await asyncio.gather(revoking, status)
                gw.store.gate = None
                pending.clear()
            elif op == "revoke":
                await gw.creds.revoke("dev-p")
                pending.clear()
            elif op == "rotate":
                try:
                    issued = await gw.creds.rotate("dev-p")
                except NoLiveCredentialError:  # revoked before: nothing to rotate from
                    continue
                pending = [issued.credential.id]
            elif op == "ack" and pending:
                cred_id = pending.pop()
                await gw.creds.handle_ack(
                    AckReceived("dev-p", f"cred-{cred_id}", True, None, None, 0)
                )
            elif op == "restart":
                await gw.stop()
                gw = await Gateway(db).start()
                pending.clear()
            for c in await gw.creds.history("dev-p"):
                if not c.live and c.secret_hash:
                    ended_hashes.add(c.secret_hash)
            live = gw.live_hashes("dev-p")
            assert not (live & ended_hashes), f"an ended token is live again after {op}"
            current = gw.registry.require("dev-p").token_hash
            assert current not in ended_hashes, f"an ended token is in the registry after {op}"
            stored = await gw.store.get_device("dev-p")
            assert stored is not None and stored.token_hash not in ended_hashes
    finally:
        await gw.stop()
