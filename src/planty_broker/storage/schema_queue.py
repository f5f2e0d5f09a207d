"""Tables of the two-way message queue: the command outbox and the event log (0002).

Defined on the shared `schema_core.metadata` (gathered by `schema.py`), built by
the migration `0002_commands_events`.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
)

from planty_broker.storage.schema_core import device_ref, json_type, metadata, row_id_type

commands = Table(
    "commands",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("device_id", String(128), device_ref(), nullable=False),
    Column("action", String(128), nullable=False),
    Column("args", json_type(), nullable=False),
    Column("origin", String(32), nullable=False),
    Column("state", String(16), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("exp_ms", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("sent_ms", BigInteger, nullable=True),
    Column("last_sent_ms", BigInteger, nullable=True),
    Column("final_ms", BigInteger, nullable=True),
    Column("result", json_type(), nullable=True),
    Column("error", Text, nullable=True),
    Column("superseded_by", String(64), nullable=True),
    Column("rtt_ms", Float, nullable=True),
    Column("late_ack", json_type(), nullable=True),
    Index("ix_commands_device_created", "device_id", "created_ms"),
    Index("ix_commands_state_updated", "state", "updated_ms"),
)

# Who may send a command now (issue 15): taken by the outbox of a cluster instance right before
# each send (`lease_commands`), renewed at each re-send, free once `until_ms` has passed. A table
# of its own so the journal's row writes and the leases never lock each other's rows.
command_leases = Table(
    "command_leases",
    metadata,
    Column(
        "command_id",
        String(64),
        ForeignKey("commands.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("owner", String(128), nullable=False),
    Column("until_ms", BigInteger, nullable=False),
)

command_transitions = Table(
    "command_transitions",
    metadata,
    Column("id", row_id_type(), primary_key=True, autoincrement=True),
    Column(
        "command_id",
        String(64),
        ForeignKey("commands.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("state", String(16), nullable=False),
    Column("at_ms", BigInteger, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("detail", Text, nullable=True),
    Index("ix_command_transitions_command", "command_id", "id"),
)

# No foreign key on device_id: the log keeps a removed device's history for its consumers.
# AUTOINCREMENT on SQLite: ids are never reused after pruning, so cursors never skip.
events = Table(
    "events",
    metadata,
    Column("id", row_id_type(), primary_key=True, autoincrement=True),
    Column("at_ms", BigInteger, nullable=False),
    Column("type", String(32), nullable=False),
    Column("device_id", String(128), nullable=True),
    Column("data", json_type(), nullable=False),
    Index("ix_events_at", "at_ms"),
    Index("ix_events_type_id", "type", "id"),
    sqlite_autoincrement=True,
)

event_consumers = Table(
    "event_consumers",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("cursor", BigInteger, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
    Column("dropped", BigInteger, nullable=False),
)
