"""Study identity: a random ``uid`` per study, per-study LLM call numbers, ids never reused.

- ``studies.uid``: studies created before keep the uid this version's predecessor showed
  (``"<id>.<created_at in µs>"``), so workers holding their trials carry on; new ones get a random one.
- ``studies.llm_counter`` / ``llm_calls.number``: LLM calls are numbered per study (page tokens name
  a position in the study, not a global row id).
- ``request_log.tenant`` is dropped (the study names the tenant).
- SQLite: ``studies``, ``trials`` and ``llm_calls`` are rebuilt with AUTOINCREMENT, so a deleted
  row's id is never given to a new one (PostgreSQL's sequences never reuse ids). The caller runs
  this with foreign-key enforcement off (``SqliteStorage.migrate``): dropping the old tables must not
  cascade.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    sqlite = bind.dialect.name == "sqlite"
    kw = {"recreate": "always", "table_kwargs": {"sqlite_autoincrement": True}} if sqlite else {}

    with op.batch_alter_table("studies", **kw) as b:
        b.add_column(sa.Column("uid", sa.String(64), nullable=True))
        b.add_column(sa.Column("llm_counter", sa.BigInteger, nullable=False, server_default="0"))
    with op.batch_alter_table("llm_calls", **kw) as b:
        b.add_column(sa.Column("number", sa.BigInteger, nullable=False, server_default="0"))
    if sqlite:
        with op.batch_alter_table("trials", **kw):
            pass  # rebuilt with AUTOINCREMENT

    studies = sa.table(
        "studies",
        sa.column("id", sa.Integer),
        sa.column("uid", sa.String),
        sa.column("created_at", sa.Float),
        sa.column("llm_counter", sa.BigInteger),
    )
    calls = sa.table(
        "llm_calls",
        sa.column("id", sa.Integer),
        sa.column("study_id", sa.Integer),
        sa.column("number", sa.BigInteger),
    )
    for sid, created in bind.execute(sa.select(studies.c.id, studies.c.created_at)).all():
        ids = bind.execute(
            sa.select(calls.c.id).where(calls.c.study_id == sid).order_by(calls.c.id)
        ).scalars()
        n = 0
        for n, cid in enumerate(ids, start=1):
            bind.execute(calls.update().where(calls.c.id == cid).values(number=n))
        bind.execute(
            studies.update()
            .where(studies.c.id == sid)
            .values(uid=f"{sid}.{round(created * 1e6)}", llm_counter=n)
        )

    with op.batch_alter_table("studies", **kw) as b:
        b.alter_column("uid", existing_type=sa.String(64), nullable=False)
        b.alter_column("llm_counter", existing_type=sa.BigInteger, server_default=None)
        b.create_unique_constraint("uq_studies_uid", ["uid"])
    with op.batch_alter_table("llm_calls", **kw) as b:
        b.alter_column("number", existing_type=sa.BigInteger, server_default=None)
        b.create_unique_constraint("uq_llm_calls_study_id_number", ["study_id", "number"])
    with op.batch_alter_table("request_log") as b:
        b.drop_column("tenant")


def downgrade() -> None:
    with op.batch_alter_table("request_log") as b:
        b.add_column(sa.Column("tenant", sa.String(128), nullable=False, server_default=""))
    with op.batch_alter_table("llm_calls") as b:
        b.drop_constraint("uq_llm_calls_study_id_number", type_="unique")
        b.drop_column("number")
    with op.batch_alter_table("studies") as b:
        b.drop_constraint("uq_studies_uid", type_="unique")
        b.drop_column("llm_counter")
        b.drop_column("uid")
