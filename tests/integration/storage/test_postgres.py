"""PostgreSQL specifics: several instances, lost connections, failures a user can meet."""

from __future__ import annotations

import asyncio

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.engine import make_url

from planty_broker.domain.models import DeviceRecord, Reading
from planty_broker.ports.store import StoreUnavailableError
from planty_broker.storage import migrate
from planty_broker.storage.schema import metadata
from planty_broker.storage.sql import SqlStore
from tests.conftest import free_port
from tests.integration.storage.conftest import PgServer

pytestmark = pytest.mark.integration


async def test_instances_starting_together_migrate_once(pg_server: PgServer) -> None:
    url = pg_server.create()
    stores = [SqlStore(url) for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        for i, s in enumerate(stores):
            await s.add_device(DeviceRecord(id=f"d{i}", created_at_ms=1, token_hash="h"))
        assert len(await stores[0].list_devices()) == 4
        assert await stores[1].run(migrate.current_revision) == migrate.head_revision()
        diff = await stores[2].run(
            lambda c: compare_metadata(MigrationContext.configure(c), metadata)
        )
        assert diff == []
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_a_dropped_connection_is_replaced_on_the_next_call(pg_url: str) -> None:
    async with SqlStore(pg_url) as s:
        await s.set_meta("k", 1)
        pid = await s.run(lambda c: c.execute(text("SELECT pg_backend_pid()")).scalar())
        async with SqlStore(pg_url) as other:
            await other.run(lambda c: c.execute(text(f"SELECT pg_terminate_backend({pid})")))
            alive = text(f"SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}")
            for _ in range(100):
                if not await other.run(lambda c: c.execute(alive).scalar()):
                    break
                await asyncio.sleep(0.02)
            else:
                pytest.fail("the backend was not terminated")
        assert await s.get_meta("k") == 1
        await s.append_readings([])  # and writes still work
        await s.set_meta("k", 2)
        assert await s.get_meta("k") == 2


async def test_unreachable_server_is_named_without_the_password() -> None:
    port = free_port()
    s = SqlStore(f"postgresql://planty:s3cret-pw@127.0.0.1:{port}/planty")
    assert "s3cret-pw" not in repr(s)
    with pytest.raises(StoreUnavailableError) as err:
        await s.open()
    message = str(err.value)
    assert message.startswith(f"cannot connect to PostgreSQL at 127.0.0.1:{port}: ")
    assert "s3cret-pw" not in message
    assert "\n" not in message


async def test_missing_database_says_how_to_create_it(pg_url: str) -> None:
    url = make_url(pg_url).set(database="planty_no_such_db").render_as_string(False)
    with pytest.raises(StoreUnavailableError) as err:
        await SqlStore(url).open()
    host = make_url(pg_url).host
    assert str(err.value) == (
        f"database 'planty_no_such_db' does not exist on PostgreSQL at {host}:5432: "
        "create it (createdb planty_no_such_db) or fix store.url"
    )


async def test_unknown_user_is_refused_with_a_hint(pg_url: str) -> None:
    url = make_url(pg_url).set(username="planty_nobody", password="pw-xyz")
    with pytest.raises(StoreUnavailableError) as err:
        await SqlStore(url.render_as_string(False)).open()
    assert "refused user 'planty_nobody': check the user and password in store.url" in str(
        err.value
    )
    assert "pw-xyz" not in str(err.value)


async def test_a_large_batch_round_trips(pg_url: str) -> None:
    async with SqlStore(pg_url) as s:
        await s.add_device(DeviceRecord(id="big", created_at_ms=1, token_hash="h"))
        batch = [Reading("big", i, i, i, {"t": float(i)}) for i in range(5_000)]
        await s.append_readings(batch)
        assert await s.query_readings("big", None, None, 10_000) == batch
        await s.remove_device("big")
