"""An index on ``studies (tenant, created_at, name, uid)``: the order every study listing pages in
(ListStudies, ``bbo studies``, the dashboard, ``transfer: auto``'s scan). Without it each page
sorted all of the tenant's studies, and on SQLite a page of keys read every study's spec.

Revision ID: 0009
Revises: 0008
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

NAME = "ix_studies_tenant_created_at_name_uid"  # schema.py's naming convention


def upgrade() -> None:
    op.create_index(NAME, "studies", ["tenant", "created_at", "name", "uid"])


def downgrade() -> None:
    op.drop_index(NAME, table_name="studies")
