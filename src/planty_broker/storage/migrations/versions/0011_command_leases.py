"""Send leases of outbox commands, one row per command (issue 15): with several gateway
instances a command is sent only by the instance holding its lease, until the lease expires.

Revision ID: 0011_command_leases
Revises: 0010_shared_access
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011_command_leases"
down_revision: str | None = "0010_shared_access"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "command_leases",
        sa.Column("command_id", sa.String(64), nullable=False),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("until_ms", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["command_id"],
            ["commands.id"],
            name="fk_command_leases_command_id_commands",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("command_id", name="pk_command_leases"),
    )


def downgrade() -> None:
    op.drop_table("command_leases")
