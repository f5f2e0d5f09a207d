"""AuditLog: one `audit` event per action with who and where; a refused write never undoes it."""

from __future__ import annotations

from planty_broker.domain.events import SECURITY_EVENT_TYPES, NewEvent
from planty_broker.errors import StoreError
from planty_broker.services.access.audit import Actor, AuditLog

WHO = Actor("ops", "tok-1", "127.0.0.5")


async def test_an_action_becomes_one_audit_event() -> None:
    written: list[NewEvent] = []

    async def append(e: NewEvent) -> None:
        written.append(e)

    audit = AuditLog(append, clock=lambda: 1234)
    await audit.record(WHO, "device.removed", device_id="d1", reason=None, by_api=True)
    (e,) = written
    assert (e.at_ms, e.type, e.device_id) == (1234, "audit", "d1")
    assert e.data == {
        "action": "device.removed",
        "actor": "ops",
        "actor_token": "tok-1",
        "client": "127.0.0.5",
        "by_api": True,  # details; None ones left out
    }
    assert audit.counts == {"device.removed": 1}
    assert "audit" in SECURITY_EVENT_TYPES  # kept events.security_keep_days


async def test_a_refused_write_is_counted_and_logged_not_raised() -> None:
    async def append(_e: NewEvent) -> None:
        raise StoreError("disk full")

    audit = AuditLog(append)
    await audit.record(WHO, "token.created")
    assert audit.failed == 1
