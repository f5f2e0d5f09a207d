"""Core tables: devices, readings, presence, meta.

Revision ID: 0001_core
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001_core"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _row_id() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "devices",
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("token_hash", sa.String(256), nullable=False),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column("sensors", _json(), nullable=False),
        sa.Column("actuators", _json(), nullable=False),
        sa.Column("fw", sa.String(128), nullable=True),
        sa.Column("interval_s", sa.Float(), nullable=True),
        sa.Column("attrs", _json(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_devices"),
    )
    op.create_table(
        "readings",
        sa.Column("id", _row_id(), autoincrement=True, nullable=False),
        sa.Column("device_id", sa.String(128), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("ts_ms", sa.BigInteger(), nullable=False),
        sa.Column("received_ms", sa.BigInteger(), nullable=False),
        sa.Column("values", _json(), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], name="fk_readings_device_id_devices", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_readings"),
    )
    op.create_index("ix_readings_device_ts", "readings", ["device_id", "ts_ms"])
    op.create_table(
        "presence",
        sa.Column("id", _row_id(), autoincrement=True, nullable=False),
        sa.Column("device_id", sa.String(128), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("at_ms", sa.BigInteger(), nullable=False),
        sa.Column("cause", sa.String(32), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], name="fk_presence_device_id_devices", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_presence"),
    )
    op.create_index("ix_presence_device_at", "presence", ["device_id", "at_ms"])
    op.create_table(
        "meta",
        sa.Column("key", sa.String(256), nullable=False),
        sa.Column("value", _json(), nullable=True),
        sa.PrimaryKeyConstraint("key", name="pk_meta"),
    )


def downgrade() -> None:
    op.drop_table("meta")
    op.drop_index("ix_presence_device_at", table_name="presence")
    op.drop_table("presence")
    op.drop_index("ix_readings_device_ts", table_name="readings")
    op.drop_table("readings")
    op.drop_table("devices")
