"""A run's side of hosting: make each of its models healthy before launch, and while the job runs,
bring hosting's news about those models into the run's stream.

Both go through the shared hosting client (clients.hosting), so a run deploys a model exactly as
`constellation models deploy` does. Hosting's news is a courtesy: the orchestrator's stream decides
how a run ends, so a watch that breaks is dropped, never an error.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Protocol

import grpc

from clients.hosting import DeployHooks, ModelDeployer, Target, find_hosted, state_name
from constellation.common.v1 import common_pb2 as common
from constellation.hosting.v1 import hosting_pb2, hosting_pb2_grpc
from core_svc import convert
from core_svc.catalog import Catalog
from core_svc.domain import Model
from core_svc.settings import CoreSettings
from pipeline.spec import PipelineSpec

E = common.RunEventType


class Emit(Protocol):
    """Adds an event to the run's stream (RunDriver.emit)."""

    def __call__(self, type_: int, message: str = "", source: str = "core", block_id: str = "") -> None: ...


def deploy_model(
    hosting: hosting_pb2_grpc.HostingServiceStub,
    catalog: Catalog,
    settings: CoreSettings,
    model: Model,
    block_id: str,
    emit: Emit,
    check: Callable[[], None],
    track: Callable[[Iterable], Iterator],
) -> hosting_pb2.ModelStatus:
    """Makes one catalog model healthy on hosting, with hosting's events in the run's stream on
    `block_id` and the catalog's model state kept up to date. Raises DeployFailed (clients.hosting);
    `check` raises to stop waiting, `track` wraps each hosting stream so the caller can break it."""

    def on_event(kind: str, message: str) -> None:
        emit(E.RUN_EVENT_TYPE_LOG if kind == "log" else E.RUN_EVENT_TYPE_DEPLOYMENT, message, "hosting", block_id)

    deployer = ModelDeployer(
        hosting,
        Target(model.name, model.version, model.source, convert.model_to_proto(model).card),
        DeployHooks(
            on_event=on_event,
            on_model_state=lambda state, message: catalog.set_model_state(model.id, state, message),
            check=check,
            track=track,
        ),
        hosting_address=settings.hosting_address,
        metadata=settings.metadata,
        timeout_s=settings.deploy_timeout_s,
        peer_timeout_s=settings.peer_timeout_s,
    )
    return deployer.ensure()


class DeploymentWatch:
    """While the job runs, hosting's news about the run's models joins the stream (a replica that
    died and was restarted, a model that turned unhealthy or was deleted): one thread per model block."""

    def __init__(
        self,
        hosting: hosting_pb2_grpc.HostingServiceStub,
        catalog: Catalog,
        settings: CoreSettings,
        emit: Emit,
        name: str,
    ) -> None:
        self._hosting, self._catalog, self._settings, self._emit, self._name = hosting, catalog, settings, emit, name
        self._calls: list[grpc.Future] = []
        self._stopped = threading.Event()
        self._since_ns = datetime.now(UTC).timestamp() * 1e9  # older news was on the stream already, or is moot

    def start(self, spec: PipelineSpec) -> None:
        for block in spec.blocks:
            if block.kind == "model":
                args = (block.config["model_id"], block.id)
                threading.Thread(target=self._watch, args=args, name=self._name, daemon=True).start()

    def stop(self) -> None:
        self._stopped.set()
        for call in list(self._calls):
            call.cancel()

    def _watch(self, model_id: str, block_id: str) -> None:
        model = self._catalog.find_model(model_id)
        if model is None:
            return
        settings = self._settings
        try:
            status = find_hosted(self._hosting, model.name, model.version, settings.metadata, settings.peer_timeout_s)
            if status is None:
                return
            request = hosting_pb2.WatchDeploymentRequest(model_id=status.model_id)
            call = self._hosting.WatchDeployment(request, metadata=settings.metadata)
            self._calls.append(call)
            if self._stopped.is_set():
                call.cancel()
            for update in call:
                if update.time.ToNanoseconds() < self._since_ns:
                    continue
                kind = E.RUN_EVENT_TYPE_LOG if update.log_line else E.RUN_EVENT_TYPE_DEPLOYMENT
                text = update.log_line or f"{model.name}:{model.version} {state_name(update.state)}: {update.message}"
                self._emit(kind, text, "hosting", block_id)
        except grpc.RpcError:
            return  # hosting's news is a courtesy; the orchestrator's stream decides the run
