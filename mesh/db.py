"""SQLAlchemy engines for every service that keeps state: PostgreSQL (psycopg 3) or SQLite, by URL."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import MetaData, create_engine, event, text
from sqlalchemy.engine import Connection, Engine, make_url

# The PostgreSQL advisory lock replicas take while they change a schema (any fixed number, the same everywhere).
SCHEMA_LOCK = 0x636F6E73


def create_db_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        url = parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
        return create_engine(
            url, pool_pre_ping=True, pool_size=10, max_overflow=20, connect_args={"connect_timeout": 3}
        )
    if parsed.drivername.startswith("sqlite"):
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 15})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def lock_schema(connection: Connection) -> None:
    """Inside a transaction: wait until no other replica is changing the schema, and keep them waiting until this
    transaction ends (PostgreSQL; SQLite has one writer anyway). Replicas starting at once on a new database
    otherwise race to create the same tables."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK})


def create_tables(engine: Engine, metadata: MetaData) -> None:
    """metadata.create_all, one replica at a time."""
    with engine.begin() as connection:
        lock_schema(connection)
        metadata.create_all(connection)
