"""Runs: deploy a pipeline's models through hosting, launch its job on the orchestrator, and keep one
event stream per run that merges both.

Everything a run is lives in core's database: the run row (its state, the spec it ran, its outputs,
whether the orchestrator accepted it and the last orchestrator event stored) and its events
(serialized RunEvents numbered from 1). A driver thread per active run does the work. After a
restart core starts a driver again for every run that had not ended; each stage is idempotent (a
healthy deployment is reused, LaunchRun is keyed by the run id, the orchestrator's stream resumes
after the last event stored), so nothing is lost or done twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import grpc
from sqlalchemy import func, select, update
from sqlalchemy.engine import Engine

from constellation.common.v1 import common_pb2 as common
from constellation.hosting.v1 import hosting_pb2, hosting_pb2_grpc
from constellation.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from core_svc import convert, db
from core_svc.catalog import Catalog, Page, parse_filter, spec_from_json, spec_to_json
from core_svc.domain import RUN_STATES, TERMINAL, Model, Run
from mesh.errors import FailedPrecondition, InvalidArgument, NotFound
from mesh.ids import new_id
from clients.hosting import DeployFailed, DeployHooks, ModelDeployer, Target, find_hosted, state_name
from mesh.services import insecure_channel

log = logging.getLogger("core.runs")

E = common.RunEventType
S = common.RunState
STATES = {name: convert.run_state_to_proto(name) for name in RUN_STATES}
STATE_NAMES = {v: k for k, v in STATES.items()}


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime | None) -> datetime | None:
    return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)


def _model_label(model: Model) -> str:
    return f"{model.name}:{model.version}"


@dataclass
class RunSettings:
    hosting_address: str
    orchestrator_address: str
    # Credentials core presents to its peers when the mesh has API keys.
    metadata: tuple[tuple[str, str], ...] = ()
    # How long a model may take to package and become healthy.
    deploy_timeout_s: float = 1800.0
    # How long core keeps trying to reach the orchestrator when its stream breaks.
    reconnect_s: float = 120.0
    peer_timeout_s: float = 30.0


def _run_from_row(row: db.RunRow) -> Run:
    return Run(
        id=row.id, pipeline_id=row.pipeline_id, state=row.state, state_message=row.state_message, outputs=list(row.outputs),
        spec=row.spec, launched=row.launched, upstream_sequence=row.upstream_sequence, create_time=_aware(row.create_time),
        start_time=_aware(row.start_time), end_time=_aware(row.end_time),
    )  # fmt: skip


def output_to_dict(output: common.RunOutput) -> dict:
    return {"name": output.name, "uri": output.uri, "media_type": output.media_type, "block_id": output.block_id}


class StageFailed(Exception):
    """A stage of a run failed for a reason the user should read; `source` names the service."""

    def __init__(self, source: str, message: str) -> None:
        super().__init__(message)
        self.source, self.message = source, message


class Canceled(Exception):
    pass


class RunStore:
    """Run rows and their events in SQL. Appending an event and changing the row happen in one transaction."""

    def __init__(self, engine: Engine) -> None:
        self._sessions = db.session_factory(engine)
        self._lock = threading.Lock()
        self._next: dict[str, int] = {}
        self.changed = threading.Condition()
        self.version = 0  # bumped by every append: watchers wait for it to move

    def create(self, pipeline_id: str, spec: dict, first: common.RunEvent) -> Run:
        now = _now()
        row = db.RunRow(
            id=new_id("run"), pipeline_id=pipeline_id, state="queued", state_message="", spec=spec, outputs=[],
            launched=False, upstream_sequence=0, create_time=now,
        )  # fmt: skip
        with self._sessions() as session:
            session.add(row)
            session.flush()
            self._add_event(session, row.id, first, now)
            session.commit()
            return _run_from_row(row)

    def _add_event(self, session, run_id: str, event: common.RunEvent, now: datetime) -> common.RunEvent:  # type: ignore[no-untyped-def]
        with self._lock:
            if run_id not in self._next:
                last = session.scalar(select(func.max(db.RunEventRow.sequence)).where(db.RunEventRow.run_id == run_id))
                self._next[run_id] = (last or 0) + 1
            sequence = self._next[run_id]
            self._next[run_id] += 1
        event.sequence = sequence
        if not event.HasField("time"):
            event.time.FromDatetime(now)
        session.add(db.RunEventRow(run_id=run_id, sequence=sequence, payload=event.SerializeToString()))
        return event

    def append(self, run_id: str, event: common.RunEvent, **changes: object) -> common.RunEvent:
        """Stores `event` as the run's next and applies `changes` to its row, atomically; wakes watchers."""
        now = _now()
        with self._sessions() as session:
            try:
                self._add_event(session, run_id, event, now)
                if changes:
                    session.execute(update(db.RunRow).where(db.RunRow.id == run_id).values(**changes))
                session.commit()
            except Exception:
                with self._lock:  # the number was not used; read it again from the table next time
                    self._next.pop(run_id, None)
                raise
        with self.changed:
            self.version += 1
            self.changed.notify_all()
        return event

    def set(self, run_id: str, **changes: object) -> None:
        with self._sessions() as session:
            session.execute(update(db.RunRow).where(db.RunRow.id == run_id).values(**changes))
            session.commit()

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
            return list(session.scalars(select(db.RunRow.id).where(db.RunRow.state.not_in(TERMINAL)).order_by(db.RunRow.id)))

    def list(self, page_size: int, page_token: str, filter_text: str) -> tuple[list[Run], str]:
        table = db.RunRow

        def state(value: str) -> object:
            if value.lower() not in STATES:
                raise InvalidArgument.field("filter", f"state {value!r} is not one of {', '.join(STATES)}")
            return table.state == value.lower()

        page = Page(page_size, page_token, filter_text)
        clauses = parse_filter(filter_text, {"pipeline_id": lambda v: table.pipeline_id == v, "state": state})
        with self._sessions() as session:
            rows = list(session.scalars(page.apply(select(table).where(*clauses), table.id)))
        rows, token = page.finish(rows)
        return [_run_from_row(r) for r in rows], token


