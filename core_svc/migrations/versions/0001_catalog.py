"""Catalog: datasets, models, pipelines and what pipelines reference.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("uri", sa.Text, nullable=False),
        sa.Column("sensor", sa.String(64), nullable=False, index=True),
        sa.Column("bands", sa.JSON, nullable=False),
        sa.Column("resolution_m", sa.Float, nullable=False),
        sa.Column("bbox", sa.JSON, nullable=True),
        sa.Column("tags", sa.JSON, nullable=False),
        sa.Column("bands_index", sa.Text, nullable=False),
        sa.Column("tags_index", sa.Text, nullable=False),
        sa.Column("create_time", TIMESTAMP, nullable=False),
        sa.Column("update_time", TIMESTAMP, nullable=False),
    )
    op.create_table(
        "models",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("task", sa.String(32), nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("card", sa.JSON, nullable=False),
        sa.Column("input_spec", sa.JSON, nullable=False),
        sa.Column("outputs", sa.JSON, nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("state_message", sa.Text, nullable=False),
        sa.Column("tags", sa.JSON, nullable=False),
        sa.Column("bands_index", sa.Text, nullable=False),
        sa.Column("tags_index", sa.Text, nullable=False),
        sa.Column("create_time", TIMESTAMP, nullable=False),
        sa.Column("update_time", TIMESTAMP, nullable=False),
        sa.UniqueConstraint("name", "version", name="uq_models_name_version"),
    )
    op.create_table(
        "pipelines",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("create_time", TIMESTAMP, nullable=False),
        sa.Column("update_time", TIMESTAMP, nullable=False),
    )
    op.create_table(
        "pipeline_references",
        sa.Column("pipeline_id", sa.String(40), sa.ForeignKey("pipelines.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("ref_kind", sa.String(16), primary_key=True),
        sa.Column("ref_id", sa.String(40), primary_key=True),
    )
    op.create_index("ix_pipeline_references_ref", "pipeline_references", ["ref_kind", "ref_id"])


def downgrade() -> None:
    op.drop_table("pipeline_references")
    op.drop_table("pipelines")
    op.drop_table("models")
    op.drop_table("datasets")
