"""Run rows and their events in SQL: the only state a run has (see core_svc.runs for the invariant).

Events are serialized RunEvents numbered from 1 per run; appending an event and changing the run's
row happen in one transaction, so a watcher never sees a state without the event that announced it.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from constellation.common.v1 import common_pb2 as common
from core_svc import convert, db
from core_svc.domain import RUN_STATES, TERMINAL, Run
from core_svc.listing import Page, parse_filter
from core_svc.ownership import owner_wanted
from mesh.errors import InvalidArgument
from mesh.identity import Identity
from mesh.ids import new_id

# A check run in an append's transaction before it writes (the driver's lease: mesh.leases.Leases.check).
Fence = Callable[[Session], None]
APPEND_ATTEMPTS = 5

# Run state name <-> RunState value.
STATES: dict[str, common.RunState.ValueType] = {
    name: common.RunState.ValueType(convert.run_state_to_proto(name)) for name in RUN_STATES
}
STATE_NAMES = {value: name for name, value in STATES.items()}


def now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything stored is UTC."""
    return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)


def event(
    type_: int, state: str, message: str = "", source: str = "core", block_id: str = "", queue_position: int = 0
) -> common.RunEvent:
    """A run event as core stores it; the store numbers it and stamps its time."""
    return common.RunEvent(
        type=common.RunEventType.ValueType(type_),
        state=STATES[state],
        message=message,
        source=source,
        block_id=block_id,
        queue_position=queue_position,
    )


def _run_from_row(row: db.RunRow) -> Run:
    return Run(
        id=row.id, pipeline_id=row.pipeline_id, state=row.state, state_message=row.state_message,
        outputs=list(row.outputs), spec=row.spec, launched=row.launched, upstream_sequence=row.upstream_sequence,
        create_time=_aware(row.create_time), start_time=_aware(row.start_time), end_time=_aware(row.end_time),
        started_by=Identity(**row.started_by) if row.started_by else None,
        owner=row.owner,
    )  # fmt: skip


class RunStore:
    """Run rows and their events. Appending an event and changing the row happen in one transaction."""

    def __init__(self, engine: Engine) -> None:
        self._sessions = db.session_factory(engine)
        self._changed = threading.Condition()
        self.version = 0  # bumped by every append here: watchers wait for it to move (or poll: other replicas')

    def create(self, pipeline_id: str, spec: dict, first: common.RunEvent, started_by: Identity) -> Run:
        """A queued run started by `started_by`, who owns it (its `owner` is their subject)."""
        created = now()
        row = db.RunRow(
            id=new_id("run"), pipeline_id=pipeline_id, state="queued", state_message="", spec=spec, outputs=[],
            launched=False, upstream_sequence=0, create_time=created,
            started_by=dataclasses.asdict(started_by), owner=started_by.subject,
        )  # fmt: skip
        with self._sessions() as session:
            session.add(row)
            session.flush()
            self._add_event(session, row.id, first, created)
            session.commit()
            return _run_from_row(row)

    def _add_event(self, session: Session, run_id: str, event: common.RunEvent, when: datetime) -> common.RunEvent:
        # Numbered from the table in the write's transaction: any replica may append (the run's driver under its
        # lease, a cancel on another replica); two appending at once collide on the key and one tries again.
        last = session.scalar(select(func.max(db.RunEventRow.sequence)).where(db.RunEventRow.run_id == run_id))
        event.sequence = (last or 0) + 1
        if not event.HasField("time"):
            event.time.FromDatetime(when)
        session.add(db.RunEventRow(run_id=run_id, sequence=event.sequence, payload=event.SerializeToString()))
        return event

    def append(
        self, run_id: str, event: common.RunEvent, fence: Fence | None = None, **changes: object
    ) -> common.RunEvent:
        """Stores `event` as the run's next and applies `changes` to its row, atomically; wakes watchers.
        `fence` runs in the same transaction first (the driver's lease check: a replica that lost the run
        raises mesh.leases.LeaseLost and writes nothing)."""
        for attempt in range(APPEND_ATTEMPTS):
            with self._sessions() as session:
                try:
                    if fence is not None:
                        fence(session)
                    self._add_event(session, run_id, event, now())
                    if changes:
                        session.execute(update(db.RunRow).where(db.RunRow.id == run_id).values(**changes))
                    session.commit()
                    break
                except IntegrityError:  # another replica took that number first
                    session.rollback()
                    if attempt == APPEND_ATTEMPTS - 1:
                        raise
        with self._changed:
            self.version += 1
            self._changed.notify_all()
        return event

    def wait(self, seen: int, timeout_s: float) -> None:
        """Blocks until an event is appended after `version` was `seen`, or `timeout_s` passed."""
        with self._changed:
            self._changed.wait_for(lambda: self.version != seen, timeout=timeout_s)

    def wake_watchers(self) -> None:
        """Wakes everyone in wait(), e.g. to notice core is stopping."""
        with self._changed:
            self._changed.notify_all()

    def find(self, run_id: str) -> Run | None:
        with self._sessions() as session:
            row = session.get(db.RunRow, run_id)
            return _run_from_row(row) if row else None

    def events_after(self, run_id: str, after: int, limit: int = 500) -> list[common.RunEvent]:
        with self._sessions() as session:
            payloads = session.scalars(
                select(db.RunEventRow.payload)
                .where(db.RunEventRow.run_id == run_id, db.RunEventRow.sequence > after)
                .order_by(db.RunEventRow.sequence)
                .limit(limit)
            )
            return [common.RunEvent.FromString(p) for p in payloads]

    def active_ids(self) -> list[str]:
        with self._sessions() as session:
            active = select(db.RunRow.id).where(db.RunRow.state.not_in(TERMINAL)).order_by(db.RunRow.id)
            return list(session.scalars(active))

    def queued(self) -> list[tuple[str, str]]:
        """(run id, owner) of the runs still waiting for a place, in submission order."""
        table = db.RunRow
        with self._sessions() as session:
            rows = session.execute(
                select(table.id, table.owner).where(table.state == "queued").order_by(table.create_time, table.id)
            )
            return [(run_id, owner or "") for run_id, owner in rows]

    def list(self, caller: Identity, page_size: int, page_token: str, filter_text: str) -> tuple[list[Run], str]:
        table = db.RunRow

        def state(value: str) -> ColumnElement[bool]:
            if value.lower() not in STATES:
                raise InvalidArgument.field("filter", f"state {value!r} is not one of {', '.join(STATES)}")
            return table.state == value.lower()

        page = Page(page_size, page_token, filter_text)
        fields = {
            "pipeline_id": lambda v: table.pipeline_id == v,
            "state": state,
            "owner": lambda v: table.owner == owner_wanted(v, caller),
        }
        clauses = parse_filter(filter_text, fields)
        with self._sessions() as session:
            rows, token = page.fetch(session, select(table).where(*clauses), table.id)
        return [_run_from_row(r) for r in rows], token
