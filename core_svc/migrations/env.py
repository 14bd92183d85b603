"""Alembic environment: runs on the connection core hands over (see core_svc.db.migrate),
or on DATABASE_URL (read through the bootstrap's settings) when called from the alembic command line."""

from alembic import context
from sqlalchemy import create_engine

from core_svc.db import Base
from mesh.config import Settings

target_metadata = Base.metadata
connection = context.config.attributes.get("connection")

if connection is not None:
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    engine = create_engine(Settings.from_env().database_url_raw or "sqlite:///core.db")
    with engine.begin() as conn:
        context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
