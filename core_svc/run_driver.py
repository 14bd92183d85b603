"""One run's driver: takes the run from queued to an end (deploy its models through hosting, launch
the job on the orchestrator, follow the orchestrator's events into core's stream).

Every change to the run after it is queued goes through its driver, which keeps the run's state in
memory under a lock; each stage is idempotent so a driver started again after a restart picks up
where the last one stopped (see core_svc.runs).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar, cast

import grpc
from sqlalchemy.orm import Session

from clients.hosting import DeployFailed
from constellation.common.v1 import common_pb2 as common
from constellation.hosting.v1 import hosting_pb2, hosting_pb2_grpc
from constellation.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from core_svc import convert
from core_svc.catalog import Catalog
from core_svc.deployments import DeploymentWatch, deploy_model
from core_svc.domain import TERMINAL, Model
from core_svc.run_queue import RunQueue
from core_svc.run_store import STATE_NAMES, STATES, RunStore, event, now
from core_svc.settings import CoreSettings
from mesh.leases import Lease, LeaseLost, Leases
from mesh.services import on_behalf_metadata
from pipeline.spec import PipelineSpec

log = logging.getLogger("core.runs")

T = TypeVar("T")

E = common.RunEventType
# Codes of a broken orchestrator stream that core reconnects after (for up to reconnect_s).
RECONNECT_ON = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)


@dataclass
class RunContext:
    """What the drivers of one core share."""

    store: RunStore
    catalog: Catalog
    hosting: hosting_pb2_grpc.HostingServiceStub
    orchestrator: orchestrator_pb2_grpc.OrchestratorServiceStub
    settings: CoreSettings
    stopping: threading.Event  # set when core shuts down: drivers stop without ending their runs
    queue: RunQueue  # the places for running runs (core_svc.run_queue)
    leases: Leases  # each driver drives under its run's lease (one replica at a time)


def output_to_dict(output: common.RunOutput) -> dict:
    return {"name": output.name, "uri": output.uri, "media_type": output.media_type, "block_id": output.block_id}


class StageFailed(Exception):
    """A stage of a run failed for a reason the user should read; `source` names the service."""

    def __init__(self, source: str, message: str) -> None:
        super().__init__(message)
        self.source, self.message = source, message


class Canceled(Exception):
    pass


class RunDriver:
    """Takes one run from queued to an end: deploy its models, launch the job, follow the orchestrator."""

    def __init__(self, context: RunContext, run_id: str, lease: Lease) -> None:
        self.context, self.run_id, self.lease = context, run_id, lease
        self.store = context.store
        found = self.store.find(run_id)
        # Hosting and the orchestrator check the role of the user who started the run, named explicitly here:
        # a driver's thread is not the call that started it (and may be a restarted core's).
        started_by = found.started_by if found is not None else None
        self.settings = context.settings.model_copy(
            update={"metadata": context.settings.metadata + on_behalf_metadata(started_by)}
        )
        self._canceled = threading.Event()
        self._lost = threading.Event()  # the lease was lost: another replica drives the run now
        self._calls: set[grpc.Future] = set()
        self._calls_lock = threading.Lock()
        self._launched = False
        self._emit_lock = threading.Lock()
        # The run's state: every change after this goes through this driver (emit, _forward), under _emit_lock.
        self._state = found.state if found is not None else None

    # Control from other threads

    def cancel(self) -> None:
        self._canceled.set()
        if self._launched:
            self._cancel_upstream()
        else:
            self.interrupt()

    @property
    def canceled(self) -> bool:
        return self._canceled.is_set()

    def lost(self) -> None:
        """The run's lease is gone (this replica was too slow to renew it): stop without touching the run."""
        self._lost.set()
        self.interrupt()

    def _fence(self, session: Session) -> None:
        self.context.leases.check(session, self.lease)

    def interrupt(self) -> None:
        """Break every stream this driver is blocked on."""
        with self._calls_lock:
            calls = list(self._calls)
        for call in calls:
            call.cancel()

    def _stream(self, call: Iterable[T]) -> Iterator[T]:
        """Yields from a gRPC stream that interrupt() can break meanwhile."""
        future = cast(grpc.Future, call)  # a streaming call is also a Future: cancel() ends it
        with self._calls_lock:
            self._calls.add(future)
        try:
            yield from call
        finally:
            with self._calls_lock:
                self._calls.discard(future)

    # The run's life

    def emit(
        self,
        type_: int,
        message: str = "",
        source: str = "core",
        block_id: str = "",
        queue_position: int = 0,
        **changes: object,
    ) -> None:
        with self._emit_lock:
            if self._state is None or self._state in TERMINAL:
                return  # nothing follows a run's final event
            state = str(changes.get("state") or self._state)
            self.store.append(
                self.run_id, event(type_, state, message, source, block_id, queue_position), self._fence, **changes
            )
            self._state = state

    def drive(self) -> None:
        try:
            self._drive()
        except LeaseLost:  # from any write, including the one that would have ended the run
            log.info("another replica drives the run now", extra={"run_id": self.run_id})

    def _drive(self) -> None:
        run = self.store.find(self.run_id)
        if run is None or run.ended:
            return
        self._launched = run.launched
        try:
            if run.state == "canceling" and not run.launched:
                raise Canceled
            # The run's one conversion of its stored spec: every stage below reads this object.
            spec = PipelineSpec.from_json(run.spec)
            if not self.context.queue.wait_turn(self.run_id, self._queued_at, self._stop_waiting):
                self._check_canceled()
            if not run.launched:
                if run.state == "queued":
                    self.emit(
                        E.RUN_EVENT_TYPE_LOG, "deploying the pipeline's models", state="starting", start_time=now()
                    )
                models = self.deploy_models(spec)
                self.launch(spec, models)
            self.follow(spec)
        except Canceled:
            self.emit(
                E.RUN_EVENT_TYPE_RUN_CANCELED, "canceled before the job started",
                state="canceled", state_message="canceled", end_time=now(),
            )  # fmt: skip
        except LeaseLost:
            raise
        except StageFailed as failure:
            if self._gone():
                return  # core is shutting down; the next core resumes the run
            self.fail(failure.source, failure.message)
        except Exception as error:  # a run never hangs: anything unexpected ends it with its reason
            if self._gone():
                return
            log.exception("run driver failed", extra={"run_id": self.run_id})
            self.fail("core", f"internal error in core while driving the run: {error}")

    def _queued_at(self, position: int) -> None:
        ahead = "it starts next" if position == 0 else f"{position} run{'s' * (position != 1)} start before it"
        self.emit(E.RUN_EVENT_TYPE_RUN_QUEUED, f"waiting for a place: {ahead}", queue_position=position)

    def _gone(self) -> bool:
        """Core is stopping or lost the run: the run goes on elsewhere, as it was."""
        return self.context.stopping.is_set() or self._lost.is_set()

    def _stop_waiting(self) -> bool:
        return self._canceled.is_set() or self._gone()

    def fail(self, source: str, message: str) -> None:
        self.emit(
            E.RUN_EVENT_TYPE_RUN_FAILED, message, source=source,
            state="failed", state_message=f"{source}: {message}", end_time=now(),
        )  # fmt: skip

    def _check_canceled(self) -> None:
        if self._canceled.is_set():
            raise Canceled
        if self._lost.is_set():
            raise LeaseLost(f"run {self.run_id} is driven by another replica now")
        if self.context.stopping.is_set():
            raise StageFailed("core", "core is shutting down")

    # Stage 1: every model in the spec deployed and healthy

    def deploy_models(self, spec: PipelineSpec) -> dict[str, tuple[Model, list[str]]]:
        """By core model id: the model and its healthy endpoints."""
        blocks: dict[str, list[str]] = {}
        for block in spec.blocks:
            if block.kind == "model":
                blocks.setdefault(block.config["model_id"], []).append(block.id)
        deployed = {}
        for model_id, block_ids in blocks.items():
            self._check_canceled()
            model = self.context.catalog.find_model(model_id)
            if model is None:
                raise StageFailed("core", f"model {model_id!r} was deleted from the catalog after the run was queued")
            status = self._deploy(model, block_ids[0])
            endpoints = [e.address for e in status.endpoints if e.healthy] or [e.address for e in status.endpoints]
            deployed[model_id] = (model, endpoints)
        return deployed

    def _deploy(self, model: Model, block_id: str) -> hosting_pb2.ModelStatus:
        context = self.context
        try:
            return deploy_model(context.hosting, context.catalog, self.settings, model, block_id,
                                self.emit, self._check_canceled, self._stream)  # fmt: skip
        except DeployFailed as failure:
            raise StageFailed("hosting", str(failure)) from None

    # Stage 2: the orchestrator accepts the job

    def launch(self, spec: PipelineSpec, models: dict[str, tuple[Model, list[str]]]) -> None:
        """Hands the job to the orchestrator with every dataset and model resolved. The spec was
        validated when the run was queued; the orchestrator checks it against what it is given."""
        self._check_canceled()
        request = orchestrator_pb2.LaunchRunRequest(run_id=self.run_id, spec=convert.spec_to_proto(spec))
        run = self.store.find(self.run_id)
        pipeline = self.context.catalog.find_pipeline(run.pipeline_id) if run is not None else None
        if pipeline is not None:  # named in the lineage of the run's STAC items
            request.pipeline_id, request.pipeline_name = pipeline.id, pipeline.name
        for block in spec.blocks:
            if block.kind == "dataset":
                dataset = self.context.catalog.find_dataset(block.config["dataset_id"])
                if dataset is None:
                    raise StageFailed(
                        "core",
                        f"dataset {block.config['dataset_id']!r} was deleted from the catalog after the run was queued",
                    )
                request.datasets[dataset.id].CopyFrom(
                    orchestrator_pb2.ResolvedDataset(
                        uri=dataset.uri,
                        bands=dataset.bands,
                        items=[convert.scene_to_proto(item) for item in dataset.items],
                    )
                )
        for model_id, (model, endpoints) in models.items():
            message = convert.model_to_proto(model)
            request.models[model_id].CopyFrom(
                orchestrator_pb2.ResolvedModel(
                    model_name=model.name, model_version=model.version, endpoints=endpoints,
                    input=message.input, outputs=message.outputs,
                    task=message.task, source=message.source, card=message.card,
                )
            )  # fmt: skip
        try:
            self.context.orchestrator.LaunchRun(
                request, timeout=self.settings.peer_timeout_s, metadata=self.settings.metadata
            )
        except grpc.RpcError as error:
            raise StageFailed("orchestrator", f"the orchestrator did not accept the job: {error.details()}") from None
        self._launched = True
        self.emit(E.RUN_EVENT_TYPE_LOG, "job launched on the orchestrator", launched=True)
        if self._canceled.is_set():
            self._cancel_upstream()

    def _cancel_upstream(self) -> None:
        try:
            self.context.orchestrator.CancelRun(
                orchestrator_pb2.CancelRunRequest(id=self.run_id),
                timeout=self.settings.peer_timeout_s,
                metadata=self.settings.metadata,
            )
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.FAILED_PRECONDITION:  # it ended meanwhile: its stream says how
                log.warning(
                    "cancel did not reach the orchestrator", extra={"run_id": self.run_id, "error": error.details()}
                )

    # Stage 3: the orchestrator's events, into core's stream

    def follow(self, spec: PipelineSpec) -> None:
        watch = DeploymentWatch(
            self.context.hosting, self.context.catalog, self.settings, self.emit, f"watch-{self.run_id}"
        )
        watch.start(spec)
        try:
            self._follow_orchestrator()
        finally:
            watch.stop()

    def _follow_orchestrator(self) -> None:
        give_up = time.monotonic() + self.settings.reconnect_s
        while True:
            run = self.store.find(self.run_id)
            assert run is not None
            if run.ended:
                return
            request = orchestrator_pb2.WatchRunRequest(run_id=self.run_id, after_sequence=run.upstream_sequence)
            try:
                stream = self.context.orchestrator.WatchRun(request, metadata=self.settings.metadata)
                for upstream in self._stream(stream):
                    give_up = time.monotonic() + self.settings.reconnect_s
                    if self._forward(upstream):
                        return
                # Ended before the run did: the orchestrator stopped (a restart, a replica going away) and
                # closed its streams; it or another replica answers the same watch from where this one stopped.
                if time.monotonic() < give_up:
                    time.sleep(1.0)
                    continue
                return self._upstream_ended_early()
            except grpc.RpcError as error:
                if self._gone():
                    return
                if error.code() in RECONNECT_ON and time.monotonic() < give_up:
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
            changes.update(outputs=outputs, state_message=message, end_time=now())
        with self._emit_lock:
            self.store.append(self.run_id, forwarded, self._fence, **changes)
            self._state = state
        return state in TERMINAL

    def _final_outputs(self, upstream: common.RunEvent) -> tuple[list[dict], str]:
        try:
            final = self.context.orchestrator.GetRun(
                orchestrator_pb2.GetRunRequest(id=self.run_id),
                timeout=self.settings.peer_timeout_s,
                metadata=self.settings.metadata,
            )
            return [output_to_dict(o) for o in final.outputs], final.state_message or upstream.message
        except grpc.RpcError:
            return [], upstream.message

    def _upstream_ended_early(self) -> None:
        raise StageFailed("orchestrator", "the orchestrator closed the run's stream before the run ended")
