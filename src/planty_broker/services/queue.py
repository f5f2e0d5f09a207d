"""Compose the two-way message queue (command outbox + event log) into a running gateway."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from typing import Any

import msgspec

from planty_broker.domain.commands import CommandChange
from planty_broker.protocol import Channel
from planty_broker.services.commands.service import CommandService
from planty_broker.services.context import Services
from planty_broker.services.events import EventService
from planty_broker.services.firmware.service import FirmwareService


async def start_message_queue(
    svc: Services, stack: AsyncExitStack
) -> tuple[CommandService, EventService]:
    """Start the event log and the outbox (before the MQTT link connects, so acks that
    arrive at once find their commands); set them on `svc` and hook the outbox into
    ingest. Call `commands.attach(link)` once the link exists."""
    events = await start_events(svc, stack)
    commands = await start_commands(svc, stack)
    return commands, events


async def start_events(svc: Services, stack: AsyncExitStack) -> EventService:
    """The event log (every instance of a scale-out deployment runs one)."""
    store: Any = svc.store  # SqlStore / MemoryStore: also an EventStore
    events = EventService(store, svc.bus, svc.settings.events)
    dead = svc.dead_letters
    if dead is not None:  # not reported as a device error: that would be another event
        events.writer.set_dead_letter(dead.writer_sink(lambda e: f"events/{e.type}", report=False))
    await events.start()
    stack.push_async_callback(events.stop)
    svc.events = events
    return events


async def start_commands(
    svc: Services, stack: AsyncExitStack, lease_owner: str | None = None
) -> CommandService:
    """The command outbox (in a scale-out deployment: on the lease holder only, each send
    under a send lease in the store named `lease_owner`)."""
    store: Any = svc.store  # SqlStore / MemoryStore: also a CommandStore
    commands = CommandService(
        store,
        svc.bus,
        svc.registry,
        svc.presence,
        svc.topics,
        svc.settings.commands,
        stats=svc.stats,
        readings=svc.ingest.writer.write,
        lease_owner=lease_owner,
    )
    dead = svc.dead_letters
    if dead is not None:

        async def dead_changes(changes: Sequence[CommandChange], exc: Exception) -> None:
            device_id = changes[0].record.device_id
            try:
                payload = msgspec.json.encode(list(changes))
            except (TypeError, UnicodeError):
                payload = repr(list(changes)).encode("utf-8", "backslashreplace")
            await dead.record(device_id, svc.topics.device(device_id, Channel.CMD), payload, exc)

        commands.outbox.journal.set_dead_letter(dead_changes)
    await commands.start()
    stack.push_async_callback(commands.stop)
    svc.ingest.ack_handler = commands.handle_ack
    svc.ingest.ack_fast = commands.ack_now  # only where the command service runs
    svc.commands = commands
    return commands


async def start_firmware(
    svc: Services, commands: CommandService, stack: AsyncExitStack
) -> FirmwareService:
    """Start the firmware updates; their publishes share the commands' token bucket, so an
    update is paced with everything else the broker sends to devices."""
    bucket = commands.outbox.dispatcher.bucket

    async def pace() -> None:
        while True:  # the bucket is shared: another sender may take the token first
            if bucket.take(time.monotonic()):
                return
            await asyncio.sleep(max(bucket.wait_s(time.monotonic()), 0.001))

    store: Any = svc.store  # SqlStore / MemoryStore: also a FirmwareStore
    firmware = FirmwareService(
        store,
        svc.bus,
        svc.registry,
        svc.presence,
        svc.topics,
        svc.settings.firmware,
        pace=pace,
    )
    await firmware.start()
    stack.push_async_callback(firmware.stop)
    svc.ingest.ota_handler = firmware.handle_ota_ack
    svc.firmware = firmware
    return firmware
