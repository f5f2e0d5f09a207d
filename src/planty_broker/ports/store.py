"""The storage port: what the services need from a database, nothing more.

Adapters: `storage.sqlite` (embedded default, one file in the data folder),
`storage.memory` (fast fake for unit tests). Every write method returns only
once the data is durable (committed), so callers may acknowledge upstream.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from planty_broker.domain.models import DeviceRecord, PresenceTransition, Reading
from planty_broker.errors import PermanentStoreError, TransientStoreError

if TYPE_CHECKING:
    from planty_broker.domain.commands import (
        CommandChange,
        CommandRecord,
        CommandTransition,
        SendLeases,
    )
    from planty_broker.domain.dead_letters import DeadLetter
    from planty_broker.domain.events import (
        Consumer,
        Event,
        KeepRule,
        LogBounds,
        NewEvent,
        PruneResult,
    )
    from planty_broker.domain.firmware import Release, Rollout, Target
    from planty_broker.domain.history import HistoryUsage, HourlyRollup
    from planty_broker.domain.identity import (
        ApiToken,
        ClaimWindow,
        CredentialState,
        DeviceCredential,
        Pairing,
        StoredPairingCode,
    )
    from planty_broker.domain.rules.records import RuleEvent, StoredRule


class StoreUnavailableError(TransientStoreError):
    """The database cannot be reached or written now (locked, disk full, read-only, corrupt,
    connection lost, login refused): the same write may succeed once the operator has
    acted, so callers hold their data and retry. The message says what to do."""


class StoreConfigError(PermanentStoreError):
    """The store cannot be used as configured: a bad `store.url`, an unknown setting, a
    schema newer than this version."""


class StoreRejectedError(PermanentStoreError):
    """The database refused this data itself (a constraint, a value out of range): writing
    the same data again cannot succeed."""


class ReleaseExistsError(PermanentStoreError):
    """A release with that version is stored already: releases are immutable."""


class DeviceExistsError(PermanentStoreError):
    """A device with that id is already registered."""


class Store(Protocol):
    """Durable state of the gateway."""

    async def open(self) -> None:
        """Connect and migrate the schema to the latest version."""

    async def close(self) -> None: ...

    # devices
    async def add_device(self, device: DeviceRecord) -> None:
        """Insert; raises DeviceExistsError if the id is taken."""

    async def add_devices(self, devices: Sequence[DeviceRecord]) -> None:
        """Insert all in one transaction (a bulk import); if any id is taken, none is added
        and DeviceExistsError is raised."""

    async def get_device(self, device_id: str) -> DeviceRecord | None: ...

    async def list_devices(self) -> list[DeviceRecord]: ...

    async def update_device(self, device: DeviceRecord) -> None:
        """Replace the stored record of an existing device."""

    async def patch_device(self, device_id: str, changes: Mapping[str, Any]) -> None:
        """Write only the named fields of an existing device (no-op if it was removed).

        Writers of different fields (a credential change and a status) never undo each
        other's change, whatever order their writes land in (issue 13).
        """

    async def patch_devices(self, patches: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        """`patch_device` for many devices in ONE transaction (all or nothing), applied in
        order: a later patch of the same device wins for the fields it names. Devices removed
        meanwhile are skipped; as with `patch_device`, only the named fields are written
        (device statuses are stored this way, a batch per commit)."""

    async def remove_device(self, device_id: str) -> bool:
        """Delete the device and its data; False if it did not exist."""

    # telemetry
    async def append_readings(self, readings: Sequence[Reading]) -> list[Reading]:
        """Store a batch in one transaction; durable on return. A reading whose (device,
        boot, seq) is already stored is not stored again (nor one of a removed device);
        returns the readings stored now, in order. `boot` None: never a duplicate."""

    async def query_readings(
        self, device_id: str, since_ms: int | None, until_ms: int | None, limit: int
    ) -> list[Reading]:
        """Readings of one device by `ts_ms`, newest last, at most `limit` (the newest ones)."""

    async def latest_readings(self) -> dict[str, Reading]:
        """The newest reading of every device (to rebuild state after a restart)."""

    # presence
    async def append_presence(self, transitions: Sequence[PresenceTransition]) -> None: ...

    async def last_presence(self) -> dict[str, PresenceTransition]:
        """The newest transition of every device."""

    async def presence_history(
        self, device_id: str, since_ms: int | None, until_ms: int | None
    ) -> list[PresenceTransition]: ...

    # small key/value state of the gateway (counters snapshot, broker id, ...)
    async def get_meta(self, key: str) -> Any | None: ...

    async def set_meta(self, key: str, value: Any) -> None: ...

    async def replace_meta(self, key: str, expected: Any | None, value: Any) -> bool:
        """Compare-and-set: write `value` only if the key holds `expected` (None: the key is
        absent), in one transaction; False (nothing written) if another writer got there
        first. Two gateway instances sharing the store never overwrite each other blindly."""


class CommandStore(Protocol):
    """The durable command outbox (issue 3); adapters: SqlStore, MemoryStore."""

    async def apply_command_changes(self, changes: Sequence[CommandChange]) -> None:
        """Store the rows, their history rows and their `command` events in one transaction.

        Changes of commands whose device was removed meanwhile are dropped.
        """

    async def get_command(self, command_id: str) -> CommandRecord | None: ...

    async def list_commands(
        self, device_id: str | None, states: Sequence[str] | None, limit: int
    ) -> list[CommandRecord]:
        """Newest first; `device_id` None = every device."""

    async def active_commands(self) -> list[CommandRecord]:
        """Every queued or sent command, oldest first (to resume after a restart)."""

    async def command_history(self, command_id: str) -> list[CommandTransition]:
        """Its transitions, oldest first."""

    async def prune_commands(self, final_before_ms: int, limit: int) -> int:
        """Delete up to `limit` final commands that ended before the time; returns how many."""

    async def lease_commands(
        self, ids: Sequence[str], owner: str, now_ms: int, until_ms: int
    ) -> SendLeases:
        """Take or renew the send lease of these commands for `owner`, until `until_ms`.

        Granted where the command is stored and its lease is free, expired (`until` before
        `now_ms`) or already `owner`'s. On PostgreSQL the lease rows are taken with
        `FOR UPDATE SKIP LOCKED`: a row another instance is leasing at this moment is
        refused, not waited for. One transaction for all the ids.
        """


class EventStore(Protocol):
    """The ordered event log and its named consumers (issue 3)."""

    async def append_events(self, events: Sequence[NewEvent]) -> None:
        """Append in one transaction, ids in order; durable on return."""

    async def read_events(
        self, after: int, limit: int, types: Sequence[str] | None = None
    ) -> list[Event]:
        """Events with id > after, oldest first, at most `limit`, optionally only `types`."""

    async def event_bounds(self) -> LogBounds: ...

    async def set_consumer_cursor(self, name: str, acked: int, now_ms: int) -> Consumer:
        """Create the consumer if new; move its cursor (callers check it only moves forward)."""

    async def get_consumer(self, name: str) -> Consumer | None: ...

    async def list_consumers(self) -> list[Consumer]: ...

    async def delete_consumer(self, name: str) -> bool: ...

    async def prune_events(self, through_id: int, keep: KeepRule | None = None) -> PruneResult:
        """Delete every event with id <= through_id (but those `keep` spares); count, per
        consumer, those it had not confirmed (added to its `dropped`)."""

    async def event_id_before(self, at_ms: int) -> int:
        """The highest id of an event older than `at_ms` (0 if none)."""


class RuleStore(Protocol):
    """The threshold rules and their history (issue 5); adapters: SqlStore, MemoryStore."""

    async def list_rules(self) -> list[StoredRule]:
        """Every rule, by id."""

    async def save_rules(self, put: Sequence[StoredRule], delete: Sequence[str] = ()) -> None:
        """Insert or replace `put` (a replaced rule keeps its `created_ms`) and delete the
        ids in `delete`, in one transaction."""

    async def append_rule_history(self, events: Sequence[RuleEvent]) -> None:
        """Append history lines and their `rule` events in the event log, one transaction."""

    async def rule_history(
        self,
        rule_id: str,
        *,
        device_id: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        before_id: int | None = None,
        limit: int = 100,
    ) -> list[RuleEvent]:
        """One rule's history, newest first; `before_id` pages back."""

    async def rule_fires_since(self, since_ms: int) -> list[RuleEvent]:
        """Every `fire` line at or after the time, oldest first (to restore budgets)."""

    async def prune_rule_history(self, before_ms: int, limit: int) -> int:
        """Delete up to `limit` history lines older than the time; returns how many."""


