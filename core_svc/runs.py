"""Runs: deploy a pipeline's models through hosting, launch its job on the orchestrator, and keep one
event stream per run that merges both.

Everything a run is lives in core's database: the run row (its state, the spec it ran, its outputs,
whether the orchestrator accepted it and the last orchestrator event stored) and its events
(serialized RunEvents numbered from 1). A driver thread per active run does the work. After a
restart core starts a driver again for every run that had not ended; each stage is idempotent (a
healthy deployment is reused, LaunchRun is keyed by the run id, the orchestrator's stream resumes
after the last event stored), so nothing is lost or done twice.

This module is the API the servicer calls (`Runs`); the parts it drives live beside it:
`run_store` (rows and events in SQL), `run_driver` (one run's stages), `deployments` (the run's
side of hosting: deploy a model, watch its deployments during the run).
"""

from __future__ import annotations

import builtins
import logging
import threading
from collections.abc import Callable, Iterator

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from constellation.common.v1 import common_pb2 as common
from constellation.hosting.v1 import hosting_pb2_grpc
from constellation.orchestrator.v1 import orchestrator_pb2_grpc
from core_svc.catalog import Catalog
from core_svc.domain import Run
from core_svc.ownership import check_may_change, check_may_create
from core_svc.run_driver import RunContext, RunDriver
from core_svc.run_queue import RunQueue
from core_svc.run_store import RunStore, event
from core_svc.settings import CoreSettings
from mesh.errors import FailedPrecondition, InvalidArgument, NotFound
from mesh.identity import Identity
from mesh.leases import Leases
from mesh.services import peer_channel

log = logging.getLogger("core.runs")

E = common.RunEventType


