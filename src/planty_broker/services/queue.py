"""Compose the two-way message queue (command outbox + event log) into a running gateway."""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

from planty_broker.services.commands.service import CommandService
from planty_broker.services.context import Services
from planty_broker.services.events import EventService


async def start_message_queue(
    svc: Services, stack: AsyncExitStack
) -> tuple[CommandService, EventService]:
    """Start the event log and the outbox (before the MQTT link connects, so acks that
    arrive at once find their commands); set them on `svc` and hook the outbox into
    ingest. Call `commands.attach(link)` once the link exists."""
    store: Any = svc.store  # SqlStore / MemoryStore: also a CommandStore and an EventStore
    events = EventService(store, svc.bus, svc.settings.events)
    await events.start()
    stack.push_async_callback(events.stop)
    commands = CommandService(
        store,
        svc.bus,
        svc.registry,
        svc.presence,
        svc.topics,
        svc.settings.commands,
        stats=svc.stats,
        readings=svc.ingest.writer.write,
    )
    await commands.start()
    stack.push_async_callback(commands.stop)
    svc.ingest.ack_handler = commands.handle_ack
    svc.commands = commands
    svc.events = events
    return commands, events