class HistoryStore(Protocol):
    """Long-term history (issue 12): hourly rollups of readings and the retention that bounds
    the store on disk. Adapters: SqlStore, MemoryStore."""

    async def roll_up_readings(self, arrived_before_ms: int, limit: int) -> int:
        """Fold up to `limit` readings not yet rolled up, in arrival order, that arrived before
        the time, into the hourly rollups (merging with what is there) and move the
        watermark, in one transaction; returns how many readings were folded."""

    async def hourly_readings(
        self, device_id: str, since_ms: int | None, until_ms: int | None, limit: int
    ) -> list[HourlyRollup]:
        """Rollups of one device whose hour starts in [since_ms, until_ms] (either bound
        optional), by hour then sensor; the newest `limit` hours."""

    async def prune_readings(self, arrived_before_ms: int, limit: int) -> int:
        """Delete up to about `limit` raw readings that arrived before the time and are
        already rolled up (never one that is not); returns how many."""

    async def prune_rollups(self, hour_before_ms: int) -> int:
        """Delete the rollups of hours that start before the time; returns how many."""

    async def prune_presence(self, before_ms: int, limit: int) -> int:
        """Delete up to `limit` presence transitions older than the time, except each
        device's newest (the state it is in); returns how many."""

    async def history_usage(self) -> HistoryUsage:
        """Rows held: raw readings, rollups, presence transitions."""


