"""One migration per file, named by its number; the chain stays linear.

Migrations import only alembic and SQLAlchemy: they describe the schema as it was.
"""
