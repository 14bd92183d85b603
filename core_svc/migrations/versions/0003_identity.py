"""Users and their API keys; who started each run.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("disabled", sa.Boolean, nullable=False),
        sa.Column("create_time", TIMESTAMP, nullable=False),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("user_id", sa.String(40), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True),
        sa.Column("secret_sha256", sa.String(64), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("create_time", TIMESTAMP, nullable=False),
        sa.Column("expire_time", TIMESTAMP, nullable=True),
        sa.Column("revoke_time", TIMESTAMP, nullable=True),
        sa.Column("last_used_time", TIMESTAMP, nullable=True),
    )
    with op.batch_alter_table("runs") as runs:
        runs.add_column(sa.Column("started_by", sa.JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as runs:
        runs.drop_column("started_by")
    op.drop_table("api_keys")
    op.drop_table("users")
