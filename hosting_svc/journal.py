"""Every state change of a hosted model, persisted as an event before anyone sees it.

The builder, the deployer, the monitor and the reconciler all change models
through one `Journal`: it saves the model, appends its next event (the store
keeps sequence numbers gap-free) and holds one lock per model, so a rollout,
a delete and a health check never act on the same model at once. While a
model is packaging or rolling out (domain.IN_PROGRESS), the instance doing it
holds a lease on that work (`working`: the monitor's begin_work/end_work), so
that another instance fails the work if this one dies (Monitor.abandoned).
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from typing import Protocol

from hosting_svc.domain import IN_PROGRESS, DeploymentEvent, HostedModel
from hosting_svc.store import Fence, Store
from mesh.errors import InvalidArgument, NotFound

log = logging.getLogger("hosting")


def now() -> datetime:
    return datetime.now(UTC)


class Working(Protocol):
    def begin_work(self, model_id: str) -> None: ...

    def end_work(self, model_id: str) -> None: ...


class Journal:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.working: Working | None = None  # the monitor, once hosting has one
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def emit(
        self,
        model: HostedModel,
        state: str | None = None,
        message: str = "",
        log_line: str = "",
        fence: Fence | None = None,
    ) -> DeploymentEvent:
        """Save the model (in `state`, when given) and append its next event, in one transaction; with `fence`,
        only while this instance still holds the deployment's lease (else mesh.leases.LeaseLost, nothing
        written)."""
        if self.working is not None and (state or model.state) in IN_PROGRESS:
            # Before the state is written: an instance that reads it in progress finds the work's lease held.
            self.working.begin_work(model.id)
        if state is not None and state != model.state:
            model.state = state
            model.state_message = message
        model.last_updated = now()
        event = self.store.record(model, message, log_line, fence)
        if self.working is not None and model.state not in IN_PROGRESS:
            self.working.end_work(model.id)
        log.info("deployment event", extra={"model_id": model.id, "state": model.state, "event_message": message})
        return event

    def lock(self, model_id: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(model_id, threading.Lock())

    def get(self, model_id: str) -> HostedModel:
        if not model_id:
            raise InvalidArgument.field("model_id", "is required")
        model = self.store.get(model_id)
        if model is None:
            raise NotFound(f"no hosted model has id {model_id!r}")
        return model
