"""What the connector needs from the broker's services: one brain, two front doors.

The HTTP API and this connector drive the same services; these protocols name
the few calls the connector makes, so a missing service (an older build, a
feature switched off) disables only the documents that need it, with one log
line. The keys name the `Services` fields they come from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from planty_broker.domain.commands import CommandRecord
from planty_broker.domain.events import Consumer, LogBounds
from planty_broker.domain.rules.model import Rule

COMMANDS = "commands"
EVENTS = "events"
PAIRING = "pairing"
RULES = "rules"


class CommandsApi(Protocol):
    """services.commands.CommandService."""

    async def submit(
        self,
        device_id: str,
        action: str,
        args: dict[str, Any] | None = None,
        *,
        ttl_s: float | None = None,
        wait_s: float = 0.0,
        origin: str = "api",
        command_id: str | None = None,
    ) -> CommandRecord: ...

    async def cancel(self, command_id: str) -> CommandRecord: ...


class EventPageLike(Protocol):
    @property
    def events(self) -> Sequence[Any]: ...

    @property
    def missed_through(self) -> int: ...


class EventsApi(Protocol):
    """services.events.EventService: the log, read by cursor, confirmed by name."""

    generation: int

    async def read(
        self, after: int, limit: int, types: Sequence[str] | None = None
    ) -> EventPageLike: ...

    async def wait_new(self, seen: int, timeout_s: float = 1.0) -> None: ...

    async def confirm(self, name: str, acked: int) -> Consumer: ...

    async def consumer(self, name: str) -> Consumer | None: ...

    async def bounds(self) -> LogBounds: ...


class RulesApi(Protocol):
    """services.rules.RulesService: one rule store for the API and Firestore."""

    def rules(self, device_id: str | None = None) -> Sequence[Any]:
        """RuleInfo values: `.rule` and `.origin`."""

    async def put_rule(self, rule: Rule | Mapping[str, Any], *, origin: str = "api") -> Any: ...

    async def delete_rule(self, rule_id: str, *, origin: str = "api") -> bool: ...

    async def set_thresholds(
        self, device_id: str, thresholds: Mapping[str, Any], *, origin: str = "api"
    ) -> Any: ...


class PairingLike(Protocol):
    """services.pairing.PairingService."""

    @property
    def paired(self) -> bool: ...

    @property
    def pairing(self) -> Any: ...

    async def status(self) -> Any: ...

    async def current_code(self) -> Any: ...

    async def claim(self, code: str, account_id: str, client: str = "?") -> Any: ...
