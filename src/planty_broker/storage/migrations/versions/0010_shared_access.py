"""Pairing codes (hashed), counters and the claim window (its claim count and cap) in the store,
shared by every gateway instance (issue 15: they lived in one process's memory).

Revision ID: 0010_shared_access
Revises: 0008_reading_key
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_shared_access"
down_revision: str | None = "0008_reading_key"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "pairing_codes",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("digest", sa.String(200), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("expires_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_pairing_codes"),
    )
    op.create_table(
        "access_counters",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_access_counters"),
    )
    op.create_table(
        "claim_window",
        sa.Column("id", sa.String(16), nullable=False),
        sa.Column("opened_ms", sa.BigInteger(), nullable=False),
        sa.Column("until_ms", sa.BigInteger(), nullable=False),
        sa.Column("closed_ms", sa.BigInteger(), nullable=True),
        sa.Column("claims", sa.Integer(), nullable=False),
        sa.Column("max_claims", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_claim_window"),
    )


def downgrade() -> None:
    for table in ("claim_window", "access_counters", "pairing_codes"):
        op.drop_table(table)
