"""One channel to the gateway (or to a single service), with auth and typed stubs."""

from __future__ import annotations

from pathlib import Path
from types import TracebackType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from constellation.agent.v1 import agent_pb2_grpc
from constellation.core.v1 import audit_pb2_grpc, core_pb2_grpc, identity_pb2_grpc
from constellation.hosting.v1 import hosting_pb2_grpc
from constellation.orchestrator.v1 import orchestrator_pb2_grpc
from constellation_sdk.settings import ClientSettings
from mesh.config import tls_dir as tls_dir_of
from mesh.services import channel_options, with_api_key
from mesh.tls import TlsFiles


class Client:
    """`Client("localhost:8080")`: `.core`, `.identity`, `.audit`, `.hosting`, `.orchestrator`, `.agent` are the
    generated stubs.

    The API key comes from `api_key` or CONSTELLATION_API_KEY, and travels as
    `authorization: Bearer <key>`. With a certificates folder (`tls_dir`, else
    CONSTELLATION_TLS_DIR; `constellation certs` makes one) the channel is TLS
    trusting its `ca.crt`, presenting `client.crt` when the folder has it (a
    service itself takes only mTLS callers); without, plaintext.
    """

    def __init__(
        self, gateway: str = "localhost:8080", api_key: str | None = None, tls_dir: Path | str | None = None
    ) -> None:
        self.gateway = gateway
        settings = ClientSettings.from_env()
        folder = Path(tls_dir) if tls_dir is not None else tls_dir_of(settings.tls_dir_raw)
        if folder is None:
            self._channel = grpc.insecure_channel(gateway, options=channel_options())
        else:
            credentials = TlsFiles(folder, "client").channel_credentials()
            self._channel = grpc.secure_channel(gateway, credentials, options=channel_options())
        api_key = api_key if api_key is not None else settings.api_key
        channel = with_api_key(self._channel, api_key)
        self.core = core_pb2_grpc.CoreServiceStub(channel)
        self.identity = identity_pb2_grpc.IdentityServiceStub(channel)
        self.audit = audit_pb2_grpc.AuditServiceStub(channel)
        self.hosting = hosting_pb2_grpc.HostingServiceStub(channel)
        self.orchestrator = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
        self.agent = agent_pb2_grpc.AgentServiceStub(channel)
        self.health = health_pb2_grpc.HealthStub(channel)

    def wait_ready(self, timeout_s: float = 10.0) -> None:
        """Block until the channel connects; raises grpc.FutureTimeoutError otherwise."""
        grpc.channel_ready_future(self._channel).result(timeout=timeout_s)

    def serving(self, service: str = "", timeout_s: float = 2.0) -> bool:
        try:
            reply = self.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
