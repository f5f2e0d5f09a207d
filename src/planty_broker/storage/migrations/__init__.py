"""Alembic environment and the linear chain of migrations (`versions/`), run by
`storage.migrate`.

May import `storage.schema` only.
"""
