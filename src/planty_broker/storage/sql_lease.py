"""`PgLease`: one PostgreSQL session advisory lock, held on a connection of its own.

Scale-out (docs/scale-out.md): the loops that must run once in the whole deployment
(command outbox, presence, rules, claims, updates) run on the instance holding this
lease. The lock belongs to the holder's database session, so it is released the moment
that session ends: a clean stop, a kill -9 (the kernel closes the socket, PostgreSQL sees
the end at once), or a dead host (TCP keepalives: about 10 s). Another instance, polling
`pg_try_advisory_lock` every `every_s`, then takes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import psycopg
from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)

LEASE_KEY = 0x706C616E74796C  # "plantyl": the single-owner loops (not the migration lock)


def conninfo(sqlalchemy_url: str) -> str:
    """A libpq URL from SQLAlchemy's (`postgresql+psycopg://...`)."""
    url = make_url(sqlalchemy_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


class PgLease:
    """`await lease.acquire()` returns once held; `await lease.lost()` returns if it is lost."""

    def __init__(self, url: str, name: str, *, key: int = LEASE_KEY, every_s: float = 1.0) -> None:
        self._conninfo = conninfo(url)
        self._name = name
        self._key = key
        self._every = every_s
        self._conn: psycopg.AsyncConnection[tuple[object, ...]] | None = None

    async def _connect(self) -> psycopg.AsyncConnection[tuple[object, ...]]:
        return await psycopg.AsyncConnection.connect(
            self._conninfo,
            autocommit=True,
            application_name=self._name[:60],
            keepalives=1,
            keepalives_idle=5,
            keepalives_interval=2,
            keepalives_count=3,
        )

    async def acquire(self) -> None:
        while True:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = await self._connect()
                cur = await self._conn.execute("SELECT pg_try_advisory_lock(%s)", (self._key,))
                row = await cur.fetchone()
                if row is not None and row[0]:
                    log.info("lease %x taken by %s", self._key, self._name)
                    return
            except psycopg.Error as exc:
                log.warning("lease: PostgreSQL not reachable (%s); retrying", exc)
                await self._drop()
            await asyncio.sleep(self._every)

    async def lost(self) -> None:
        """Returns when the session holding the lock fails (the lock is then gone)."""
        while True:
            await asyncio.sleep(self._every)
            conn = self._conn
            if conn is None:
                return
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can lose a cancellation
                # that comes as the query returns (tasks.wait_event says more)
                async with asyncio.timeout(max(self._every * 3, 3.0)):
                    await conn.execute("SELECT 1")
            except (psycopg.Error, TimeoutError) as exc:
                log.error("lease %x lost (%s)", self._key, exc)
                await self._drop()
                return

    async def release(self) -> None:
        await self._drop()

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()
