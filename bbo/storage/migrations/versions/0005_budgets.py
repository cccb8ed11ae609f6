"""Budgets (multi-fidelity studies): a trial's budget, Hyperband bracket and resume budget, and the
budget each intermediate value was measured at. Nullable columns added in place: existing rows
(studies without a fidelity) keep NULL, which reads as "no budget".

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("trials", sa.Column("budget", sa.Float, nullable=True))
    op.add_column("trials", sa.Column("bracket", sa.Integer, nullable=True))
    op.add_column("trials", sa.Column("resume_budget", sa.Float, nullable=True))
    op.add_column("intermediate_values", sa.Column("budget", sa.Float, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("intermediate_values") as b:
        b.drop_column("budget")
    with op.batch_alter_table("trials") as b:
        b.drop_column("resume_budget")
        b.drop_column("bracket")
        b.drop_column("budget")
