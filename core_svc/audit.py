"""The audit log in core's database: core's own records (core's AuditLog writes here), the batches the other
services send through RecordAuditEvents, and ListAuditEvents over them.

Only admins read the log; only services of the mesh (the service key) add to it: mesh.roles checks both before
the servicer runs, and this module checks them again. Records older than the retention setting are deleted, at
start-up and every hour after.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import delete, insert, select
from sqlalchemy.engine import CursorResult, Engine

from constellation.core.v1 import audit_pb2
from core_svc import db
from core_svc.listing import Page, parse_filter
from mesh.audit import FIELD_LIMITS, MAX_BATCH, OUTCOMES
from mesh.config import DEFAULT_PORTS
from mesh.errors import FieldViolation, InvalidArgument, PermissionDenied
from mesh.identity import ANONYMOUS_ADMIN, ROLES, SERVICE_ROLE, Identity
from mesh.ids import new_id

log = logging.getLogger("core.audit")

PRUNE_INTERVAL_S = 3600.0
EVENT_ROLES = ("", *ROLES, SERVICE_ROLE)
TEXT_FIELDS = tuple(FIELD_LIMITS)


def _aware(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; everything stored is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _time(stamp: Timestamp, field: str) -> datetime:
    try:
        return stamp.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidArgument.field(field, "is not a valid time") from None


def _event_to_row(event: audit_pb2.AuditEvent) -> dict:
    when = event.time.ToDatetime(tzinfo=UTC)
    return {"id": new_id("aud", at=when), "time": when, **{f: getattr(event, f) for f in TEXT_FIELDS}}


def _row_to_event(row: db.AuditEventRow) -> audit_pb2.AuditEvent:
    event = audit_pb2.AuditEvent(id=row.id, **{f: getattr(row, f) for f in TEXT_FIELDS})
    event.time.FromDatetime(_aware(row.time))
    return event


def _problems(event: audit_pb2.AuditEvent, path: str) -> list[FieldViolation]:
    """What keeps a record a service sent from being stored."""
    found = []
    for field, limit in FIELD_LIMITS.items():
        value = getattr(event, field)
        if len(value) > limit or not value.isprintable():
            found.append(FieldViolation(f"{path}.{field}", f"at most {limit} printable characters"))
    if event.service not in DEFAULT_PORTS:
        found.append(FieldViolation(f"{path}.service", f"must be one of {', '.join(DEFAULT_PORTS)}"))
    if not event.method:
        found.append(FieldViolation(f"{path}.method", "is required: the name of the method called"))
    if event.outcome not in OUTCOMES:
        found.append(FieldViolation(f"{path}.outcome", "must be the name of a gRPC status code, e.g. OK"))
    if event.role not in EVENT_ROLES:
        found.append(FieldViolation(f"{path}.role", f"must be empty or one of {', '.join(EVENT_ROLES[1:])}"))
    if not event.HasField("time"):
        found.append(FieldViolation(f"{path}.time", "is required: when the call finished"))
    else:
        try:
            event.time.ToDatetime(tzinfo=UTC)
        except (ValueError, OverflowError):
            found.append(FieldViolation(f"{path}.time", "is not a valid time"))
    return found


class AuditStore:
    """Audit records in SQL; also the AuditSink of core's own AuditLog."""

    def __init__(self, engine: Engine, retention_days: int) -> None:
        self._sessions = db.session_factory(engine)
        self.retention = timedelta(days=retention_days)
        self._stopping = threading.Event()

    # The AuditSink side

    def write(self, events: list[audit_pb2.AuditEvent]) -> None:
        if not events:
            return
        with self._sessions() as session:  # one INSERT of many rows: the ORM's per-object work is not needed here
            session.execute(insert(db.AuditEventRow), [_event_to_row(e) for e in events])
            session.commit()

    def close(self) -> None:
        self._stopping.set()

    # RPCs

    def record_from_service(self, caller: Identity, events: list[audit_pb2.AuditEvent]) -> int:
        """Stores the records a service collected; refused to anyone but a service (mesh.roles checks it first)."""
        if caller.role != SERVICE_ROLE and caller != ANONYMOUS_ADMIN:
            raise PermissionDenied("only services of the mesh record audit events")
        if len(events) > MAX_BATCH:
            raise InvalidArgument.field("events", f"has {len(events)} records; at most {MAX_BATCH} a call")
        violations = [v for i, event in enumerate(events) for v in _problems(event, f"events[{i}]")]
        if violations:
            raise InvalidArgument(violations)
        self.write(events)
        return len(events)

    def list(
        self,
        caller: Identity,
        page_size: int,
        page_token: str,
        filter_text: str,
        start: Timestamp | None,
        end: Timestamp | None,
    ) -> tuple[list[audit_pb2.AuditEvent], str]:
        """Records newest first, for admins only."""
        if not caller.is_admin:
            raise PermissionDenied("only admins read the audit log")
        table = db.AuditEventRow
        fields = {
            "subject": lambda v: table.subject == v,
            "method": lambda v: table.method == v,
            "outcome": lambda v: table.outcome == v.upper(),
            "service": lambda v: table.service == v,
            "target_id": lambda v: table.target_id == v,
        }
        clauses = parse_filter(filter_text, fields)
        if start is not None:
            clauses.append(table.time >= _time(start, "start_time"))
        if end is not None:
            clauses.append(table.time < _time(end, "end_time"))
        # A page token is bound to everything that selects the rows: the filter and the time range.
        selection = f"{filter_text.strip()}|{start.ToJsonString() if start else ''}|{end.ToJsonString() if end else ''}"
        page = Page(page_size, page_token, selection)
        with self._sessions() as session:
            rows, token = page.fetch(session, select(table).where(*clauses), table.id, newest_first=True)
        return [_row_to_event(r) for r in rows], token

    # Retention

    def prune(self, now: datetime | None = None) -> int:
        """Deletes records older than the retention; returns how many."""
        cutoff = (now or datetime.now(UTC)) - self.retention
        with self._sessions() as session:
            result = session.execute(delete(db.AuditEventRow).where(db.AuditEventRow.time < cutoff))
            session.commit()
        deleted = result.rowcount if isinstance(result, CursorResult) else 0
        if deleted:
            log.info("old audit records deleted", extra={"deleted": deleted, "retention_days": self.retention.days})
        return deleted

    def start_pruning(self) -> None:
        threading.Thread(target=self._prune_loop, name="audit-retention", daemon=True).start()

    def _prune_loop(self) -> None:
        while True:
            try:
                self.prune()
            except Exception as error:  # the database may be away for a while; the next round tries again
                log.warning("old audit records not deleted", extra={"error": str(error)[:200]})
            if self._stopping.wait(PRUNE_INTERVAL_S):
                return
