"""Command outbox (commands, their transitions) and the event log (events, consumers).

Revision ID: 0002_commands_events
Revises: 0001_core
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002_commands_events"
down_revision: str | None = "0001_core"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _row_id() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "commands",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("device_id", sa.String(128), nullable=False),
        sa.Column("action", sa.String(128), nullable=False),
        sa.Column("args", _json(), nullable=False),
        sa.Column("origin", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("exp_ms", sa.BigInteger(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("sent_ms", sa.BigInteger(), nullable=True),
        sa.Column("last_sent_ms", sa.BigInteger(), nullable=True),
        sa.Column("final_ms", sa.BigInteger(), nullable=True),
        sa.Column("result", _json(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("superseded_by", sa.String(64), nullable=True),
        sa.Column("rtt_ms", sa.Float(), nullable=True),
        sa.Column("late_ack", _json(), nullable=True),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], name="fk_commands_device_id_devices", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_commands"),
    )
    op.create_index("ix_commands_device_created", "commands", ["device_id", "created_ms"])
    op.create_index("ix_commands_state_updated", "commands", ["state", "updated_ms"])
    op.create_table(
        "command_transitions",
        sa.Column("id", _row_id(), autoincrement=True, nullable=False),
        sa.Column("command_id", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("at_ms", sa.BigInteger(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["command_id"],
            ["commands.id"],
            name="fk_command_transitions_command_id_commands",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_command_transitions"),
    )
    op.create_index("ix_command_transitions_command", "command_transitions", ["command_id", "id"])
    # AUTOINCREMENT on SQLite: an id is never reused, even after the newest rows are pruned,
    # so a consumer's cursor can never skip a new event.
    op.create_table(
        "events",
        sa.Column("id", _row_id(), autoincrement=True, nullable=False),
        sa.Column("at_ms", sa.BigInteger(), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("device_id", sa.String(128), nullable=True),
        sa.Column("data", _json(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_events"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_events_at", "events", ["at_ms"])
    op.create_index("ix_events_type_id", "events", ["type", "id"])
    op.create_table(
        "event_consumers",
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("cursor", sa.BigInteger(), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.Column("dropped", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_event_consumers"),
    )


def downgrade() -> None:
    op.drop_table("event_consumers")
    op.drop_index("ix_events_type_id", table_name="events")
    op.drop_index("ix_events_at", table_name="events")
    op.drop_table("events")
    op.drop_index("ix_command_transitions_command", table_name="command_transitions")
    op.drop_table("command_transitions")
    op.drop_index("ix_commands_state_updated", table_name="commands")
    op.drop_index("ix_commands_device_created", table_name="commands")
    op.drop_table("commands")
