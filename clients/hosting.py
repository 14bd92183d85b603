"""Get a catalog model serving on hosting: package it if hosting lacks it, deploy it unless it is
already healthy, and report every step. Core's runs and the `constellation models deploy` command
both use this, so a model deployed by hand is exactly what a run would have deployed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from constellation.common.v1 import common_pb2 as common
from constellation.hosting.v1 import hosting_pb2, hosting_pb2_grpc
from mesh.enums import enum_name

D = hosting_pb2.DeploymentState
# States a deployment passes through on its own; callers wait them out.
BUSY = (D.DEPLOYMENT_STATE_PACKAGING, D.DEPLOYMENT_STATE_BUILDING, D.DEPLOYMENT_STATE_VALIDATING,
        D.DEPLOYMENT_STATE_PUSHING, D.DEPLOYMENT_STATE_DEPLOYING)  # fmt: skip
# How long an unhealthy model is given to answer again before it is deployed anew. A replica that died is
# started again on the same address (by the engine's restart policy or hosting's monitor); a new deployment
# would move the model to new addresses, under the runs still sending to the old ones.
RECOVER_S = 20.0


class _NotWithin(Exception):
    """follow(within_s=...) saw no state it waited for in time."""


def state_name(state: hosting_pb2.DeploymentState.ValueType) -> str:
    return enum_name(D, state) or "unspecified"


def find_hosted(
    hosting: hosting_pb2_grpc.HostingServiceStub,
    name: str,
    version: str,
    metadata: tuple[tuple[str, str], ...] = (),
    timeout_s: float = 30.0,
) -> hosting_pb2.ModelStatus | None:
    """Hosting's status of model `name`:`version`, or None when hosting does not have it."""
    request = hosting_pb2.ListModelsRequest(
        page_size=1, filter=f"name = {_quoted(name)} AND version = {_quoted(version)}"
    )
    found = hosting.ListModels(request, timeout=timeout_s, metadata=metadata).models
    return found[0] if found else None


def _quoted(value: str) -> str:
    return '"' + value.replace('"', '\\"') + '"'


class DeployFailed(Exception):
    """The model could not be made healthy; the message says why, for a person."""


@dataclass(frozen=True)
class Target:
    """The catalog model to serve."""

    name: str
    version: str
    # The catalog's `source`: a folder ("/abs" or "file:///abs"), "https://...git#branch" or "hf://org/name@rev".
    source: str
    card: common.ModelCard = field(default_factory=common.ModelCard)

    @property
    def label(self) -> str:
        return f"{self.name}:{self.version}"


def _identity(call: Iterable) -> Iterator:
    yield from call


@dataclass
class DeployHooks:
    # (kind, message): kind "state" for a state change, "log" for a build or container log line.
    on_event: Callable[[str, str], None]
    # The catalog's view of the model: "packaging", "ready" or "failed", with a message.
    on_model_state: Callable[[str, str], None] = lambda state, message: None
    # Called before each wait and when a stream breaks; raises to stop (a cancel).
    check: Callable[[], None] = lambda: None
    # Wraps each hosting stream, so the caller can break it from another thread.
    track: Callable[[Iterable], Iterator] = _identity


