"""Tables of firmware updates (0005): releases, their files, rollouts and their targets.

No foreign keys to `devices`: a rollout's record of what happened to a device outlives
the device, and a release outlives every rollout of it. Releases are never updated:
immutable once added.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, LargeBinary, String, Table

from planty_broker.storage.schema_core import json_type, metadata, row_id_type

firmware_releases = Table(
    "firmware_releases",
    metadata,
    Column("version", String(32), primary_key=True),
    Column("manifest", json_type(), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("notes", String(500), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
)

firmware_files = Table(
    "firmware_files",
    metadata,
    Column("version", String(32), primary_key=True),
    Column("name", String(32), primary_key=True),
    Column("data", LargeBinary, nullable=False),
)

firmware_rollouts = Table(
    "firmware_rollouts",
    metadata,
    Column("id", row_id_type(), primary_key=True, autoincrement=True),
    Column("version", String(32), nullable=False),
    Column("state", String(16), nullable=False),
    Column("data", json_type(), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
)

firmware_targets = Table(
    "firmware_targets",
    metadata,
    Column("rollout_id", BigInteger, primary_key=True),
    Column("device_id", String(128), primary_key=True),
    Column("wave", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("reason", String(500), nullable=False),
    Column("progress", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
    Index("ix_firmware_targets_device", "device_id", "rollout_id"),
)
