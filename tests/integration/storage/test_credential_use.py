"""`IdentityStore.mark_credentials_used` on memory, SQLite and PostgreSQL: many first uses in
one transaction, never moving a first use already stored."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from planty_broker.domain.identity import (
    CredentialKind,
    CredentialOrigin,
    CredentialState,
    DeviceCredential,
)
from planty_broker.ports.store import IdentityStore
from planty_broker.storage.memory_identity import MemoryIdentityStore
from planty_broker.storage.sql import SqlStore
from planty_broker.storage.sql_identity import SqlIdentityStore


@pytest_asyncio.fixture(
    params=[
        "memory",
        pytest.param("sqlite", marks=pytest.mark.integration),
        pytest.param("postgres", marks=pytest.mark.integration),
    ]
)
async def identities(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[IdentityStore]:
    if request.param == "memory":
        yield MemoryIdentityStore()
        return
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'planty.sqlite3'}"
    else:
        url = request.getfixturevalue("pg_server").create()
    store = SqlStore(url)
    await store.open()
    try:
        yield SqlIdentityStore(store)
    finally:
        await store.close()


def cred(n: int, first_used_ms: int | None = None) -> DeviceCredential:
    return DeviceCredential(
        id=f"cred-{n}",
        device_id=f"dev-{n}",
        kind=CredentialKind.TOKEN,
        state=CredentialState.ACTIVE,
        origin=CredentialOrigin.OPERATOR,
        created_ms=1_000,
        first_used_ms=first_used_ms,
    )


async def test_first_uses_are_set_once_and_unknown_ids_ignored(identities: IdentityStore) -> None:
    await identities.save_credentials([cred(1), cred(2), cred(3, first_used_ms=500)])
    await identities.mark_credentials_used({"cred-1": 2_000, "cred-3": 2_000, "cred-x": 2_000})
    got = {c.id: c.first_used_ms for c in await identities.list_credentials()}
    assert got == {"cred-1": 2_000, "cred-2": None, "cred-3": 500}
    await identities.mark_credentials_used({"cred-1": 9_000, "cred-2": 3_000})
    got = {c.id: c.first_used_ms for c in await identities.list_credentials()}
    assert got == {"cred-1": 2_000, "cred-2": 3_000, "cred-3": 500}
    await identities.mark_credentials_used({})  # nothing to do: no transaction, no error
