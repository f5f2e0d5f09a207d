"""Alembic environment: migrate the connection `storage.migrate` hands over.

At run time `planty_broker.storage.migrate.upgrade()` passes an open connection in
`config.attributes["connection"]` (inside its transaction and migration lock); no
alembic.ini is needed. Offline mode (`--sql`) renders the SQL for a given URL.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from planty_broker.storage.schema import metadata

config = context.config


def run_offline() -> None:
    """Emit the migration SQL without a database (alembic upgrade --sql)."""
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online(connection: Connection) -> None:
    """Migrate on the caller's connection; batch mode lets SQLite alter tables."""
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    conn = config.attributes.get("connection")
    if not isinstance(conn, Connection):
        raise RuntimeError(
            "run migrations through planty_broker.storage.migrate.upgrade(), "
            "which passes the connection in config.attributes['connection']"
        )
    run_online(conn)
