"""Tables, engine and migrations. PostgreSQL (psycopg 3) or SQLite, chosen by DATABASE_URL."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from mesh.db import lock_schema

MIGRATIONS = Path(__file__).parent / "migrations"


class Base(DeclarativeBase):
    pass


class DatasetRow(Base):
    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    uri: Mapped[str] = mapped_column(Text)
    sensor: Mapped[str] = mapped_column(String(64), default="", index=True)
    bands: Mapped[list] = mapped_column(JSON, default=list)
    resolution_m: Mapped[float] = mapped_column(Float, default=0.0)
    bbox: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    tags: Mapped[list] = mapped_column(JSON, default=list)
    # ",a,b," copies of bands and tags, so `tag = "x"` filters with a portable LIKE.
    bands_index: Mapped[str] = mapped_column(Text, default=",")
    tags_index: Mapped[str] = mapped_column(Text, default=",")
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    update_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # The creator's subject; "" for rows from before owners (core_svc.ownership).
    owner: Mapped[str] = mapped_column(String(256), default="", index=True)
    # Scenes of a dataset registered from STAC (core_svc.stac), SceneItem fields with ISO times; [] otherwise.
    items: Mapped[list] = mapped_column(JSON, default=list)


class ModelRow(Base):
    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_models_name_version"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(64))
    task: Mapped[str] = mapped_column(String(32))
    source: Mapped[str] = mapped_column(Text)
    card: Mapped[dict] = mapped_column(JSON, default=dict)
    input_spec: Mapped[dict] = mapped_column(JSON, default=dict)
    outputs: Mapped[list] = mapped_column(JSON, default=list)
    state: Mapped[str] = mapped_column(String(32))
    state_message: Mapped[str] = mapped_column(Text, default="")
    tags: Mapped[list] = mapped_column(JSON, default=list)
    bands_index: Mapped[str] = mapped_column(Text, default=",")
    tags_index: Mapped[str] = mapped_column(Text, default=",")
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    update_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # The creator's subject; "" for rows from before owners (core_svc.ownership).
    owner: Mapped[str] = mapped_column(String(256), default="", index=True)


class PipelineRow(Base):
    __tablename__ = "pipelines"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    spec: Mapped[dict] = mapped_column(JSON)
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    update_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # The creator's subject; "" for rows from before owners (core_svc.ownership).
    owner: Mapped[str] = mapped_column(String(256), default="", index=True)


class PipelineReferenceRow(Base):
    """Which datasets and models a pipeline names, so deleting one in use can be refused."""

    __tablename__ = "pipeline_references"
    __table_args__ = (Index("ix_pipeline_references_ref", "ref_kind", "ref_id"),)

    pipeline_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("pipelines.id", ondelete="CASCADE"), primary_key=True
    )
    ref_kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    ref_id: Mapped[str] = mapped_column(String(40), primary_key=True)


class RunRow(Base):
    """One execution of a pipeline: the spec it ran (a copy), where it is, and how far it got upstream."""

    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    pipeline_id: Mapped[str] = mapped_column(String(40), index=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    state_message: Mapped[str] = mapped_column(Text, default="")
    spec: Mapped[dict] = mapped_column(JSON)
    outputs: Mapped[list] = mapped_column(JSON, default=list)
    # True once the orchestrator accepted the job; `upstream_sequence` is the
    # last orchestrator event core has stored, so a restarted core resumes after it.
    launched: Mapped[bool] = mapped_column(Boolean, default=False)
    upstream_sequence: Mapped[int] = mapped_column(Integer, default=0)
    # Who ran it ({"subject", "role", "name"}): the driver calls hosting and the orchestrator on their behalf.
    started_by: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    start_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    end_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Who started it (not necessarily the pipeline's owner); "" for rows from before owners.
    owner: Mapped[str] = mapped_column(String(256), default="", index=True)


class RunEventRow(Base):
    """A run's merged event stream: serialized constellation.common.v1.RunEvent, numbered from 1."""

    __tablename__ = "run_events"

    run_id: Mapped[str] = mapped_column(String(40), ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    sequence: Mapped[int] = mapped_column(Integer, primary_key=True)
    payload: Mapped[bytes] = mapped_column(LargeBinary)


class UserRow(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ApiKeyRow(Base):
    """A user's API key: its public id and the sha256 of its secret, never the secret (core_svc.accounts)."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(40), ForeignKey("users.id", ondelete="CASCADE"), index=True)
    secret_sha256: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(Text, default="")
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expire_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoke_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_used_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class AuditEventRow(Base):
    """One mutating call on a service of the mesh (constellation.core.v1.AuditEvent); ids sort by `time`."""

    __tablename__ = "audit_events"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    time: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    service: Mapped[str] = mapped_column(String(32))
    method: Mapped[str] = mapped_column(String(128), index=True)
    target_id: Mapped[str] = mapped_column(String(128), default="")
    subject: Mapped[str] = mapped_column(String(256), index=True)
    role: Mapped[str] = mapped_column(String(16), default="")
    request_id: Mapped[str] = mapped_column(String(128), default="")
    outcome: Mapped[str] = mapped_column(String(32), index=True)
    peer: Mapped[str] = mapped_column(String(256), default="")
    forwarded_for: Mapped[str] = mapped_column(String(256), default="")


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        lock_schema(connection)  # replicas starting together migrate one after the other
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def ping(engine: Engine) -> None:
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))


def session_factory(engine: Engine) -> sessionmaker:
    return sessionmaker(engine, expire_on_commit=False)
