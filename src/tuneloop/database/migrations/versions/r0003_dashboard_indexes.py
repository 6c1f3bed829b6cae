"""Covering indexes on ``requests`` for the dashboard's serving page (``dashboard/serving.py``):
by time (hourly sums, the recent page's ids) and by model (latency percentiles in index order).

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

INDEXES = {
    "ix_requests_dashboard_time": ["created", "model", "status", "latency_ms", "completion_tokens", "id"],
    "ix_requests_dashboard_model": ["model", "status", "latency_ms", "created"],
}


def upgrade() -> None:
    for name, columns in INDEXES.items():
        op.create_index(name, "requests", columns, if_not_exists=True)


def downgrade() -> None:
    for name in INDEXES:
        op.drop_index(name, table_name="requests", if_exists=True)
