"""Table of dead letters (0007): device messages the store refused for good (issue 11).

No reference to `devices`: a dead letter may name a device that is gone, or none at all,
and is kept until retention or a purge removes it.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, LargeBinary, String, Table, Text

from planty_broker.storage.schema_core import metadata, row_id_type

dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", row_id_type(), primary_key=True, autoincrement=True),
    Column("device_id", String(128), nullable=True),
    Column("topic", Text, nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("size", Integer, nullable=False),
    Column("error", Text, nullable=False),
    Column("at_ms", BigInteger, nullable=False),
    Index(None, "device_id", "id"),
    Index(None, "at_ms"),
)
