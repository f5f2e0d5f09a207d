"""The store's shared `metadata`, column helpers and core tables (devices, readings,
presence, meta; migration 0001), one definition for SQLite and PostgreSQL.

Feature tables (`schema_queue`, `schema_identity`, `schema_rules`) are defined on
this `metadata` in their own modules; `schema` gathers them all.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeEngine

# Stable constraint names so migrations can refer to them on every database.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)


def json_type() -> TypeEngine[Any]:
    """JSON text on SQLite, binary JSONB (indexable, compact) on PostgreSQL."""
    return JSON().with_variant(JSONB(), "postgresql")


def row_id_type() -> TypeEngine[int]:
    """64-bit surrogate key; plain INTEGER on SQLite so it aliases the rowid."""
    return BigInteger().with_variant(Integer(), "sqlite")


def device_ref() -> ForeignKey:
    """Rows that belong to a device go with it when the device is removed."""
    return ForeignKey("devices.id", ondelete="CASCADE")


devices = Table(
    "devices",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("token_hash", String(256), nullable=False),
    Column("name", Text, nullable=True),
    Column("sensors", json_type(), nullable=False),
    Column("actuators", json_type(), nullable=False),
    Column("fw", String(128), nullable=True),
    Column("interval_s", Float, nullable=True),
    Column("attrs", json_type(), nullable=False),
)

# `id` orders readings that share a timestamp by arrival ("newest" is well defined).
# A reading is stored once: (device, boot, seq) is unique (migration 0008). `boot` NULL
# (unknown, or a reading without a seq) is never a conflict: such rows are all kept.
readings = Table(
    "readings",
    metadata,
    Column("id", row_id_type(), primary_key=True, autoincrement=True),
    Column("device_id", String(128), device_ref(), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("ts_ms", BigInteger, nullable=False),
    Column("received_ms", BigInteger, nullable=False),
    Column("values", json_type(), nullable=False),
    Column("boot", BigInteger, nullable=True),
    Index("ix_readings_device_ts", "device_id", "ts_ms"),
    Index("ux_readings_device_boot_seq", "device_id", "boot", "seq", unique=True),
)

presence = Table(
    "presence",
    metadata,
    Column("id", row_id_type(), primary_key=True, autoincrement=True),
    Column("device_id", String(128), device_ref(), nullable=False),
    Column("state", String(32), nullable=False),
    Column("at_ms", BigInteger, nullable=False),
    Column("cause", String(32), nullable=False),
    Index("ix_presence_device_at", "device_id", "at_ms"),
)

meta = Table(
    "meta",
    metadata,
    Column("key", String(256), primary_key=True),
    Column("value", json_type(), nullable=True),
)
