"""Leases in a service's own database: which replica does a piece of work that only one may do at a time
(drive a run, watch a deployment), and who takes it over when that replica dies.

A lease is a row (`leases`: name, holder, generation, expire_time). A replica acquires a free or expired
lease, renews it well before it expires, and releases it when done. A replica that dies stops renewing;
once the lease expires any other replica may take it, which bumps the generation: the fencing token.
Every write the holder makes under a lease checks, in the write's own transaction, that it still holds
that generation unexpired (`Leases.check`), so a holder that was paused past its expiry (and has been
replaced) cannot write after its successor: on PostgreSQL the check locks the row until the write
commits, so a steal waits for it and the successor reads it.

A lease row rather than PostgreSQL advisory locks: advisory locks live as long as a session, so a replica
would need one open connection per lease it holds (runs, deployments) outside the pool, they give no
fencing token to check writes against, and SQLite (the embedded single-process mode) has none. The
row works the same on both. Expiry uses the replicas' clocks (UTC), so they must agree to well under
the TTL (NTP).
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, case, insert, or_, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mesh.db import create_tables

metadata = MetaData()
# Times are naive UTC: SQLite keeps no zone, and comparisons must mean the same on both databases.
leases_table = Table(
    "leases",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("holder", String(128), nullable=False),
    Column("generation", Integer, nullable=False),
    Column("expire_time", DateTime(), nullable=False),
)


class LeaseLost(Exception):
    """The lease expired or another replica holds it now: the work is no longer this replica's."""


@dataclass(frozen=True)
class Lease:
    name: str
    holder: str
    generation: int  # the fencing token: bumped each time the lease changes hands


def holder_id() -> str:
    """This process's name as a holder: host, pid and a random part (a pid is reused after a restart)."""
    return f"{socket.gethostname()[:64]}-{os.getpid()}-{secrets.token_hex(4)}"


EXPIRED = datetime(1970, 1, 1)


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Leases:
    """This replica's leases on `engine`, each held for `ttl_s` after it was last acquired, renewed or checked."""

    def __init__(self, engine: Engine, ttl_s: float, holder: str = "") -> None:
        self.engine = engine
        self.ttl = timedelta(seconds=ttl_s)
        self.holder = holder or holder_id()
        create_tables(engine, metadata)

    def acquire(self, name: str) -> Lease | None:
        """The lease on `name` if it is free, expired or already this replica's (then its generation stays);
        None while another replica holds it."""
        now = _now()
        table = leases_table
        with self.engine.begin() as connection:
            changed = connection.execute(
                update(table)
                .where(table.c.name == name, or_(table.c.holder == self.holder, table.c.expire_time < now))
                .values(
                    # a new tenure (the lease had expired or was released) gets a new fencing token
                    generation=case((table.c.expire_time < now, table.c.generation + 1), else_=table.c.generation),
                    holder=self.holder,
                    expire_time=now + self.ttl,
                )
            )
            if changed.rowcount == 1:
                generation = connection.scalar(select(table.c.generation).where(table.c.name == name))
                return Lease(name, self.holder, int(generation or 0))
        try:
            with self.engine.begin() as connection:
                connection.execute(
                    insert(table).values(name=name, holder=self.holder, generation=1, expire_time=now + self.ttl)
                )
        except IntegrityError:  # someone holds it (or took it just now)
            return None
        return Lease(name, self.holder, 1)

    def renew(self, lease: Lease) -> bool:
        """Extends `lease` by the TTL; False when it was lost (expired and taken, or released)."""
        with self.engine.begin() as connection:
            return self._extend(connection, lease)

    def check(self, session: Session | Connection, lease: Lease) -> None:
        """Inside a write's transaction: raises LeaseLost unless `lease` is still held unexpired, and extends it.
        On PostgreSQL the row stays locked until the transaction ends, so no one takes the lease meanwhile."""
        if not self._extend(session, lease):
            raise LeaseLost(f"lease {lease.name!r} (generation {lease.generation}) is no longer held by this replica")

    def _extend(self, connection: Session | Connection, lease: Lease) -> bool:
        table = leases_table
        now = _now()
        changed = connection.execute(
            update(table)
            .where(
                table.c.name == lease.name,
                table.c.holder == lease.holder,
                table.c.generation == lease.generation,
                table.c.expire_time >= now,
            )
            .values(expire_time=now + self.ttl)
        )
        return changed.rowcount == 1  # type: ignore[attr-defined]

    def release(self, lease: Lease) -> None:
        """Gives the lease up (the work is done, or this replica stops): another replica may take it at once. The
        row stays, expired, so the next tenure's generation is higher than every earlier one."""
        table = leases_table
        with self.engine.begin() as connection:
            connection.execute(
                update(table)
                .where(
                    table.c.name == lease.name,
                    table.c.holder == lease.holder,
                    table.c.generation == lease.generation,
                )
                .values(expire_time=EXPIRED)
            )

    def expire_held_by(self, holder: str) -> None:
        """Ends every lease `holder` holds: for a holder known to be dead (a process of this host that is gone),
        so that its work is taken over now, not a TTL later. The next tenure of each gets a higher generation."""
        table = leases_table
        with self.engine.begin() as connection:
            connection.execute(update(table).where(table.c.holder == holder).values(expire_time=EXPIRED))

    def holder_of(self, name: str) -> str:
        """Who holds `name` unexpired; "" when no one does."""
        table = leases_table
        with self.engine.connect() as connection:
            row = connection.execute(
                select(table.c.holder).where(table.c.name == name, table.c.expire_time >= _now())
            ).first()
        return row[0] if row else ""

    def held(self, prefix: str) -> list[str]:
        """The names starting with `prefix` that someone holds unexpired."""
        table = leases_table
        with self.engine.connect() as connection:
            return list(
                connection.scalars(
                    select(table.c.name).where(
                        table.c.name.startswith(prefix, autoescape=True), table.c.expire_time >= _now()
                    )
                )
            )