def event(type_: int, state: str, message: str = "", source: str = "core", block_id: str = "") -> common.RunEvent:
    return common.RunEvent(type=type_, state=STATES[state], message=message, source=source, block_id=block_id)  # type: ignore[arg-type]


class Runs:
    """RunPipeline, GetRun, ListRuns, WatchRun and CancelRun, with one driver thread per active run."""

    def __init__(self, engine: Engine, catalog: Catalog, settings: RunSettings) -> None:
        self.catalog, self.settings = catalog, settings
        self.store = RunStore(engine)
        self._hosting_channel = insecure_channel(settings.hosting_address)
        self._orchestrator_channel = insecure_channel(settings.orchestrator_address)
        self.hosting = hosting_pb2_grpc.HostingServiceStub(self._hosting_channel)
        self.orchestrator = orchestrator_pb2_grpc.OrchestratorServiceStub(self._orchestrator_channel)
        self._drivers: dict[str, RunDriver] = {}
        self._drivers_lock = threading.Lock()
        self.stopping = threading.Event()

    # RPCs

    def run_pipeline(self, pipeline_id: str) -> Run:
        if not pipeline_id:
            raise InvalidArgument.field("pipeline_id", "is required: the id of a stored pipeline (see ListPipelines)")
        pipeline = self.catalog.get_pipeline(pipeline_id)
        problems, _ = self.catalog.validate_pipeline(pipeline.spec)
        if problems:
            listed = "; ".join(f"{p.field}: {p.description}" for p in problems[:5])
            raise FailedPrecondition(f"pipeline {pipeline.name!r} is no longer valid against the catalog: {listed}")
        run = self.store.create(pipeline_id, spec_to_json(pipeline.spec), event(E.RUN_EVENT_TYPE_RUN_QUEUED, "queued", f"run of pipeline {pipeline.name!r} queued"))
        self._start_driver(run.id)
        return run

    def get(self, run_id: str) -> Run:
        if not run_id:
            raise InvalidArgument.field("id", "is required: the id of the run")
        run = self.store.find(run_id)
        if run is None:
            raise NotFound(f"no run has id {run_id!r}")
        return run

    def list(self, page_size: int, page_token: str, filter_text: str) -> tuple[list[Run], str]:
        return self.store.list(page_size, page_token, filter_text)

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
            with store.changed:
                store.changed.wait_for(lambda: store.version != seen, timeout=1.0)

    def cancel(self, run_id: str) -> Run:
        run = self.get(run_id)
        if run.ended:
            raise FailedPrecondition(f"run {run_id!r} has already ended ({run.state}); there is nothing to cancel")
        with self._drivers_lock:
            driver = self._drivers.get(run_id)
        if driver is None:  # no driver here (it ended with a core restart): one finishes the cancel
            self.store.append(run_id, event(E.RUN_EVENT_TYPE_RUN_CANCELING, "canceling", "cancel requested"), state="canceling")
            self._start_driver(run_id)
        elif run.state != "canceling":
            driver.emit(E.RUN_EVENT_TYPE_RUN_CANCELING, "cancel requested", state="canceling")
            driver.cancel()
        return self.get(run_id)

    # Drivers

    def _start_driver(self, run_id: str) -> None:
        with self._drivers_lock:
            if run_id in self._drivers or self.stopping.is_set():
                return
            driver = RunDriver(self, run_id)
            self._drivers[run_id] = driver
        threading.Thread(target=self._drive, args=(driver,), name=f"run-{run_id}", daemon=True).start()

    def _drive(self, driver: RunDriver) -> None:
        try:
            driver.drive()
        finally:
            with self._drivers_lock:
                self._drivers.pop(driver.run_id, None)

    def resume(self) -> list[str]:
        """Start drivers for runs a previous core left unfinished."""
        ids = self.store.active_ids()
        for run_id in ids:
            self._start_driver(run_id)
        if ids:
            log.info("resuming runs", extra={"runs": ids})
        return ids

    def close(self) -> None:
        self.stopping.set()
        with self._drivers_lock:
            drivers = list(self._drivers.values())
        for driver in drivers:
            driver.interrupt()
        with self.store.changed:
            self.store.changed.notify_all()
        self._hosting_channel.close()
        self._orchestrator_channel.close()


