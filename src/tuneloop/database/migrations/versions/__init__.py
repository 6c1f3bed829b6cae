"""Alembic revisions of the store, oldest first (``r0001`` is the schema of tuneloop 0.1)."""
