"""The mesh's public services: names, generated stubs, and client channel options."""

from __future__ import annotations

import grpc

from constellation.agent.v1 import agent_pb2, agent_pb2_grpc
from constellation.core.v1 import core_pb2, core_pb2_grpc
from constellation.hosting.v1 import hosting_pb2, hosting_pb2_grpc
from constellation.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from mesh.server import HealthCheck, Registration
from mesh.tls import TlsFiles

# service -> (full gRPC service name, generated module with the servicer base and add_*_to_server)
SERVICES = {
    "core": (core_pb2.DESCRIPTOR.services_by_name["CoreService"].full_name, core_pb2_grpc),
    "hosting": (hosting_pb2.DESCRIPTOR.services_by_name["HostingService"].full_name, hosting_pb2_grpc),
    "orchestrator": (
        orchestrator_pb2.DESCRIPTOR.services_by_name["OrchestratorService"].full_name,
        orchestrator_pb2_grpc,
    ),
    "agent": (agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name, agent_pb2_grpc),
}
MESH_SERVICE_NAMES = [name for name, _ in SERVICES.values()]


def registration(service: str, servicer: object, health_checks: dict[str, HealthCheck] | None = None) -> Registration:
    full_name, module = SERVICES[service]
    short = full_name.rsplit(".", 1)[-1]
    add = getattr(module, f"add_{short}Servicer_to_server")
    return Registration([full_name], lambda server: add(servicer, server), health_checks or {})


def channel_options(max_message_bytes: int = 64 * 1024 * 1024) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


def insecure_channel(address: str) -> grpc.Channel:
    return grpc.insecure_channel(address, options=channel_options())


def peer_channel(address: str, tls: TlsFiles | None) -> grpc.Channel:
    """A channel to a peer service: mTLS presenting `tls` (the caller's own certificate), or plaintext without."""
    if tls is None:
        return insecure_channel(address)
    return grpc.secure_channel(address, tls.channel_credentials(), options=channel_options())


class _KeyInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds `authorization: Bearer <key>` to every call."""

    def __init__(self, api_key: str) -> None:
        self._header = ("authorization", f"Bearer {api_key}")

    def _with_key(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return details._replace(metadata=[*(details.metadata or ()), self._header])

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._with_key(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._with_key(client_call_details), request)


def with_api_key(channel: grpc.Channel, api_key: str) -> grpc.Channel:
    """`channel`, presenting `api_key` on every call when there is one."""
    return grpc.intercept_channel(channel, _KeyInterceptor(api_key)) if api_key else channel


def service_key(api_keys: dict[str, str]) -> str:
    """The key a service presents to its peers when the mesh has API keys: the first admin key
    (every service reads the same CONSTELLATION_API_KEYS)."""
    return next((key for key, role in api_keys.items() if role == "admin"), "")
