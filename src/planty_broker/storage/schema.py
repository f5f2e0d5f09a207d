"""Every table of the store: the complete `metadata` the migrations must build.

This is the schema the migrations in `storage/migrations/versions/` build; a test
compares the two so they cannot drift. A feature adds its tables in its own
`schema_<feature>` module on `schema_core.metadata`, imports it here, and chains a
migration on the previous one.
"""

from __future__ import annotations

from planty_broker.storage import (
    schema_access,
    schema_dead_letters,
    schema_firmware,
    schema_history,
    schema_identity,
    schema_queue,
    schema_rules,
)
from planty_broker.storage.schema_core import devices, meta, metadata, presence, readings

FEATURE_TABLES = (
    schema_identity,
    schema_queue,
    schema_rules,
    schema_firmware,
    schema_history,
    schema_dead_letters,
    schema_access,
)  # defined on `metadata` on import

__all__ = ["FEATURE_TABLES", "devices", "meta", "metadata", "presence", "readings"]
