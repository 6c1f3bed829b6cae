"""The schema of tuneloop 0.1 (before migrations): serving, access and registry tables.

Those stores were made by ``metadata.create_all`` (tables created when first used) plus an
ALTER TABLE for three columns added later, so an existing store may have any subset of them. This
revision creates the tables and columns that are missing and leaves every existing one, and its
rows, as they are. The definitions are frozen here: later changes are later revisions.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def _tables() -> dict[str, list]:
    """table name -> its columns and constraints as tuneloop 0.1 declared them."""
    return {
        "requests": [
            sa.Column("id", sa.String(64), primary_key=True),
            sa.Column("model", sa.String(200), index=True),
            sa.Column("kind", sa.String(16)),
            sa.Column("created", TZ, index=True),
            sa.Column("latency_ms", sa.Float),
            sa.Column("prompt_tokens", sa.Integer),
            sa.Column("completion_tokens", sa.Integer),
            sa.Column("status", sa.Integer),
            sa.Column("error", sa.Text, nullable=True),
            sa.Column("prompt", sa.JSON, nullable=True),
            sa.Column("response", sa.Text, nullable=True),
            sa.Column("finish_reason", sa.String(16), nullable=True),
            sa.Column("stream", sa.Integer),
            sa.Column("choices", sa.JSON, nullable=True),
        ],
        "feedback": [
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("completion_id", sa.String(64), index=True),
            sa.Column("model", sa.String(200), index=True),
            sa.Column("rating", sa.Integer, nullable=True),
            sa.Column("comment", sa.Text, nullable=True),
            sa.Column("correction", sa.Text, nullable=True),
            sa.Column("created", TZ, index=True),
            sa.Column("score", sa.Integer, nullable=True),
            sa.Column("choice", sa.Integer, nullable=True),
        ],
        "api_keys": [
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("name", sa.String(64), unique=True),
            sa.Column("key_sha256", sa.String(64), unique=True),
            sa.Column("scopes", sa.String(64)),
            sa.Column("rate_limit_per_minute", sa.Integer, nullable=True),
            sa.Column("created", TZ),
            sa.Column("revoked", TZ, nullable=True),
        ],
        "audit_log": [
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("created", TZ, index=True),
            sa.Column("actor", sa.String(128)),
            sa.Column("action", sa.String(64), index=True),
            sa.Column("detail", sa.JSON, nullable=True),
        ],
        "registry_models": [
            sa.Column("name", sa.String(200), primary_key=True),
            sa.Column("created", TZ),
        ],
        "registry_versions": [
            sa.Column("name", sa.String(200), sa.ForeignKey("registry_models.name"), primary_key=True),
            sa.Column("version", sa.Integer, primary_key=True),
            sa.Column("path", sa.Text),
            sa.Column("base_model", sa.Text, nullable=True),
            sa.Column("parent_version", sa.Integer, nullable=True),
            sa.Column("recipe", sa.JSON, nullable=True),
            sa.Column("data_manifest_hash", sa.String(128), nullable=True),
            sa.Column("train_data", sa.Text, nullable=True),
            sa.Column("regression_data", sa.Text, nullable=True),
            sa.Column("eval", sa.JSON, nullable=True),
            sa.Column("source", sa.Text, nullable=True),
            sa.Column("created_by", sa.String(200), nullable=True),
            sa.Column("created", TZ),
        ],
        "registry_aliases": [
            sa.Column("name", sa.String(200), sa.ForeignKey("registry_models.name"), primary_key=True),
            sa.Column("alias", sa.String(64), primary_key=True),
            sa.Column("version", sa.Integer),
        ],
        "registry_events": [
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("name", sa.String(200), index=True),
            sa.Column("action", sa.String(32)),
            sa.Column("alias", sa.String(64), nullable=True),
            sa.Column("from_version", sa.Integer, nullable=True),
            sa.Column("to_version", sa.Integer, nullable=True),
            sa.Column("actor", sa.String(200)),
            sa.Column("reason", sa.Text, nullable=True),
            sa.Column("created", TZ),
        ],
        "improve_rounds": [
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("name", sa.String(200), index=True),
            sa.Column("status", sa.String(32)),
            sa.Column("feedback_through", sa.Integer),
            sa.Column("production_version", sa.Integer, nullable=True),
            sa.Column("version", sa.Integer, nullable=True),
            sa.Column("gate", sa.JSON, nullable=True),
            sa.Column("report", sa.Text, nullable=True),
            sa.Column("created", TZ),
        ],
    }


# Columns 0.1 added after its first tables existed (its ADDED_COLUMNS): a store may lack them.
LATE_COLUMNS = {"requests": ("choices",), "feedback": ("score", "choice")}


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    present = set(inspector.get_table_names())
    for name, columns in _tables().items():  # in dependency order: registry_models before its users
        if name not in present:
            op.create_table(name, *columns)
            continue
        have = {c["name"] for c in inspector.get_columns(name)}
        for column in columns:
            if column.name in LATE_COLUMNS.get(name, ()) and column.name not in have:
                op.add_column(name, column)


def downgrade() -> None:
    raise NotImplementedError("0001 is the first schema: there is nothing to go back to")
