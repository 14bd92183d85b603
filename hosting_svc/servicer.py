"""HostingService over gRPC: protobuf <-> the hosting domain."""

from __future__ import annotations

from google.protobuf import empty_pb2, json_format

from constellation.hosting.v1 import hosting_pb2, hosting_pb2_grpc
from hosting_svc.deployments import Hosting
from hosting_svc.domain import DeploymentEvent, Endpoint, HostedModel
from hosting_svc.registry import Registry
from hosting_svc.sources import Source
from mesh.errors import InvalidArgument
from mesh.timestamps import to_timestamp

RUNTIME_NAMES = {
    hosting_pb2.RUNTIME_DOCKER: "docker",
    hosting_pb2.RUNTIME_LOCAL: "local",
    hosting_pb2.RUNTIME_MODAL: "modal",
    hosting_pb2.RUNTIME_KUBERNETES: "kubernetes",
    hosting_pb2.RUNTIME_SWARM: "swarm",
}


def _state(name: str) -> hosting_pb2.DeploymentState.ValueType:
    return hosting_pb2.DeploymentState.Value(f"DEPLOYMENT_STATE_{name.upper()}")


def _endpoints(endpoints: list[Endpoint]) -> list[hosting_pb2.Endpoint]:
    return [hosting_pb2.Endpoint(address=e.address, replica_id=e.replica_id, healthy=e.healthy) for e in endpoints]


def status_to_proto(model: HostedModel) -> hosting_pb2.ModelStatus:
    runtime = {v: k for k, v in RUNTIME_NAMES.items()}.get(model.runtime, hosting_pb2.RUNTIME_UNSPECIFIED)
    return hosting_pb2.ModelStatus(
        model_id=model.id,
        model_name=model.name,
        model_version=model.version,
        state=_state(model.state),
        state_message=model.state_message,
        image=model.image,
        image_digest=model.image_digest,
        runtime=runtime,
        environment=model.environment,
        replicas=model.replicas,
        endpoints=_endpoints(model.endpoints),
        installed_packages=model.installed_packages,
        last_updated=to_timestamp(model.last_updated),
        deployed_at=to_timestamp(model.deployed_at),
    )


def event_to_proto(event: DeploymentEvent) -> hosting_pb2.DeploymentEvent:
    return hosting_pb2.DeploymentEvent(
        sequence=event.sequence,
        time=to_timestamp(event.time),
        model_id=event.model_id,
        state=_state(event.state),
        message=event.message,
        log_line=event.log_line,
        endpoints=_endpoints(event.endpoints),
    )


def source_from_proto(request: hosting_pb2.PackageModelRequest) -> Source:
    kind = request.WhichOneof("source")
    if kind == "git":
        return Source("git", request.git.repo_url, request.git.branch, request.git.subdirectory)
    if kind == "local_path":
        return Source("local", request.local_path)
    if kind == "hugging_face_id":
        return Source("hf", request.hugging_face_id)
    raise InvalidArgument.field("source", "set one of git, local_path or hugging_face_id")


class HostingServicer(hosting_pb2_grpc.HostingServiceServicer):
    def __init__(self, hosting: Hosting, registry: Registry) -> None:
        self._hosting = hosting
        self._registry = registry

    def PackageModel(self, request, context):
        card = json_format.MessageToDict(request.model_card, preserving_proto_field_name=True)
        model = self._hosting.package(request.model_name, request.model_version, source_from_proto(request), card)
        return status_to_proto(model)

    def DeployModel(self, request, context):
        runtime = RUNTIME_NAMES.get(request.runtime, "")
        if request.replicas < 0:
            raise InvalidArgument.field("replicas", "must not be negative")
        return status_to_proto(self._hosting.deploy(request.model_id, request.environment, request.replicas, runtime))

    def GetModelStatus(self, request, context):
        return status_to_proto(self._hosting.get(request.model_id))

    def WatchDeployment(self, request, context):
        if request.after_sequence < 0:
            raise InvalidArgument.field("after_sequence", "must not be negative")
        for event in self._hosting.watch(request.model_id, request.after_sequence, context.is_active):
            yield event_to_proto(event)

    def ListModels(self, request, context):
        if request.page_size < 0:
            raise InvalidArgument.field("page_size", "must not be negative")
        if request.page_token and not request.page_token.startswith("hm_"):
            raise InvalidArgument.field(
                "page_token", "is not a token this server issued; pass next_page_token unchanged"
            )
        models = [m for m in self._hosting.list(request.filter) if m.id > request.page_token]  # ids sort by creation
        size = min(request.page_size or 50, 1000)
        page = models[:size]
        token = page[-1].id if len(models) > size else ""
        return hosting_pb2.ListModelsResponse(models=[status_to_proto(m) for m in page], next_page_token=token)

    def DeleteModel(self, request, context):
        self._hosting.delete(request.model_id)
        return empty_pb2.Empty()

    def PushImage(self, request, context):
        model = self._hosting.get(request.model_id)
        image, digest = self._registry.push(
            model, request.repository, lambda message: self._hosting.note(model, message)
        )
        return hosting_pb2.PushImageResponse(image=image, image_digest=digest)

    def PullImage(self, request, context):
        image, digest = self._registry.pull(request.image)
        return hosting_pb2.PullImageResponse(image=image, image_digest=digest)

    def ExportCompose(self, request, context):
        return hosting_pb2.ExportComposeResponse(compose_yaml=self._hosting.export_compose(list(request.model_ids)))

    def StopDeployments(self, request, context):
        stopped, others = self._hosting.stop_deployments()
        return hosting_pb2.StopDeploymentsResponse(
            stopped=[status_to_proto(m) for m in stopped], other_replicas_stopped=others
        )
