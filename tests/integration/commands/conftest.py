"""Fixtures of the command and event log tests: the store fixtures of tests/integration/storage
(memory, SQLite, PostgreSQL) and a gateway with short timeouts (see `gateway.py`)."""

from __future__ import annotations

from tests.integration.storage.conftest import (  # noqa: F401 - fixtures used by name
    pg_server,
    pg_url,
    store,
    store_factory,
)
