"""Transfer across studies: ``studies.transfer`` holds the source studies a study transfers from
(name, uid, relatedness, why chosen; fixed when it is created) and their latest weights (updated by
asks). Null for studies without transfer.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("studies") as b:
        b.add_column(sa.Column("transfer", sa.JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("studies") as b:
        b.drop_column("transfer")
