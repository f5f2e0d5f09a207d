"""Firmware releases and staged rollouts (issue 18).

Revision ID: 0005_firmware
Revises: 0004_rules
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005_firmware"
down_revision: str | None = "0004_rules"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _row_id() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "firmware_releases",
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("manifest", _json(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("notes", sa.String(500), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("version", name="pk_firmware_releases"),
    )
    op.create_table(
        "firmware_files",
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("version", "name", name="pk_firmware_files"),
    )
    op.create_table(
        "firmware_rollouts",
        sa.Column("id", _row_id(), autoincrement=True, nullable=False),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("data", _json(), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_firmware_rollouts"),
    )
    op.create_table(
        "firmware_targets",
        sa.Column("rollout_id", sa.BigInteger(), nullable=False),
        sa.Column("device_id", sa.String(128), nullable=False),
        sa.Column("wave", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(500), nullable=False),
        sa.Column("progress", sa.BigInteger(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("rollout_id", "device_id", name="pk_firmware_targets"),
    )
    op.create_index("ix_firmware_targets_device", "firmware_targets", ["device_id", "rollout_id"])


def downgrade() -> None:
    op.drop_index("ix_firmware_targets_device", table_name="firmware_targets")
    op.drop_table("firmware_targets")
    op.drop_table("firmware_rollouts")
    op.drop_table("firmware_files")
    op.drop_table("firmware_releases")
