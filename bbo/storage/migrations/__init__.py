"""Alembic migration environment of the bbo database (run by :meth:`bbo.storage.Storage.migrate`)."""
