"""Owners on datasets, models, pipelines and runs, and the audit log. Existing rows get no owner (only admins
change them), but runs that record who started them (`started_by`, 0003) are that user's.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TIMESTAMP = sa.DateTime(timezone=True)
OWNED = ("datasets", "models", "pipelines", "runs")


def upgrade() -> None:
    for table in OWNED:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("owner", sa.String(256), nullable=False, server_default=""))
            batch.create_index(f"ix_{table}_owner", ["owner"])
    runs = sa.table("runs", sa.column("id", sa.String), sa.column("owner", sa.String), sa.column("started_by", sa.JSON))
    connection = op.get_bind()
    started = connection.execute(sa.select(runs.c.id, runs.c.started_by).where(runs.c.started_by.is_not(None)))
    for run_id, started_by in list(started):
        subject = (started_by or {}).get("subject", "")
        connection.execute(runs.update().where(runs.c.id == run_id).values(owner=subject))
    op.create_table(
        "audit_events",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("time", TIMESTAMP, nullable=False),
        sa.Column("service", sa.String(32), nullable=False),
        sa.Column("method", sa.String(128), nullable=False),
        sa.Column("target_id", sa.String(128), nullable=False),
        sa.Column("subject", sa.String(256), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("peer", sa.String(256), nullable=False),
        sa.Column("forwarded_for", sa.String(256), nullable=False),
    )
    for column in ("time", "method", "subject", "outcome"):
        op.create_index(f"ix_audit_events_{column}", "audit_events", [column])


def downgrade() -> None:
    op.drop_table("audit_events")
    for table in OWNED:
        with op.batch_alter_table(table) as batch:
            batch.drop_index(f"ix_{table}_owner")
            batch.drop_column("owner")
