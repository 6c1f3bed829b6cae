"""Every registry version keeps its model card (the Hugging Face README.md text), written when it is
registered from the run's own records.

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
    op.add_column("registry_versions", sa.Column("model_card", sa.Text, nullable=True))


def downgrade() -> None:
    op.drop_column("registry_versions", "model_card")
