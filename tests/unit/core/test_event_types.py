"""Every event type the gateway writes can be asked for by `GET /api/v1/events?types=`."""

from __future__ import annotations

from planty_broker.domain.events import EVENT_TYPES
from planty_broker.domain.rules.records import RULE_EVENT_TYPE


def test_every_written_type_is_queryable() -> None:
    written = {"reading", "presence", "command", "device_error", "credential", RULE_EVENT_TYPE}
    assert written <= set(EVENT_TYPES)