class RunDriver:
    """Takes one run from queued to an end: deploy its models, launch the job, follow the orchestrator."""

    def __init__(self, runs: Runs, run_id: str) -> None:
        self.runs, self.run_id = runs, run_id
        self.store, self.settings = runs.store, runs.settings
        self._canceled = threading.Event()
        self._calls: set[grpc.Future] = set()
        self._calls_lock = threading.Lock()
        self._launched = False
        self._emit_lock = threading.Lock()
        # The run's state: every change after this goes through this driver (emit, _forward), under _emit_lock.
        found = self.store.find(run_id)
        self._state = found.state if found is not None else None

    # Control from other threads

    def cancel(self) -> None:
        self._canceled.set()
        if self._launched:
            self._cancel_upstream()
        else:
            self.interrupt()

    def interrupt(self) -> None:
        """Break every stream this driver is blocked on."""
        with self._calls_lock:
            calls = list(self._calls)
        for call in calls:
            call.cancel()

    def _stream(self, call):  # type: ignore[no-untyped-def]
        with self._calls_lock:
            self._calls.add(call)
        try:
            yield from call
        finally:
            with self._calls_lock:
                self._calls.discard(call)

    # The run's life

    def emit(self, type_: int, message: str = "", source: str = "core", block_id: str = "", **changes: object) -> None:
        with self._emit_lock:
            if self._state is None or self._state in TERMINAL:
                return  # nothing follows a run's final event
            state = str(changes.get("state") or self._state)
            self.store.append(self.run_id, event(type_, state, message, source, block_id), **changes)
            self._state = state

    def drive(self) -> None:
        run = self.store.find(self.run_id)
        if run is None or run.ended:
            return
        self._launched = run.launched
        try:
            if run.state == "canceling" and not run.launched:
                raise Canceled
            if not run.launched:
                if run.state == "queued":
                    self.emit(E.RUN_EVENT_TYPE_LOG, "deploying the pipeline's models", state="starting", start_time=_now())
                models = self.deploy_models(spec_from_json(run.spec))
                self.launch(run, models)
            self.follow()
        except Canceled:
            self.emit(E.RUN_EVENT_TYPE_RUN_CANCELED, "canceled before the job started", state="canceled", state_message="canceled", end_time=_now())
        except StageFailed as failure:
            if self.runs.stopping.is_set():
                return  # core is shutting down; the next core resumes the run
            self.fail(failure.source, failure.message)
        except Exception as error:  # noqa: BLE001 - a run never hangs: anything unexpected ends it with its reason
            if self.runs.stopping.is_set():
                return
            log.exception("run driver failed", extra={"run_id": self.run_id})
            self.fail("core", f"internal error in core while driving the run: {error}")

    def fail(self, source: str, message: str) -> None:
        self.emit(E.RUN_EVENT_TYPE_RUN_FAILED, message, source=source, state="failed", state_message=f"{source}: {message}", end_time=_now())

    def _check_canceled(self) -> None:
        if self._canceled.is_set():
            raise Canceled
        if self.runs.stopping.is_set():
            raise StageFailed("core", "core is shutting down")

    # Stage 1: every model in the spec deployed and healthy

    def deploy_models(self, spec) -> dict[str, tuple[Model, list[str]]]:  # type: ignore[no-untyped-def]
        """By core model id: the model and its healthy endpoints."""
        blocks: dict[str, list[str]] = {}
        for block in spec.blocks:
            if block.kind == "model":
                blocks.setdefault(block.config["model_id"], []).append(block.id)
        deployed = {}
        for model_id, block_ids in blocks.items():
            self._check_canceled()
            model = self.runs.catalog.find_model(model_id)
            if model is None:
                raise StageFailed("core", f"model {model_id!r} was deleted from the catalog after the run was queued")
            status = Deployment(self, model, block_ids[0]).ensure()
            endpoints = [e.address for e in status.endpoints if e.healthy] or [e.address for e in status.endpoints]
            deployed[model_id] = (model, endpoints)
        return deployed

    # Stage 2: the orchestrator accepts the job

    def launch(self, run: Run, models: dict[str, tuple[Model, list[str]]]) -> None:
        self._check_canceled()
        spec = spec_from_json(run.spec)
        request = orchestrator_pb2.LaunchRunRequest(run_id=run.id, spec=convert.spec_to_proto(spec))
        for block in spec.blocks:
            if block.kind == "dataset":
                dataset = self.runs.catalog.find_dataset(block.config["dataset_id"])
                if dataset is None:
                    raise StageFailed("core", f"dataset {block.config['dataset_id']!r} was deleted from the catalog after the run was queued")
                request.datasets[dataset.id].CopyFrom(orchestrator_pb2.ResolvedDataset(uri=dataset.uri, bands=dataset.bands))
        for model_id, (model, endpoints) in models.items():
            request.models[model_id].CopyFrom(
                orchestrator_pb2.ResolvedModel(
                    model_name=model.name, model_version=model.version, endpoints=endpoints,
                    input=convert.model_to_proto(model).input, outputs=convert.model_to_proto(model).outputs,
                )
            )  # fmt: skip
        try:
            self.runs.orchestrator.LaunchRun(request, timeout=self.settings.peer_timeout_s, metadata=self.settings.metadata)
        except grpc.RpcError as error:
            raise StageFailed("orchestrator", f"the orchestrator did not accept the job: {error.details()}") from None
        self._launched = True
        self.store.set(self.run_id, launched=True)
        self.emit(E.RUN_EVENT_TYPE_LOG, "job launched on the orchestrator")
        if self._canceled.is_set():
            self._cancel_upstream()

    def _cancel_upstream(self) -> None:
        try:
            self.runs.orchestrator.CancelRun(
                orchestrator_pb2.CancelRunRequest(id=self.run_id), timeout=self.settings.peer_timeout_s, metadata=self.settings.metadata
            )
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.FAILED_PRECONDITION:  # it ended meanwhile: its stream says how
                log.warning("cancel did not reach the orchestrator", extra={"run_id": self.run_id, "error": error.details()})

    # Stage 3: the orchestrator's events, into core's stream

    def follow(self) -> None:
        stop_watching = self._watch_deployments()
        try:
            self._follow_orchestrator()
        finally:
            stop_watching()

    def _watch_deployments(self) -> Callable[[], None]:
        """While the job runs, hosting's news about the run's models joins the stream (a replica that
        died and was restarted, a model that turned unhealthy or was deleted)."""
        run = self.store.find(self.run_id)
        assert run is not None
        spec = spec_from_json(run.spec)
        since = datetime.now(UTC).timestamp() * 1e9
        calls: list[grpc.Future] = []
        stopped = threading.Event()

        def watch(model_id: str, block_id: str) -> None:
            model = self.runs.catalog.find_model(model_id)
            if model is None:
                return
            try:
                status = find_hosted(self.runs.hosting, model.name, model.version, self.settings.metadata, self.settings.peer_timeout_s)
                if status is None:
                    return
                call = self.runs.hosting.WatchDeployment(hosting_pb2.WatchDeploymentRequest(model_id=status.model_id), metadata=self.settings.metadata)
                calls.append(call)
                if stopped.is_set():
                    call.cancel()
                for update_ in call:
                    if update_.time.ToNanoseconds() < since:
                        continue
                    kind = E.RUN_EVENT_TYPE_LOG if update_.log_line else E.RUN_EVENT_TYPE_DEPLOYMENT
                    text = update_.log_line or f"{model.name}:{model.version} {state_name(update_.state)}: {update_.message}"
                    self.emit(kind, text, "hosting", block_id)
            except grpc.RpcError:
                return  # hosting's news is a courtesy; the orchestrator's stream decides the run

        for block in spec.blocks:
            if block.kind == "model":
                threading.Thread(target=watch, args=(block.config["model_id"], block.id), name=f"watch-{self.run_id}", daemon=True).start()

        def stop() -> None:
            stopped.set()
            for call in list(calls):
                call.cancel()

        return stop

    def _follow_orchestrator(self) -> None:
        give_up = time.monotonic() + self.settings.reconnect_s
        while True:
            run = self.store.find(self.run_id)
            assert run is not None
            if run.ended:
                return
            request = orchestrator_pb2.WatchRunRequest(run_id=self.run_id, after_sequence=run.upstream_sequence)
            try:
                for upstream in self._stream(self.runs.orchestrator.WatchRun(request, metadata=self.settings.metadata)):
                    give_up = time.monotonic() + self.settings.reconnect_s
                    if self._forward(upstream):
                        return
                return self._upstream_ended_early()
            except grpc.RpcError as error:
                if self.runs.stopping.is_set():
                    return
                if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED) and time.monotonic() < give_up:
                    time.sleep(1.0)
                    continue
                raise StageFailed("orchestrator", f"lost the run's event stream: {error.details()}") from None

    def _forward(self, upstream: common.RunEvent) -> bool:
        """Store one orchestrator event as core's next; True when the run ended."""
        forwarded = common.RunEvent()
        forwarded.CopyFrom(upstream)
        forwarded.source = upstream.source or "orchestrator"
        state = STATE_NAMES.get(upstream.state, self._state or "running")
        if state == "queued":  # queued at the orchestrator is still starting for the user
            state = "starting"
        if state in ("starting", "running") and self._canceled.is_set():
            state = "canceling"
        forwarded.state = STATES[state]
        changes: dict[str, object] = {"state": state, "upstream_sequence": upstream.sequence}
        if state in TERMINAL:
            outputs, message = self._final_outputs(upstream)
            changes.update(outputs=outputs, state_message=message, end_time=_now())
        with self._emit_lock:
            self.store.append(self.run_id, forwarded, **changes)
            self._state = state
        return state in TERMINAL

    def _final_outputs(self, upstream: common.RunEvent) -> tuple[list[dict], str]:
        try:
            final = self.runs.orchestrator.GetRun(
                orchestrator_pb2.GetRunRequest(id=self.run_id), timeout=self.settings.peer_timeout_s, metadata=self.settings.metadata
            )
            return [output_to_dict(o) for o in final.outputs], final.state_message or upstream.message
        except grpc.RpcError:
            return [], upstream.message

    def _upstream_ended_early(self) -> None:
        raise StageFailed("orchestrator", "the orchestrator closed the run's stream before the run ended")


