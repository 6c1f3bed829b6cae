"""The SQL database of the serving store, API keys and the model registry: one URL for the whole loop.

:mod:`tuneloop.database.engine` opens it (SQLite by default, PostgreSQL with ``--db``);
:mod:`tuneloop.database.migrations` is its schema's Alembic history. The tables themselves are
declared by their owners: ``serve/store.py``, ``serve/access.py``, ``registry/store.py``.
"""
