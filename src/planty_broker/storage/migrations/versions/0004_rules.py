"""Threshold rules and their history (issue 5).

Revision ID: 0004_rules
Revises: 0003_credentials
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004_rules"
down_revision: str | None = "0003_credentials"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _row_id() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "rules",
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("data", _json(), nullable=False),
        sa.Column("origin", sa.String(32), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_rules"),
    )
    op.create_table(
        "rule_history",
        sa.Column("id", _row_id(), autoincrement=True, nullable=False),
        sa.Column("rule_id", sa.String(128), nullable=False),
        sa.Column("device_id", sa.String(128), nullable=True),
        sa.Column("at_ms", sa.BigInteger(), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("data", _json(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_rule_history"),
    )
    op.create_index("ix_rule_history_rule_id", "rule_history", ["rule_id", "id"])
    op.create_index("ix_rule_history_at", "rule_history", ["at_ms"])


def downgrade() -> None:
    op.drop_index("ix_rule_history_at", table_name="rule_history")
    op.drop_index("ix_rule_history_rule_id", table_name="rule_history")
    op.drop_table("rule_history")
    op.drop_table("rules")