class Deployment:
    """Makes one catalog model healthy on hosting, forwarding hosting's events into the run's stream."""

    def __init__(self, driver: RunDriver, model: Model, block_id: str) -> None:
        self.driver, self.model, self.block_id = driver, model, block_id

    def ensure(self) -> hosting_pb2.ModelStatus:
        driver, model, catalog = self.driver, self.model, self.driver.runs.catalog

        def on_event(kind: str, message: str) -> None:
            driver.emit(E.RUN_EVENT_TYPE_LOG if kind == "log" else E.RUN_EVENT_TYPE_DEPLOYMENT, message, "hosting", self.block_id)

        deployer = ModelDeployer(
            driver.runs.hosting,
            Target(model.name, model.version, model.source, convert.model_to_proto(model).card),
            DeployHooks(
                on_event=on_event,
                on_model_state=lambda state, message: catalog.set_model_state(model.id, state, message),
                check=driver._check_canceled,  # noqa: SLF001
                track=driver._stream,  # noqa: SLF001
            ),
            hosting_address=driver.settings.hosting_address,
            metadata=driver.settings.metadata,
            timeout_s=driver.settings.deploy_timeout_s,
            peer_timeout_s=driver.settings.peer_timeout_s,
        )
        try:
            return deployer.ensure()
        except DeployFailed as failure:
            raise StageFailed("hosting", str(failure)) from None
