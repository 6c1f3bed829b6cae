"""Feedback is stored once per ``Idempotency-Key``: a client that retries a feedback (on another
replica, after a lost response) with the same key does not store it twice.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("feedback", sa.Column("idempotency_key", sa.String(128), nullable=True))
    # A unique index, not a constraint: SQLite can add an index to an existing table in place.
    # NULLs (feedback sent without a key, as before) never collide.
    op.create_index("uq_feedback_idempotency_key", "feedback", ["idempotency_key"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_feedback_idempotency_key", table_name="feedback")
    op.drop_column("feedback", "idempotency_key")
