"""Tables of the threshold rules (0004): the rules and their history.

Defined on the shared `schema_core.metadata` (gathered by `schema.py`), built by
the migration `0004_rules`. No foreign keys: a rule may name several devices or `"*"`
(its `devices` live in `data`), and its history outlives the rule and the device, so
"why did the pump run at 03:12?" still has an answer after either was deleted
(`rules.history_keep_days` bounds it).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, String, Table

from planty_broker.storage.schema_core import json_type, metadata, row_id_type

rules = Table(
    "rules",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("data", json_type(), nullable=False),
    Column("origin", String(32), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
)

rule_history = Table(
    "rule_history",
    metadata,
    Column("id", row_id_type(), primary_key=True, autoincrement=True),
    Column("rule_id", String(128), nullable=False),
    Column("device_id", String(128), nullable=True),
    Column("at_ms", BigInteger, nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("data", json_type(), nullable=False),
    Index("ix_rule_history_rule_id", "rule_id", "id"),
    Index("ix_rule_history_at", "at_ms"),
)
