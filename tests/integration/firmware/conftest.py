"""Fixtures of the firmware tests: the store fixtures of tests/integration/storage."""

from tests.integration.storage.conftest import (  # noqa: F401 - fixtures used by name
    pg_server,
    pg_url,
    store,
    store_factory,
)
