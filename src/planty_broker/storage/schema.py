"""SQLAlchemy Core tables of the store, one definition for SQLite and PostgreSQL.

This is the schema the migrations in `storage/migrations/versions/` build; a test
compares the two so they cannot drift. Later features add their tables to the same
`metadata` together with a migration chained on the previous one.
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
readings = Table(
    "readings",
    metadata,
    Column("id", row_id_type(), primary_key=True, autoincrement=True),
    Column("device_id", String(128), device_ref(), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("ts_ms", BigInteger, nullable=False),
    Column("received_ms", BigInteger, nullable=False),
    Column("values", json_type(), nullable=False),
    Index("ix_readings_device_ts", "device_id", "ts_ms"),
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

# Feature tables defined on `metadata` in their own modules (imported for their side effect).
from planty_broker.storage import schema_identity as _schema_identity  # noqa: E402, F401
from planty_broker.storage import schema_queue as _schema_queue  # noqa: E402, F401
from planty_broker.storage import schema_rules as _schema_rules  # noqa: E402, F401
