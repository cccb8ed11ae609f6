"""An index on ``intermediate_values.at``: before each pruning decision a replica on a shared
database reads the values stored since the newest it has seen (:mod:`bbo.curve_index`), a range
of the newest rows instead of a scan of the study's.

Revision ID: 0007
Revises: 0006
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_intermediate_values_at", "intermediate_values", ["at"])


def downgrade() -> None:
    op.drop_index("ix_intermediate_values_at", "intermediate_values")