class IdentityStore(Protocol):
    """Durable identity state; every write is committed on return."""

    async def add_token(self, token: ApiToken) -> None: ...

    async def list_tokens(self) -> list[ApiToken]:
        """Every token, revoked ones included, oldest first."""

    async def token_by_digest(self, digest: str) -> ApiToken | None: ...

    async def revoke_token(self, token_id: str, at_ms: int) -> ApiToken | None:
        """Mark revoked (once); returns the stored token, None if unknown."""

    async def touch_tokens(self, last_used: Mapping[str, int]) -> None:
        """Record last-used times (id -> unix ms); only ever moves them forward."""

    async def get_pairing(self) -> Pairing | None: ...

    async def set_pairing(self, value: Pairing) -> bool:
        """Store the pairing unless one exists; False if the broker was already paired."""

    async def clear_pairing(self) -> Pairing | None:
        """Remove the pairing; returns what it was."""

    async def save_credential(self, credential: DeviceCredential) -> None:
        """Insert or replace by id."""

    async def save_credentials(self, credentials: Sequence[DeviceCredential]) -> None:
        """Insert new ones in one transaction."""

    async def mark_credentials_used(self, first_used: Mapping[str, int]) -> None:
        """Set `first_used_ms` (credential id -> unix ms) in one transaction, only where it is
        not set yet: a first use is never moved. Unknown ids are ignored."""

    async def list_credentials(
        self, device_id: str | None = None, states: Sequence[CredentialState] | None = None
    ) -> list[DeviceCredential]:
        """Oldest first; filtered by device and states when given."""


