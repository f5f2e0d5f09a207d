"""Tables of device identity and pairing (0003): API tokens, the pairing, device credentials.

Defined on the shared `schema_core.metadata` (gathered by `schema.py`), built by
the migration `0003_credentials`. `device_credentials` has no foreign key to `devices`:
a removed device's certificates must stay on the revocation list until they expire,
and its credential history stays readable.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, String, Table

from planty_broker.storage.schema_core import metadata

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("scope", String(16), nullable=False),
    Column("digest", String(64), nullable=False, unique=True),
    Column("origin", String(32), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("last_used_ms", BigInteger, nullable=True),
    Column("revoked_ms", BigInteger, nullable=True),
)

# At most one row (id = "broker"): the account this broker is paired with.
pairing = Table(
    "pairing",
    metadata,
    Column("id", String(16), primary_key=True),
    Column("account_id", String(200), nullable=False),
    Column("token_id", String(32), nullable=False),
    Column("paired_ms", BigInteger, nullable=False),
)

device_credentials = Table(
    "device_credentials",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("device_id", String(128), nullable=False),
    Column("kind", String(8), nullable=False),
    Column("state", String(16), nullable=False),
    Column("origin", String(16), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("secret_hash", String(256), nullable=False),
    Column("serial", String(64), nullable=True),
    Column("fingerprint", String(64), nullable=True),
    Column("not_after_ms", BigInteger, nullable=True),
    Column("valid_from_ms", BigInteger, nullable=True),
    Column("first_used_ms", BigInteger, nullable=True),
    Column("replaces", String(32), nullable=True),
    Column("overlap_until_ms", BigInteger, nullable=True),
    Column("ended_ms", BigInteger, nullable=True),
    Column("end_reason", String(32), nullable=True),
    Index("ix_device_credentials_device", "device_id"),
    Index("ix_device_credentials_state", "state"),
)
