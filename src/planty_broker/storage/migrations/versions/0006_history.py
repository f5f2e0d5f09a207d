"""Long-term history: hourly rollups of readings (issue 12).

Revision ID: 0006_history
Revises: 0005_firmware
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_history"
down_revision: str | None = "0005_firmware"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "reading_rollups",
        sa.Column("device_id", sa.String(128), nullable=False),
        sa.Column("hour_ms", sa.BigInteger(), nullable=False),
        sa.Column("sensor", sa.String(128), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("min_value", sa.Float(), nullable=False),
        sa.Column("max_value", sa.Float(), nullable=False),
        sa.Column("sum_value", sa.Float(), nullable=False),
        sa.Column("last_value", sa.Float(), nullable=False),
        sa.Column("last_ts_ms", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            name="fk_reading_rollups_device_id_devices",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("device_id", "hour_ms", "sensor", name="pk_reading_rollups"),
        sqlite_with_rowid=False,
    )


def downgrade() -> None:
    op.drop_table("reading_rollups")
