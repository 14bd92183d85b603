"""Hosting's own persistence: hosted models and their event history (SQLAlchemy; SQLite by default)."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

from sqlalchemy import JSON, DateTime, Integer, String, Text, UniqueConstraint, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from hosting_svc.domain import DeploymentEvent, Endpoint, HostedModel
from mesh.db import create_db_engine, create_tables

Fence = Callable[[Session], None]  # raises (mesh.leases.LeaseLost) to write nothing
APPEND_ATTEMPTS = 5  # instances appending one model's event at once: the loser numbers it again


class Base(DeclarativeBase):
    pass


class ModelRow(Base):
    __tablename__ = "hosted_models"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_hosted_name_version"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(64))
    data: Mapped[dict] = mapped_column(JSON)


class EventRow(Base):
    __tablename__ = "deployment_events"

    model_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    sequence: Mapped[int] = mapped_column(Integer, primary_key=True)
    time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    state: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text, default="")
    log_line: Mapped[str] = mapped_column(Text, default="")
    endpoints: Mapped[list] = mapped_column(JSON, default=list)


def _encode(model: HostedModel) -> dict:
    data = dataclasses.asdict(model)
    for key in ("last_updated", "deployed_at"):
        data[key] = data[key].isoformat() if data[key] else None
    return data


def _decode(data: dict) -> HostedModel:
    data = dict(data)
    data["endpoints"] = [Endpoint(**e) for e in data["endpoints"]]
    for key in ("last_updated", "deployed_at"):
        data[key] = datetime.fromisoformat(data[key]) if data[key] else None
    return HostedModel(**data)


def _put(session: Session, model: HostedModel) -> None:
    """The model's row, inserted or updated, in `session`'s transaction."""
    row = session.get(ModelRow, model.id)
    if row is None:
        session.add(ModelRow(id=model.id, name=model.name, version=model.version, data=_encode(model)))
    else:
        row.data = _encode(model)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class Store:
    """Models and events; `wait_for_events` lets watchers block until something new is written."""

    def __init__(self, url: str) -> None:
        self.engine = create_db_engine(url)
        create_tables(self.engine, Base.metadata)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._changed = threading.Condition()
        self._lock = threading.Lock()  # serialises writes: sequence numbers stay gap-free

    def save(self, model: HostedModel) -> None:
        with self._lock, self._sessions() as session:
            _put(session, model)
            session.commit()

    def get(self, model_id: str) -> HostedModel | None:
        with self._sessions() as session:
            row = session.get(ModelRow, model_id)
            return _decode(row.data) if row else None

    def find(self, name: str, version: str) -> HostedModel | None:
        with self._sessions() as session:
            row = session.scalar(select(ModelRow).where(ModelRow.name == name, ModelRow.version == version))
            return _decode(row.data) if row else None

    def all(self, name: str | None = None, version: str | None = None) -> list[HostedModel]:
        """Every model in id (creation) order; of one name and/or version when given."""
        statement = select(ModelRow).order_by(ModelRow.id)
        if name is not None:
            statement = statement.where(ModelRow.name == name)
        if version is not None:
            statement = statement.where(ModelRow.version == version)
        with self._sessions() as session:
            return [_decode(r.data) for r in session.scalars(statement)]

    def delete(self, model_id: str) -> None:
        with self._lock, self._sessions() as session:
            row = session.get(ModelRow, model_id)
            if row is not None:
                session.delete(row)
                session.commit()

    def record(
        self, model: HostedModel, message: str = "", log_line: str = "", fence: Fence | None = None
    ) -> DeploymentEvent:
        """Saves the model and appends its current state as its next event in one transaction, then wakes
        watchers. `fence` runs in that transaction first (the monitor's lease check: an instance that lost the
        deployment raises mesh.leases.LeaseLost and writes nothing)."""
        now = datetime.now(UTC)
        for attempt in range(APPEND_ATTEMPTS):
            try:
                created = self._record(model, message, log_line, now, fence)
                break
            except IntegrityError:  # another hosting instance took that number first
                if attempt == APPEND_ATTEMPTS - 1:
                    raise
        with self._changed:
            self._changed.notify_all()
        return created

    def _record(
        self, model: HostedModel, message: str, log_line: str, now: datetime, fence: Fence | None
    ) -> DeploymentEvent:
        with self._lock, self._sessions() as session:
            if fence is not None:
                fence(session)
            _put(session, model)
            last = session.scalar(
                select(EventRow.sequence)
                .where(EventRow.model_id == model.id)
                .order_by(EventRow.sequence.desc())
                .limit(1)
            )
            created = DeploymentEvent(
                sequence=(last or 0) + 1,
                time=now,
                model_id=model.id,
                state=model.state,
                message=message,
                log_line=log_line,
                endpoints=[dataclasses.replace(e) for e in model.endpoints],
            )
            session.add(
                EventRow(
                    model_id=model.id,
                    sequence=created.sequence,
                    time=now,
                    state=created.state,
                    message=message,
                    log_line=log_line,
                    endpoints=[dataclasses.asdict(e) for e in created.endpoints],
                )
            )
            session.commit()
        return created

    def events(self, model_id: str, after: int = 0) -> list[DeploymentEvent]:
        with self._sessions() as session:
            rows = session.scalars(
                select(EventRow)
                .where(EventRow.model_id == model_id, EventRow.sequence > after)
                .order_by(EventRow.sequence)
            )
            return [
                DeploymentEvent(
                    r.sequence,
                    _aware(r.time),
                    r.model_id,
                    r.state,
                    r.message,
                    r.log_line,
                    [Endpoint(**e) for e in r.endpoints],
                )
                for r in rows
            ]

    def follow(self, model_id: str, after: int, keep_going) -> Iterator[DeploymentEvent]:
        """Events after `after`, then new ones as they are written, while keep_going() is true."""
        while keep_going():
            batch = self.events(model_id, after)
            for item in batch:
                after = item.sequence
                yield item
            if not batch:
                with self._changed:
                    self._changed.wait(timeout=0.5)
