"""Tables of long-term history (0006): hourly rollups of readings (issue 12).

One row per device, hour and sensor; the primary key (device, hour, sensor) serves both
the charts (one device, a range of hours) and the retention (per device, hours before a
cut). SQLite stores it WITHOUT ROWID: the key is the row, no second b-tree.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Float, Integer, PrimaryKeyConstraint, String, Table

from planty_broker.storage.schema_core import device_ref, metadata

reading_rollups = Table(
    "reading_rollups",
    metadata,
    Column("device_id", String(128), device_ref(), nullable=False),
    Column("hour_ms", BigInteger, nullable=False),
    Column("sensor", String(128), nullable=False),
    Column("n", Integer, nullable=False),
    Column("min_value", Float, nullable=False),
    Column("max_value", Float, nullable=False),
    Column("sum_value", Float, nullable=False),
    Column("last_value", Float, nullable=False),
    Column("last_ts_ms", BigInteger, nullable=False),
    PrimaryKeyConstraint("device_id", "hour_ms", "sensor"),
    sqlite_with_rowid=False,
)
