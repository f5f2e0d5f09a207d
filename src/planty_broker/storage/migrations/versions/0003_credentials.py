"""API tokens, the account pairing and device credentials (issue 4).

Revision ID: 0003_credentials
Revises: 0002_commands_events
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_credentials"
down_revision: str | None = "0002_commands_events"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("origin", sa.String(32), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("last_used_ms", sa.BigInteger(), nullable=True),
        sa.Column("revoked_ms", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_api_tokens"),
        sa.UniqueConstraint("digest", name="uq_api_tokens_digest"),
    )
    op.create_table(
        "pairing",
        sa.Column("id", sa.String(16), nullable=False),
        sa.Column("account_id", sa.String(200), nullable=False),
        sa.Column("token_id", sa.String(32), nullable=False),
        sa.Column("paired_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_pairing"),
    )
    # No foreign key to devices: revoked certificates must outlive a removed device.
    op.create_table(
        "device_credentials",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("device_id", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("origin", sa.String(16), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("secret_hash", sa.String(256), nullable=False),
        sa.Column("serial", sa.String(64), nullable=True),
        sa.Column("fingerprint", sa.String(64), nullable=True),
        sa.Column("not_after_ms", sa.BigInteger(), nullable=True),
        sa.Column("valid_from_ms", sa.BigInteger(), nullable=True),
        sa.Column("first_used_ms", sa.BigInteger(), nullable=True),
        sa.Column("replaces", sa.String(32), nullable=True),
        sa.Column("overlap_until_ms", sa.BigInteger(), nullable=True),
        sa.Column("ended_ms", sa.BigInteger(), nullable=True),
        sa.Column("end_reason", sa.String(32), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_device_credentials"),
    )
    op.create_index("ix_device_credentials_device", "device_credentials", ["device_id"])
    op.create_index("ix_device_credentials_state", "device_credentials", ["state"])


def downgrade() -> None:
    op.drop_index("ix_device_credentials_state", table_name="device_credentials")
    op.drop_index("ix_device_credentials_device", table_name="device_credentials")
    op.drop_table("device_credentials")
    op.drop_table("pairing")
    op.drop_table("api_tokens")
