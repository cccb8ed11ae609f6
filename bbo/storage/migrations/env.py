"""Alembic environment: bbo runs migrations programmatically on a connection it passes in
(``config.attributes['connection']``); ``alembic -c`` style invocations are not needed."""

from alembic import context

from bbo.storage.schema import metadata

connection = context.config.attributes.get("connection")
if (
    connection is None
):  # pragma: no cover - only for ad-hoc `alembic` CLI use with sqlalchemy.url set
    import sqlalchemy as sa

    connection = sa.create_engine(context.config.get_main_option("sqlalchemy.url") or "").connect()

context.configure(
    connection=connection, target_metadata=metadata, render_as_batch=True, compare_type=True
)
with context.begin_transaction():
    context.run_migrations()
