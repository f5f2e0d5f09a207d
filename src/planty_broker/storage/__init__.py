"""The store's adapters: SQLAlchemy Core on SQLite or PostgreSQL (`sql*`, tables in
`schema*`, Alembic `migrations/`) and the in-memory fakes (`memory*`), each
implementing `ports.store`.

May import `ports`, `domain`, `protocol`, `config` and `errors`; never `services`,
`northbound`, `mqttserver` or `transport`.
"""
