"""`FirestoreConnector`: the original design's `Broker` class, as a second front door.

The design's names keep their meaning:

- `create_in_database()`  the broker's own document exists (and then its heartbeat);
- `pairing()`             pairing with a user's account through a code document;
- `add_data(path, data)`  queue a debounced, coalesced write of a document;
- `listen_to_broker_data()`  the broker document (config), device documents
                          (thresholds, read interval) and command documents;
- `listen_to_rule_changes()` rule documents -> the rules service;
- `start()` / `stop()`    bring it all up beside the gateway / flush and leave.

It never stops the gateway: a misconfiguration is one log line at start and
the connector stays off; an unreachable Firestore only delays the documents
(store-and-forward through the event log, see `sink`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any, cast

from planty_broker import __version__
from planty_broker.backoff import Backoff
from planty_broker.config import FirestoreSettings
from planty_broker.northbound.firestore import model
from planty_broker.northbound.firestore.bridges import COMMANDS, PAIRING, RULES
from planty_broker.northbound.firestore.buffer import DocBuffer
from planty_broker.northbound.firestore.inbound import BrokerConfig, Inbound
from planty_broker.northbound.firestore.listeners import SupervisedListener
from planty_broker.northbound.firestore.pairing_docs import PairingDocs
from planty_broker.northbound.firestore.port import (
    SERVER_TIME,
    FirestoreConfigError,
    FirestoreError,
    FirestorePort,
    FirestoreUnavailableError,
    SetDoc,
)
from planty_broker.northbound.firestore.sink import EventSink, StoreEvents
from planty_broker.northbound.firestore.tasks import Loops
from planty_broker.ports.store import EventStore
from planty_broker.services.bus import (
    DeviceError,
    DevicesChanged,
    DeviceStatusReceived,
    PresenceChanged,
    ReadingStored,
)
from planty_broker.services.context import Services
from planty_broker.tasks import cancel_and_wait, spawn

log = logging.getLogger(__name__)

GOODBYE_S = 5.0  # a clean stop waits this long at most for the last documents


class FirestoreConnector:
    """Mirrors the broker into Firestore and applies what the server writes there."""

    def __init__(
        self,
        svc: Services,
        settings: FirestoreSettings | None = None,
        port: FirestorePort | None = None,
    ) -> None:
        self.svc = svc
        self.settings = settings or svc.settings.firestore
        self.broker_id = self.settings.broker_id or svc.broker_id
        self.port = port
        self.paths = model.Paths(self.broker_id) if self.broker_id else None
        self.config = BrokerConfig(self.settings.heartbeat_s, self.settings.stats_every_s)
        self.running = False
        self.disabled_reason: str | None = None
        self.reachable: bool | None = None
        self.last_error: str | None = None
        self.outages = 0  # times Firestore became unreachable
        self._kick = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._listeners: list[SupervisedListener] = []
        self._loops_started = False
        self._unsubscribe: list[Any] = []
        self.buffer: DocBuffer | None = None
        self.sink: EventSink | None = None
        self.inbound: Inbound | None = None
        self.pairing_docs: PairingDocs | None = None
        self.loops: Loops | None = None

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> bool:
        """Bring the connector up without ever failing the gateway; False: it stays off."""
        if self.paths is None:
            return self._disable("firestore: no broker id (set gateway.broker_id)")
        try:
            if self.port is None:
                # Importing the Google client takes seconds: off the loop, devices go on.
                self.port = await asyncio.to_thread(_google_port, self.settings)
        except FirestoreConfigError as exc:
            return self._disable(str(exc))
        except Exception as exc:  # a library surprise must not stop the gateway either
            return self._disable(f"firestore: cannot start: {exc}")
        try:
            await self._compose(self.port, self.paths)
        except Exception as exc:  # e.g. the store cannot register the consumer
            await self.port.close()
            return self._disable(f"firestore: cannot start: {exc}")
        self.running = True
        self._tasks.append(spawn("firestore-main", self._main))
        return True

    async def _compose(self, port: FirestorePort, paths: model.Paths) -> None:
        self.buffer = DocBuffer(port, self.settings.debounce_s)
        events = self.svc.events or StoreEvents(cast(EventStore, self.svc.store))
        self.sink = EventSink(
            events,
            port,
            paths,
            self.buffer,
            known_device=lambda d: d in self.svc.registry,
            history_bucket=self.settings.history_bucket,
            keep_days=self.settings.history_keep_days,
        )
        await self.sink.open()
        self.inbound = Inbound(
            paths,
            self.buffer,
            self.svc.registry,
            self.config,
            commands=self.svc.commands,
            rules=self.svc.rules,
            wake=self._kick.set,
        )
        pairing = self.svc.pairing
        if pairing is not None:
            self.pairing_docs = PairingDocs(pairing, port, paths, self.buffer, self._kick.set)
        found = {
            COMMANDS: self.svc.commands,
            RULES: self.svc.rules,
            PAIRING: pairing,
        }
        for missing, service in found.items():
            if service is None:
                log.warning(
                    "firestore: this gateway has no %s service; %s documents are not applied",
                    missing,
                    missing,
                )
        self.loops = Loops(self)
        self._subscribe()

    def _disable(self, reason: str) -> bool:
        self.disabled_reason = reason
        log.error("%s; the gateway runs on without Firestore", reason)
        return False

    async def stop(self) -> None:
        """Stop listening, write the last documents (briefly), mark the broker offline."""
        if not self.running:
            return
        self.running = False
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        await cancel_and_wait(self._tasks)
        for lst in self._listeners:
            await lst.stop()
        if self.pairing_docs is not None:
            await self.pairing_docs.stop()
        if self.disabled_reason is None and self.reachable:
            await self._goodbye()
        if self.port is not None:
            await self.port.close()

    async def _goodbye(self) -> None:
        assert self.buffer is not None
        assert self.sink is not None
        assert self.paths is not None
        self.add_data(self.paths.broker, {"online": False, "stopped_at": SERVER_TIME})
        try:
            async with asyncio.timeout(min(GOODBYE_S, self.settings.timeout_s)):
                await self.sink.pull()
                await self.buffer.flush(force=True)
                await self.sink.confirm()
        except (TimeoutError, FirestoreError) as exc:
            log.warning("firestore: could not write the last documents at stop (%s)", exc)

    async def _main(self) -> None:
        """Bring the documents up, then listen and start the loops. Under the supervisor:
        a run that died is started again, and each step is safe to repeat (a listener or
        the loops already started are not started twice)."""
        backoff = Backoff(1.0, 30.0)
        while True:
            try:
                await self.create_in_database()
                break
            except FirestoreConfigError as exc:
                self._disable(str(exc))
                return
            except FirestoreUnavailableError as exc:
                self._unreachable(exc)
                await backoff.sleep()
        await self.listen_to_broker_data()
        await self.listen_to_rule_changes()
        await self.pairing()
        assert self.loops is not None
        if not self._loops_started:
            self._loops_started = True
            self._tasks += self.loops.start()

    def _unreachable(self, exc: BaseException) -> None:
        if self.reachable is not False:
            self.outages += 1
            assert self.sink is not None
            log.warning(
                "firestore: unreachable (%s); documents wait, event-log cursor kept at %d; "
                "catching up once it is back",
                exc,
                self.sink.confirmed,
            )
        self.reachable = False
        self.last_error = str(exc)
        for lst in self._all_listeners():
            lst.suspend()  # no watch spinning on a server that is gone (listeners.py)

    def _reached(self) -> None:
        if self.reachable is False:
            log.info("firestore: reachable again; catching up")
        self.reachable = True
        self.last_error = None
        for lst in self._all_listeners():
            lst.resume()

    def _all_listeners(self) -> list[SupervisedListener]:
        code = self.pairing_docs.listener if self.pairing_docs is not None else None
        return self._listeners + ([code] if code is not None else [])

    # ------------------------------------------------------------ the design's names

    async def create_in_database(self) -> None:
        """Ensure `brokers/{id}` exists and says who and what this broker is (written now)."""
        assert self.port is not None
        assert self.paths is not None
        existing = await self.port.get(self.paths.broker)
        doc: dict[str, Any] = {
            "broker_id": self.broker_id,
            "name": self.svc.settings.gateway.name,
            "software": {"name": "planty-broker", "version": __version__},
            "online": True,
            "started_at": SERVER_TIME,
            "heartbeat_at": SERVER_TIME,
            "heartbeat_s": self.config.heartbeat_s,
        }
        if self.pairing_docs is not None:
            doc.update(self.pairing_docs.owner_fields())
        if existing is None or not isinstance(existing.get("config"), Mapping):
            doc["config"] = self.config.to_doc()  # defaults the server may edit
        await self.port.commit([SetDoc(self.paths.broker, doc)])
        self._reached()
        log.info(
            "firestore: broker document brokers/%s is up (project %s)",
            self.broker_id,
            self.port.project,
        )
        self.add_data(self.paths.broker, self.devices_summary())
        for device in self.svc.registry.all():
            self.add_data(self.paths.device(device.id), model.device_identity(device))

    async def pairing(self) -> None:
        """Publish the pairing code document (or the owner) and start watching it."""
        if self.pairing_docs is not None:
            await self.pairing_docs.sync()

    def add_data(self, path: str, data: Mapping[str, Any], event_id: int | None = None) -> None:
        """Merge `data` into the document at `path`: written within `debounce_s`, coalesced."""
        assert self.buffer is not None
        self.buffer.set(path, data, event_id)
        self._kick.set()

    async def listen_to_broker_data(self) -> None:
        """Live: the broker document's config, device thresholds/interval, command documents."""
        assert self.inbound is not None
        assert self.paths is not None
        await self._listen(self.paths.broker, self.inbound.on_broker, False, "broker")
        await self._listen(self.paths.devices, self.inbound.on_devices, True, "devices")
        await self._listen(self.paths.commands, self.inbound.on_commands, True, "commands")

    async def listen_to_rule_changes(self) -> None:
        """Live: rule documents -> the rules service."""
        assert self.inbound is not None
        assert self.paths is not None
        await self._listen(self.paths.rules, self.inbound.on_rules, True, "rules")

    async def _listen(self, path: str, handler: Any, collection: bool, name: str) -> None:
        assert self.port is not None
        if any(lst.name == name for lst in self._listeners):
            return  # listening already (a restarted start-up)
        lst = SupervisedListener(self.port, path, handler, collection=collection, name=name)
        if self.reachable is False:
            lst.suspend()
        await lst.start()
        self._listeners.append(lst)

    # ------------------------------------------------------------ helpers

    def devices_summary(self) -> dict[str, Any]:
        return {
            "devices": {
                "total": len(self.svc.registry),
                "online": self.svc.presence.online_count(),
            }
        }

    def describe(self) -> str:
        """One line for `planty run`: where the broker's documents are."""
        where = f"emulator {self.settings.emulator_host}" if self.settings.emulator_host else ""
        project = self.port.project if self.port is not None else "?"
        return f"brokers/{self.broker_id} in project {project} {where}".rstrip()

    def status(self) -> dict[str, Any]:
        """For health pages: is it on, reachable, how far behind."""
        sink, buf = self.sink, self.buffer
        return {
            "enabled": self.running,
            "disabled_reason": self.disabled_reason,
            "reachable": self.reachable,
            "last_error": self.last_error,
            "outages": self.outages,
            "cursor": sink.confirmed if sink is not None else None,
            "folded": sink.folded if sink is not None else None,
            "pending_documents": len(buf) if buf is not None else 0,
            "documents_written": buf.writes if buf is not None else 0,
            "listeners": {lst.name: lst.active for lst in self._listeners},
            "listener_attaches": {lst.name: lst.attaches for lst in self._listeners},
        }

    def _subscribe(self) -> None:
        bus = self.svc.bus

        def kick(_e: object) -> None:
            self._kick.set()

        for event_type in (ReadingStored, PresenceChanged, DeviceError):
            self._unsubscribe.append(bus.subscribe(event_type, kick))
        self._unsubscribe.append(bus.subscribe(DevicesChanged, self._devices_changed))
        self._unsubscribe.append(bus.subscribe(DeviceStatusReceived, self._status))

    def _devices_changed(self, e: DevicesChanged) -> None:
        assert self.paths is not None
        assert self.loops is not None
        if e.change == "added":
            device = self.svc.registry.get(e.device_id)
            if device is not None:
                self.add_data(self.paths.device(e.device_id), model.device_identity(device))
        elif e.change == "removed":
            self.loops.forget_device(e.device_id)

    def _status(self, e: DeviceStatusReceived) -> None:
        assert self.paths is not None
        device = self.svc.registry.get(e.device_id)
        if device is not None and e.online:
            self.add_data(self.paths.device(e.device_id), model.device_identity(device))


def _google_port(settings: FirestoreSettings) -> FirestorePort:
    from planty_broker.northbound.firestore.google_port import GoogleFirestore

    return GoogleFirestore.from_settings(settings)
