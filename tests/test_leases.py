"""mesh.leases on SQLite and PostgreSQL: one holder at a time, renewal, takeover after expiry with a higher
generation, and fencing (a holder that lost its lease cannot write, even in a transaction begun before)."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, insert, select

from mesh.db import create_db_engine
from mesh.leases import Lease, LeaseLost, Leases
from tests.pg import create_database

TTL = 0.6


@pytest.fixture
def engine(database_url):
    engine = create_db_engine(database_url)
    yield engine
    engine.dispose()


def test_one_holder_at_a_time_and_renewal_keeps_it(engine):
    a, b = Leases(engine, TTL, "a"), Leases(engine, TTL, "b")
    lease = a.acquire("run:1")
    assert lease == Lease("run:1", "a", 1)
    assert b.acquire("run:1") is None, "held and unexpired: no one else gets it"
    assert a.acquire("run:1") == lease, "its holder gets it again, same generation"
    for _ in range(4):  # renewed past several TTLs, it never frees
        time.sleep(TTL / 3)
        assert a.renew(lease)
        assert b.acquire("run:1") is None
    assert a.holder_of("run:1") == "a"
    assert b.acquire("run:2") == Lease("run:2", "b", 1), "leases are per name"


def test_an_expired_lease_is_taken_with_a_higher_generation_and_the_old_holder_cannot_renew(engine):
    a, b = Leases(engine, TTL, "a"), Leases(engine, TTL, "b")
    old = a.acquire("deployment:m")
    assert old is not None
    time.sleep(TTL + 0.2)  # a stopped renewing (it died)
    assert a.holder_of("deployment:m") == ""
    new = b.acquire("deployment:m")
    assert new == Lease("deployment:m", "b", old.generation + 1)
    assert not a.renew(old), "the old holder learns it lost the lease"
    assert a.acquire("deployment:m") is None


def test_release_frees_at_once_and_the_next_tenure_has_a_new_generation(engine):
    a, b = Leases(engine, 60.0, "a"), Leases(engine, 60.0, "b")
    first = a.acquire("run:9")
    assert first is not None
    a.release(first)
    second = b.acquire("run:9")
    assert second is not None and second.generation == first.generation + 1
    b.release(second)
    third = a.acquire("run:9")
    assert third is not None and third.generation == second.generation + 1, "even for the same holder"


def test_a_dead_holders_leases_all_end_at_once_and_only_its(engine):
    """A hosting instance restarted on the same host ends its dead predecessor's leases (expire_held_by):
    they are free at once with a new generation, the dead holder cannot renew, and others' leases stay."""
    dead, other, successor = Leases(engine, 60.0, "dead"), Leases(engine, 60.0, "other"), Leases(engine, 60.0, "next")
    first, second = dead.acquire("work:m1"), dead.acquire("deployment:m1")
    kept = other.acquire("deployment:m2")
    assert first and second and kept and successor.acquire("work:m1") is None
    successor.expire_held_by("dead")
    taken = successor.acquire("work:m1")
    assert taken is not None and taken.generation == first.generation + 1
    assert successor.holder_of("deployment:m1") == "" and not dead.renew(second)
    assert successor.holder_of("deployment:m2") == "other" and other.renew(kept)


def test_fencing_a_stale_holder_writes_nothing(engine):
    """The holder checks its lease in each write's transaction: after expiry and a steal, its write fails and
    rolls back; the new holder's goes through."""
    writes = Table("fenced_writes", MetaData(), Column("value", Integer))
    writes.create(engine)
    a, b = Leases(engine, TTL, "a"), Leases(engine, TTL, "b")
    old = a.acquire("run:f")
    assert old is not None

    def write(leases: Leases, lease: Lease, value: int) -> None:
        with engine.begin() as connection:
            leases.check(connection, lease)
            connection.execute(insert(writes).values(value=value))

    write(a, old, 1)
    time.sleep(TTL + 0.2)
    with pytest.raises(LeaseLost):  # expired, even before anyone took it
        write(a, old, 2)
    new = b.acquire("run:f")
    assert new is not None
    with pytest.raises(LeaseLost):
        write(a, old, 3)
    write(b, new, 4)
    with engine.connect() as connection:
        assert sorted(connection.scalars(select(writes.c.value))) == [1, 4]


def test_on_postgresql_a_steal_waits_for_the_holders_write_in_flight(postgres_admin_url):
    """The check locks the lease row until the write commits: a replica taking the lease after it expired
    meanwhile does so only once that write is in, so the new holder reads everything the old one wrote."""
    engine = create_db_engine(create_database(postgres_admin_url))  # row locks: SQLite has one writer anyway
    writes = Table("fenced_inflight", MetaData(), Column("value", Integer))
    writes.create(engine)
    a, b = Leases(engine, TTL, "a"), Leases(engine, TTL, "b")
    old = a.acquire("run:w")
    assert old is not None
    checked, taken = threading.Event(), []

    def steal() -> None:
        checked.wait(5)
        time.sleep(TTL + 0.2)  # the lease expired while a's transaction is still open
        taken.append(b.acquire("run:w"))

    thief = threading.Thread(target=steal)
    thief.start()
    with engine.begin() as connection:
        a.check(connection, old)
        checked.set()
        time.sleep(TTL + 0.6)
        assert not taken, "the steal waits on the row a's write holds"
        connection.execute(insert(writes).values(value=1))
    thief.join(10)
    engine.dispose()
    assert taken and taken[0] is not None and taken[0].generation == old.generation + 1


def test_core_appends_a_runs_event_only_under_its_current_lease_and_numbers_across_replicas(database_url):
    """Two cores' RunStores on one database: the driver whose lease was taken writes no event (nor its state
    change); the new driver's events follow without a gap, and an unfenced append (a cancel stored by a replica
    that does not drive the run) takes the next number too."""
    from core_svc.db import migrate
    from core_svc.run_store import RunStore, event
    from mesh.identity import Identity

    engine = create_db_engine(database_url)
    migrate(engine)
    first, second = RunStore(engine), RunStore(engine)
    run = first.create("pl_1", {"blocks": []}, event(1, "queued", "queued"), Identity("user", "editor"))
    a, b = Leases(engine, TTL, "core-a"), Leases(engine, TTL, "core-b")
    old = a.acquire(f"run:{run.id}")
    assert old is not None
    first.append(run.id, event(2, "starting", "deploying"), lambda s: a.check(s, old), state="starting")
    time.sleep(TTL + 0.2)  # core-a stalls past its lease; core-b takes the run
    new = b.acquire(f"run:{run.id}")
    assert new is not None
    with pytest.raises(LeaseLost):
        first.append(run.id, event(2, "failed", "stale"), lambda s: a.check(s, old), state="failed")
    second.append(run.id, event(2, "running", "resumed"), lambda s: b.check(s, new), state="running")
    first.append(run.id, event(2, "canceling", "cancel requested"), state="canceling")
    events = second.events_after(run.id, 0)
    assert [(e.sequence, e.message) for e in events] == [
        (1, "queued"), (2, "deploying"), (3, "resumed"), (4, "cancel requested")
    ]  # fmt: skip
    assert second.find(run.id).state == "canceling", "the stale driver's 'failed' never landed"
    engine.dispose()
