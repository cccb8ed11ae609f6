"""``studies.report_clock``: the newest stamp of a study's intermediate values, so the next one is
later even where the clock (the database's, on PostgreSQL) stepped back. Replicas read the values
stored since the newest stamp they saw (:mod:`bbo.curve_index`); a stamp earlier than that would
hide its value from them. Existing studies start at NULL: their next stamp is the clock's.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("studies", sa.Column("report_clock", sa.Float, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("studies") as b:
        b.drop_column("report_clock")