class ModelDeployer:
    def __init__(
        self,
        hosting: hosting_pb2_grpc.HostingServiceStub,
        target: Target,
        hooks: DeployHooks,
        *,
        hosting_address: str,
        metadata: tuple[tuple[str, str], ...] = (),
        timeout_s: float = 1800.0,
        peer_timeout_s: float = 30.0,
        runtime: hosting_pb2.Runtime.ValueType = hosting_pb2.RUNTIME_UNSPECIFIED,
        replicas: int = 1,
    ) -> None:
        self.hosting, self.target, self.hooks = hosting, target, hooks
        self.hosting_address, self.metadata = hosting_address, metadata
        self.timeout_s, self.peer_timeout_s = timeout_s, peer_timeout_s
        self.runtime, self.replicas = runtime, replicas
        self.deadline = time.monotonic() + timeout_s

    def _call(self, method, request):
        try:
            return method(request, timeout=self.peer_timeout_s, metadata=self.metadata)
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.UNAVAILABLE:
                raise DeployFailed(f"hosting is unreachable at {self.hosting_address}: {error.details()}") from None
            raise

    def find(self) -> hosting_pb2.ModelStatus | None:
        try:
            return find_hosted(self.hosting, self.target.name, self.target.version, self.metadata, self.peer_timeout_s)
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.UNAVAILABLE:
                raise DeployFailed(f"hosting is unreachable at {self.hosting_address}: {error.details()}") from None
            raise

    def ensure(self) -> hosting_pb2.ModelStatus:
        """The model's status once healthy; raises DeployFailed with the reason otherwise."""
        label = self.target.label
        status = self.find()
        if status is not None and status.state in BUSY:
            self.hooks.on_event("state", f"{label} is {state_name(status.state)} on hosting; waiting for it")
            settled = (
                D.DEPLOYMENT_STATE_READY,
                D.DEPLOYMENT_STATE_HEALTHY,
                D.DEPLOYMENT_STATE_UNHEALTHY,
                D.DEPLOYMENT_STATE_FAILED,
            )
            status = self.follow(status, status.last_updated, settled)
        wanted = self.runtime in (hosting_pb2.RUNTIME_UNSPECIFIED, status.runtime) if status is not None else False
        if status is not None and status.state == D.DEPLOYMENT_STATE_UNHEALTHY and wanted:
            self.hooks.on_event(
                "state", f"{label} is unhealthy on hosting; waiting up to {RECOVER_S:.0f} s for its replicas to answer"
            )
            recovered = (D.DEPLOYMENT_STATE_HEALTHY, D.DEPLOYMENT_STATE_FAILED, D.DEPLOYMENT_STATE_DELETED)
            try:
                status = self.follow(status, status.last_updated, recovered, within_s=RECOVER_S)
            except _NotWithin:
                pass  # deployed anew below
        if status is not None and status.state == D.DEPLOYMENT_STATE_HEALTHY and wanted:
            self.hooks.on_event(
                "state", f"{label} is already serving at {', '.join(e.address for e in status.endpoints)}"
            )
            return status
        packaged = False
        if status is None or status.state == D.DEPLOYMENT_STATE_DELETED:
            status, packaged = self.package(), True
        try:
            return self.deploy(status)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.FAILED_PRECONDITION or packaged:
                raise DeployFailed(f"{label} could not be deployed: {error.details()}") from None
        return self.deploy(self.package())  # its last packaging failed or is gone: package it again

    def package(self) -> hosting_pb2.ModelStatus:
        label, source = self.target.label, self.target.source
        request = hosting_pb2.PackageModelRequest(
            model_name=self.target.name, model_version=self.target.version, model_card=self.target.card
        )
        if source.startswith("hf://"):
            request.hugging_face_id = source
        elif source.startswith(("https://", "http://", "git@")):
            url, _, branch = source.partition("#")
            request.git.CopyFrom(hosting_pb2.GitSource(repo_url=url, branch=branch))
        else:
            request.local_path = source.removeprefix("file://")
        self.hooks.on_model_state("packaging", "")
        try:
            status = self._call(self.hosting.PackageModel, request)
        except grpc.RpcError as error:
            self.hooks.on_model_state("failed", error.details())
            raise DeployFailed(f"{label} could not be packaged: {error.details()}") from None
        status = self.follow(status, status.last_updated, (D.DEPLOYMENT_STATE_READY, D.DEPLOYMENT_STATE_FAILED))
        if status.state == D.DEPLOYMENT_STATE_FAILED:
            self.hooks.on_model_state("failed", status.state_message)
            raise DeployFailed(f"{label} failed to package: {status.state_message}")
        self.hooks.on_model_state("ready", "")
        return status

    def deploy(self, status: hosting_pb2.ModelStatus) -> hosting_pb2.ModelStatus:
        request = hosting_pb2.DeployModelRequest(model_id=status.model_id, replicas=self.replicas, runtime=self.runtime)
        status = self._call(self.hosting.DeployModel, request)
        status = self.follow(status, status.last_updated, (D.DEPLOYMENT_STATE_HEALTHY, D.DEPLOYMENT_STATE_FAILED))
        if status.state == D.DEPLOYMENT_STATE_FAILED:
            raise DeployFailed(f"{self.target.label} failed to deploy: {status.state_message}")
        return status

    def follow(
        self,
        status: hosting_pb2.ModelStatus,
        since: Timestamp,
        until: tuple[int, ...],
        within_s: float | None = None,
    ) -> hosting_pb2.ModelStatus:
        """Report hosting's events from `since` on until the model reaches a state in `until`; its status then.
        With `within_s`, raises _NotWithin when that takes longer (else DeployFailed past the deploy timeout)."""
        label = self.target.label
        self.hooks.check()
        request = hosting_pb2.WatchDeploymentRequest(model_id=status.model_id)
        timeout = max(self.deadline - time.monotonic(), 1.0)
        call = self.hosting.WatchDeployment(
            request, timeout=timeout if within_s is None else min(timeout, within_s), metadata=self.metadata
        )
        try:
            for event in self.hooks.track(call):
                if event.time.ToNanoseconds() < since.ToNanoseconds():
                    continue  # history from before this step
                if event.log_line:
                    self.hooks.on_event("log", event.log_line)
                    continue
                self.hooks.on_event("state", f"{label} {state_name(event.state)}: {event.message}")
                if event.state in until:
                    return self._call(
                        self.hosting.GetModelStatus, hosting_pb2.GetModelStatusRequest(model_id=status.model_id)
                    )
        except grpc.RpcError as error:
            self.hooks.check()  # a cancel breaks the stream on purpose
            if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                if within_s is not None:
                    raise _NotWithin from None
                raise DeployFailed(f"{label} was not serving within {self.timeout_s:.0f} s") from None
            raise DeployFailed(f"lost {label}'s deployment stream: {error.details()}") from None
        raise DeployFailed(f"{label}'s deployment stream ended before it was deployed")