class Runs:
    """RunPipeline, GetRun, ListRuns, WatchRun and CancelRun, with one driver thread per active run;
    at most `max_running_runs` of them past the queue (core_svc.run_queue)."""

    def __init__(self, engine: Engine, catalog: Catalog, settings: CoreSettings) -> None:
        self.catalog, self.settings = catalog, settings
        self.store = RunStore(engine)
        self._hosting_channel = peer_channel(settings.hosting_address, settings.tls)
        self._orchestrator_channel = peer_channel(settings.orchestrator_address, settings.tls)
        self.stopping = threading.Event()
        self.queue = RunQueue(settings.max_running_runs, settings.max_running_runs_per_user)
        self.leases = Leases(engine, settings.lease_ttl_s)
        self._context = RunContext(
            queue=self.queue,
            leases=self.leases,
            store=self.store,
            catalog=catalog,
            hosting=hosting_pb2_grpc.HostingServiceStub(self._hosting_channel),
            orchestrator=orchestrator_pb2_grpc.OrchestratorServiceStub(self._orchestrator_channel),
            settings=settings,
            stopping=self.stopping,
        )
        self._drivers: dict[str, RunDriver] = {}
        self._drivers_lock = threading.Lock()

    # RPCs

    def run_pipeline(self, pipeline_id: str, caller: Identity) -> Run:
        """Queues a run owned by `caller` (any editor may run any pipeline) and starts its driver."""
        check_may_create(caller, "run")
        if not pipeline_id:
            raise InvalidArgument.field("pipeline_id", "is required: the id of a stored pipeline (see ListPipelines)")
        pipeline = self.catalog.get_pipeline(pipeline_id)
        problems, _ = self.catalog.validate_pipeline(pipeline.spec)
        if problems:
            listed = "; ".join(f"{p.field}: {p.description}" for p in problems[:5])
            raise FailedPrecondition(f"pipeline {pipeline.name!r} is no longer valid against the catalog: {listed}")
        queued = event(E.RUN_EVENT_TYPE_RUN_QUEUED, "queued", f"run of pipeline {pipeline.name!r} queued")
        # Who started it is stored on the row (its owner, and whom the driver's calls to hosting and the
        # orchestrator are for): the driver works in threads of its own, outside the caller's call.
        run = self.store.create(pipeline_id, pipeline.spec.to_json(), queued, caller)
        self.queue.enter(run.id, caller.subject)
        self._start_driver(run.id)
        return run

    def get(self, run_id: str) -> Run:
        if not run_id:
            raise InvalidArgument.field("id", "is required: the id of the run")
        run = self.store.find(run_id)
        if run is None:
            raise NotFound(f"no run has id {run_id!r}")
        return run

    def list(self, caller: Identity, page_size: int, page_token: str, filter_text: str) -> tuple[list[Run], str]:
        return self.store.list(caller, page_size, page_token, filter_text)

    def watch(self, run_id: str, after: int, is_active: Callable[[], bool]) -> Iterator[common.RunEvent]:
        if not run_id:
            raise InvalidArgument.field("run_id", "is required: the id of the run to watch")
        if after < 0:
            raise InvalidArgument.field("after_sequence", "must be 0 (from the start) or a sequence number seen before")
        self.get(run_id)
        store = self.store
        while is_active() and not self.stopping.is_set():
            seen = store.version  # read before the events, so an append after them is not missed
            ended = self.get(run_id).ended  # likewise: the final event is stored with the final state
            events = store.events_after(run_id, after)
            if events:
                yield from events
                after = events[-1].sequence
                continue
            if ended:
                return
            store.wait(seen, timeout_s=1.0)

    def cancel(self, run_id: str, caller: Identity) -> Run:
        run = self.get(run_id)
        check_may_change(caller, "run", run.id, run.owner)
        if run.ended:
            raise FailedPrecondition(f"run {run_id!r} has already ended ({run.state}); there is nothing to cancel")
        with self._drivers_lock:
            driver = self._drivers.get(run_id)
        if driver is None:  # no driver here: another replica's hears of it within lease_renew_s; else one starts
            requested = event(E.RUN_EVENT_TYPE_RUN_CANCELING, "canceling", "cancel requested")
            self.store.append(run_id, requested, state="canceling")
            self._start_driver(run_id)
        elif run.state != "canceling":
            driver.emit(E.RUN_EVENT_TYPE_RUN_CANCELING, "cancel requested", state="canceling")
            driver.cancel()
            self.queue.wake()  # a driver waiting for its turn ends the run now
        return self.get(run_id)

    # Drivers

    def _start_driver(self, run_id: str) -> bool:
        """Starts a driver for the run if none runs here and its lease is free (or expired: its replica died);
        False while another replica drives it (the run leaves this replica's queue)."""
        with self._drivers_lock:
            if run_id in self._drivers or self.stopping.is_set():
                return False
            lease = self.leases.acquire(f"run:{run_id}")
            if lease is None:
                self.queue.leave(run_id)
                return False
            driver = RunDriver(self._context, run_id, lease)
            self._drivers[run_id] = driver
        threading.Thread(target=self._drive, args=(driver,), name=f"run-{run_id}", daemon=True).start()
        return True

    def _drive(self, driver: RunDriver) -> None:
        try:
            driver.drive()
        finally:
            self.queue.leave(driver.run_id)
            with self._drivers_lock:
                self._drivers.pop(driver.run_id, None)
            try:  # another replica may take the run (if it has not ended) at once rather than after the TTL
                self.leases.release(driver.lease)
            except SQLAlchemyError:
                log.warning("could not release a run's lease; it expires", extra={"run_id": driver.run_id})

    def resume(self) -> builtins.list[str]:
        """Start drivers for the unfinished runs no replica drives (all of them after a restart of the only
        core; those of a dead replica once their leases expire). Returns the ids of the runs taken."""
        active = self.store.active_ids()
        with self._drivers_lock:
            mine = set(self._drivers)
        for run_id, user in self.store.queued():  # before any driver starts, so they keep their order
            if run_id not in mine:
                self.queue.enter(run_id, user)
        taken = [run_id for run_id in active if run_id not in mine and self._start_driver(run_id)]
        if taken:
            log.info("driving runs no replica drove", extra={"runs": taken})
        return taken

    def start_keeper(self) -> None:
        """Every lease_renew_s: renew the leases of the runs driven here, pass on a cancel asked of another
        replica, and take the runs whose replica died."""
        threading.Thread(target=self._keep, name="run-leases", daemon=True).start()

    def _keep(self) -> None:
        while not self.stopping.wait(self.settings.lease_renew_s):
            try:
                self._keep_once()
            except SQLAlchemyError:  # the database is away for a moment: leases expire if it stays away
                log.warning("could not renew run leases", exc_info=True)

    def _keep_once(self) -> None:
        with self._drivers_lock:
            drivers = list(self._drivers.values())
        for driver in drivers:
            if not self.leases.renew(driver.lease):
                log.warning("lost a run's lease; another replica drives it", extra={"run_id": driver.run_id})
                driver.lost()
                continue
            run = self.store.find(driver.run_id)
            if run is not None and run.state == "canceling" and not driver.canceled:
                driver.cancel()  # asked of another replica, which stored the request
                self.queue.wake()
        self.resume()

    def close(self) -> None:
        """Stops driving: each driver ends without ending its run and releases its lease, so another replica
        (or the next core) takes the run at once."""
        self.stopping.set()
        self.queue.wake()
        with self._drivers_lock:
            drivers = list(self._drivers.values())
        for driver in drivers:
            driver.interrupt()
            try:  # a driver still writing finds its lease gone (mesh.leases fencing) and stops
                self.leases.release(driver.lease)
            except SQLAlchemyError:
                log.warning("could not release a run's lease; it expires", extra={"run_id": driver.run_id})
        self.store.wake_watchers()
        self._hosting_channel.close()
        self._orchestrator_channel.close()