class AccessStateStore(Protocol):
    """What pairing and the claim window share between gateway instances (scale-out):
    the live pairing codes (hashed), counters, the claim window. (Wrong codes are limited
    per address and account in each instance's memory: services/access/limits.py.)
    Every write is committed on return, so any instance sees it at its next read."""

    async def add_pairing_code(self, code: StoredPairingCode, *, keep: int) -> None:
        """Store a new code; of all codes, only the `keep` newest stay."""

    async def pairing_codes(self) -> list[StoredPairingCode]:
        """Every stored code, live and expired, newest first."""

    async def clear_pairing_codes(self) -> None:
        """Forget every code (a claim used one: single use)."""

    async def add_counts(self, counts: Mapping[str, int]) -> None:
        """Add to shared counters by name (created at 0)."""

    async def counts(self) -> dict[str, int]: ...

    async def get_claim_window(self) -> ClaimWindow | None: ...

    async def open_claim_window(self, at_ms: int, until_ms: int, max_claims: int) -> ClaimWindow:
        """Open the window until `until_ms`, taking at most `max_claims`: a fresh count,
        also when it was open (then only the end and the cap move, `opened_ms` stays)."""

    async def close_claim_window(self, at_ms: int, *, expired_only: bool = False) -> bool:
        """Close the window (with `expired_only`, only once its end has passed);
        False if it was closed already."""

    async def take_claim(self, at_ms: int) -> ClaimWindow | None:
        """Count one more claim in the window if it is open at `at_ms` and has not taken
        `max_claims` (atomically: instances side by side never pass the cap); the window
        after it, or None if refused."""

    async def give_back_claim(self) -> None:
        """A taken claim failed: count one fewer (never below 0)."""


class FirmwareStore(Protocol):
    """Firmware releases (immutable) and rollouts with their targets (storage/sql_firmware.py).

    Every write takes the events that record it and appends them to the event log in the
    same transaction.
    """

    async def add_release(
        self, release: Release, contents: Mapping[str, bytes], events: Sequence[NewEvent]
    ) -> None:
        """Store a new release; `ReleaseExistsError` if the version exists."""

    async def list_releases(self) -> list[Release]:
        """Newest first."""

    async def get_release(self, version: str) -> Release | None: ...

    async def release_contents(self, version: str) -> dict[str, bytes]:
        """The files of a release by name ({} if there is no such release)."""

    async def create_rollout(
        self, rollout: Rollout, targets: Sequence[Target], events: Sequence[NewEvent]
    ) -> Rollout:
        """Store a new rollout (its `id` is ignored) and its targets; returns it with its id."""

    async def save_rollout(
        self, rollout: Rollout | None, targets: Sequence[Target], events: Sequence[NewEvent]
    ) -> None:
        """Update a rollout and/or some of its targets, with their events, in one transaction."""

    async def list_rollouts(self, limit: int = 100) -> list[Rollout]:
        """Newest first."""

    async def get_rollout(self, rollout_id: int) -> Rollout | None: ...

    async def rollout_targets(self, rollout_id: int) -> list[Target]:
        """By wave, then device id."""

    async def device_targets(self, device_id: str, limit: int = 20) -> list[Target]:
        """A device's targets, newest rollout first."""


class DeadLetterStore(Protocol):
    """Messages the store refused for good (issue 11); adapters: SqlDeadLetterStore (on the
    SQL store's connection) and MemoryDeadLetterStore."""

    async def add_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        """Append in one transaction; durable on return."""

    async def list_dead_letters(
        self, device_id: str | None, before_id: int | None, limit: int
    ) -> list[DeadLetter]:
        """Newest first; `device_id` None = every device; `before_id` pages back."""

    async def purge_dead_letters(self, device_id: str | None, through_id: int | None) -> int:
        """Delete (one device's, or all) with id <= through_id (None: every one); how many."""

    async def prune_dead_letters(self, before_ms: int, limit: int) -> int:
        """Delete up to `limit` of those older than the time; returns how many."""

    async def dead_letter_counts(self) -> dict[str, int]:
        """How many are held per device (a letter without a device counts under "")."""
