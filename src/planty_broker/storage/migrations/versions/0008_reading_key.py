"""A reading is stored once: `readings.boot` and a unique key on (device, boot, seq) (issue 12).

Revision ID: 0008_reading_key
Revises: 0007_dead_letters
Create Date: 2026-12-03

Rows stored before this revision have no boot (NULL): they never conflict with new rows
(NULLs are distinct in a unique index on SQLite and PostgreSQL alike). Copies of one
reading stored twice before (same device, seq and ts_ms: a redelivery, a restart) are
removed first, keeping the first stored.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_reading_key"
down_revision: str | None = "0007_dead_letters"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        "DELETE FROM readings WHERE id NOT IN "
        "(SELECT MIN(id) FROM readings GROUP BY device_id, seq, ts_ms)"
    )
    with op.batch_alter_table("readings") as batch:
        batch.add_column(sa.Column("boot", sa.BigInteger(), nullable=True))
    op.create_index(
        "ux_readings_device_boot_seq", "readings", ["device_id", "boot", "seq"], unique=True
    )


def downgrade() -> None:
    op.drop_index("ux_readings_device_boot_seq", table_name="readings")
    with op.batch_alter_table("readings") as batch:
        batch.drop_column("boot")
