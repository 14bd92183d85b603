"""The mesh's public services: names, generated stubs, registration, and the keys a client channel presents
(its channels themselves are `mesh.channels`', re-exported here)."""

from __future__ import annotations

import grpc

from constellation.agent.v1 import agent_pb2, agent_pb2_grpc
from constellation.core.v1 import audit_pb2, audit_pb2_grpc, core_pb2, core_pb2_grpc, identity_pb2, identity_pb2_grpc
from constellation.hosting.v1 import hosting_pb2, hosting_pb2_grpc
from constellation.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from mesh import identity
from mesh.channels import channel_options as channel_options
from mesh.channels import insecure_channel as insecure_channel
from mesh.channels import peer_channel as peer_channel
from mesh.server import HealthCheck, Registration

# service -> (full gRPC service name, generated module with the servicer base and add_*_to_server)
SERVICES = {
    "core": (core_pb2.DESCRIPTOR.services_by_name["CoreService"].full_name, core_pb2_grpc),
    "identity": (identity_pb2.DESCRIPTOR.services_by_name["IdentityService"].full_name, identity_pb2_grpc),
    "audit": (audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name, audit_pb2_grpc),
    "hosting": (hosting_pb2.DESCRIPTOR.services_by_name["HostingService"].full_name, hosting_pb2_grpc),
    "orchestrator": (
        orchestrator_pb2.DESCRIPTOR.services_by_name["OrchestratorService"].full_name,
        orchestrator_pb2_grpc,
    ),
    "agent": (agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name, agent_pb2_grpc),
}
MESH_SERVICE_NAMES = [name for name, _ in SERVICES.values()]
# The process that serves each service (by default the one of the same name).
SERVED_BY = {"identity": "core", "audit": "core"}


def registration(service: str, servicer: object, health_checks: dict[str, HealthCheck] | None = None) -> Registration:
    full_name, module = SERVICES[service]
    short = full_name.rsplit(".", 1)[-1]
    add = getattr(module, f"add_{short}Servicer_to_server")
    return Registration([full_name], lambda server: add(servicer, server), health_checks or {})


class _KeyInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds `authorization: Bearer <key>` to every call and, for a service's channel, the user whose call is being
    served (identity.current()) in ON_BEHALF_HEADER, so the peer checks that user's role."""

    def __init__(self, api_key: str, on_behalf: bool) -> None:
        self._header = ("authorization", f"Bearer {api_key}")
        self._on_behalf = on_behalf

    def _with_key(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = [*(details.metadata or ()), self._header]
        if self._on_behalf:
            metadata += on_behalf_metadata(identity.current())
        return details._replace(metadata=metadata)

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._with_key(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._with_key(client_call_details), request)


def with_api_key(channel: grpc.Channel, api_key: str) -> grpc.Channel:
    """`channel`, presenting `api_key` on every call when there is one."""
    return grpc.intercept_channel(channel, _KeyInterceptor(api_key, on_behalf=False)) if api_key else channel


def with_service_key(channel: grpc.Channel, service_key: str) -> grpc.Channel:
    """`channel` for a service calling a peer: the service key on every call, and the user it serves, if any."""
    return grpc.intercept_channel(channel, _KeyInterceptor(service_key, on_behalf=True)) if service_key else channel


def on_behalf_metadata(who: identity.Identity | None) -> tuple[tuple[str, str], ...]:
    """ON_BEHALF_HEADER for `who` when it is a user (not a service, not the anonymous caller of a mesh without
    keys). Background work passes the identity it stored; a served call's is identity.current()."""
    if who is None or who.role not in identity.ROLES or who == identity.ANONYMOUS_ADMIN:
        return ()
    return ((identity.ON_BEHALF_HEADER, identity.on_behalf_value(who)),)
