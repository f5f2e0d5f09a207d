"""The audit trail: every admin action is an `audit` event with who did it and from where.

An action (`token.created`, `device.removed`, `pairing.claimed`, ...; the list is in
docs/events.md) is recorded after it took effect, as one event of type `audit` in the
event log: `data` holds `action`, `actor` (the acting API token's name, "admin" for the
admin token), `actor_token` (its id), `client` (the caller's address) and the action's
own details (ids, names, durations; never a secret). Audit events are security events:
retention keeps them `events.security_keep_days` whatever goes around them.

Recording never undoes an action: when the store refuses the event, the failure is
logged and counted (`failed`), and the action stands.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from planty_broker.domain.events import EventType, NewEvent
from planty_broker.errors import PlantyError

log = logging.getLogger(__name__)

EVENT_TYPE = EventType.AUDIT.value
MAX_ACTIONS = 100  # distinct action names counted (they come from code, this is a backstop)



def _now_ms() -> int:
    return time.time_ns() // 1_000_000


Appender = Callable[[NewEvent], Awaitable[None]]  # durable on return


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acted: the API token's name and id (None: no token, e.g. a pairing code) and
    the client address it came from."""

    name: str
    token_id: str | None
    client: str


class AuditLog:
    """Writes audit events (see the module docstring)."""

    def __init__(self, append: Appender | None, clock: Callable[[], int] = _now_ms) -> None:
        self.append = append
        self._clock = clock
        self.counts: dict[str, int] = {}
        self.failed = 0

    async def record(
        self,
        actor: Actor,
        action: str,
        *,
        device_id: str | None = None,
        **details: Any,
    ) -> None:
        """Record one admin action that has taken effect."""
        if action in self.counts or len(self.counts) < MAX_ACTIONS:
            self.counts[action] = self.counts.get(action, 0) + 1
        data: dict[str, Any] = {
            "action": action,
            "actor": actor.name,
            "actor_token": actor.token_id,
            "client": actor.client,
        }
        data.update({k: v for k, v in details.items() if v is not None})
        if self.append is None:
            log.info("audit: %s by %s from %s (no event log)", action, actor.name, actor.client)
            return
        try:
            await self.append(NewEvent(self._clock(), EVENT_TYPE, device_id, data))
        except (PlantyError, OSError) as exc:
            self.failed += 1
            log.warning("audit event %s by %s not written: %s", action, actor.name, exc)
