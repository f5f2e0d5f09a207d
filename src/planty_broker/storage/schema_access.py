"""Tables of the shared pairing and claim-window state (0010): what every gateway instance
of a deployment must see alike (docs/scale-out.md).

Defined on the shared `schema_core.metadata` (gathered by `schema.py`), built by the
migration `0010_shared_access`. A pairing code is kept as a salted scrypt hash, never as
the code; the claim window is one row.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Integer, String, Table

from planty_broker.storage.schema_core import metadata

pairing_codes = Table(
    "pairing_codes",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("digest", String(200), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("expires_ms", BigInteger, nullable=False),
)

access_counters = Table(
    "access_counters",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", BigInteger, nullable=False),
)

# At most one row (id = "broker").
claim_window = Table(
    "claim_window",
    metadata,
    Column("id", String(16), primary_key=True),
    Column("opened_ms", BigInteger, nullable=False),
    Column("until_ms", BigInteger, nullable=False),
    Column("closed_ms", BigInteger, nullable=True),
    Column("claims", Integer, nullable=False),
    Column("max_claims", Integer, nullable=False),
)
