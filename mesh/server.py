"""The one server bootstrap every Constellation service runs on.

It gives each service: mTLS when CONSTELLATION_TLS_DIR names the mesh's
certificates (`mesh.tls`; callers checked against `mesh.peers`), else plaintext
with a warning; grpc.health.v1 health that reflects its dependencies,
server reflection, the mesh interceptor (request ids, auth, metrics, logs,
error mapping, request bounds, a cap on open streams; API keys checked by
`mesh.auth`, user keys by core or by asking core; the audit log of its mutating
calls, which core keeps and the others send to core), a Prometheus metrics
port, message limits (requests up to `max_request_mb`, responses up to
`max_message_mb`), and graceful shutdown on SIGTERM: health turns
NOT_SERVING, new RPCs are refused, in-flight RPCs get `shutdown_grace_s` to
finish, and streams learn of the shutdown through `stopping`.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterable
from concurrent import futures
from dataclasses import dataclass, field
from wsgiref.simple_server import WSGIServer

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from mesh.audit import AuditLog, AuditSink, CoreAuditSink
from mesh.auth import Authenticator, KeyLookup, RemoteKeys
from mesh.channels import peer_channel
from mesh.config import ConfigError, Settings
from mesh.errors import DomainError
from mesh.interceptors import MeshInterceptor
from mesh.peers import PeerInterceptor
from mesh.tls import TlsFiles

log = logging.getLogger("mesh.server")

AUTH_OFF_WARNING = (
    "authentication is off (CONSTELLATION_AUTH=off): anyone who can reach this port may call every method; "
    "unset it to require the mesh's API keys"
)

HealthCheck = Callable[[], None]
"""Raises (any exception) when a dependency is unreachable."""


@dataclass
class Registration:
    """A servicer to serve: its full service names and the generated add_*_to_server call."""

    service_names: list[str]
    add_to_server: Callable[[grpc.Server], None]
    health_checks: dict[str, HealthCheck] = field(default_factory=dict)


def grpc_options(settings: Settings) -> list[tuple[str, int]]:
    """Responses up to max_message_bytes; requests up to max_request_bytes (larger ones: RESOURCE_EXHAUSTED)."""
    return [
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_receive_message_length", settings.max_request_bytes),
        ("grpc.so_reuseport", 0),
    ]


class MeshServer:
    def __init__(
        self,
        settings: Settings,
        registrations: Iterable[Registration],
        reflection_names: Iterable[str] = (),
        translate_error: Callable[[Exception], DomainError | None] | None = None,
        on_stop: Iterable[Callable[[], None]] = (),
        user_keys: KeyLookup | None = None,
        audit_sink: AuditSink | None = None,
    ) -> None:
        if settings.auth == "on" and not settings.api_keys:
            # Empty keys would let every caller in: only CONSTELLATION_AUTH=off may mean that.
            raise ConfigError(
                "authentication is on but the settings hold no API key: read them with mesh.config.load()"
            )
        self.settings = settings
        self.on_stop = list(on_stop)
        self.tls = TlsFiles(settings.tls_dir, settings.service) if settings.tls_dir else None
        # Core checks user keys in its own database and keeps the audit log there: it passes both. The other
        # services ask core.
        # One channel of this service's own to core serves both (mTLS with its certificate, or plaintext); each
        # closes it at stop, the audit log first, once the calls in flight are done (a second close does nothing).
        asks_core = "core" in settings.peers and (user_keys is None or audit_sink is None)
        core = peer_channel(settings.peers["core"], self.tls) if asks_core else None
        if user_keys is None and core is not None:
            remote = RemoteKeys(core, settings.service_key, settings.auth_cache_s)
            user_keys = remote
            self.on_stop.append(remote.close)
        if audit_sink is None and core is not None:
            audit_sink = CoreAuditSink(core, settings.service_key)
        self.audit = AuditLog(settings.service, audit_sink) if audit_sink is not None else None
        authenticator = Authenticator(settings.api_keys, settings.service_key, user_keys)
        self.registrations = list(registrations)
        self.stopping = threading.Event()
        interceptors: list[grpc.ServerInterceptor] = [
            MeshInterceptor(
                settings.service, authenticator, translate_error, max_streams=settings.stream_limit, audit=self.audit
            )
        ]
        if self.tls is not None:
            interceptors.append(PeerInterceptor())  # inside the mesh interceptor: denials get request ids and logs
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=settings.max_workers, thread_name_prefix=settings.service),
            interceptors=interceptors,
            options=grpc_options(settings),
        )
        self.health = health.HealthServicer(experimental_non_blocking=True)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        names = [n for r in self.registrations for n in r.service_names]
        for registration in self.registrations:
            registration.add_to_server(self._server)
        reflection.enable_server_reflection(
            sorted({*names, *reflection_names, health.SERVICE_NAME, reflection.SERVICE_NAME}), self._server
        )
        self._service_names = ["", *names]
        self._checks = {k: v for r in self.registrations for k, v in r.health_checks.items()}
        self._serving: bool | None = None
        self._metrics_server: WSGIServer | None = None
        self.port = 0

    def start(self) -> int:
        """Bind and start; returns the bound port (useful when settings.port is 0)."""
        address = f"{self.settings.host}:{self.settings.port}"
        if self.tls is not None:
            self.port = self._server.add_secure_port(address, self.tls.server_credentials())
        else:
            log.warning(
                "serving plaintext gRPC: no CONSTELLATION_TLS_DIR, so calls are unencrypted and peers unverified "
                "(for development on loopback; `constellation up --tls` runs the mesh with mTLS)"
            )
            self.port = self._server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"could not bind {self.settings.host}:{self.settings.port}")
        self._check_health()
        if self.audit is not None:
            self.audit.start()
        self._server.start()
        if self.settings.metrics_port:
            self._metrics_server, _ = start_http_server(self.settings.metrics_port, addr=self.settings.host)
        threading.Thread(target=self._health_loop, name="health", daemon=True).start()
        if self.settings.auth == "off":
            log.warning(AUTH_OFF_WARNING)
        log.info(
            "serving",
            extra={
                "address": f"{self.settings.host}:{self.port}",
                "metrics_port": self.settings.metrics_port,
                "tls": "mtls" if self.tls else "plaintext",
            },
        )
        return self.port

    def _check_health(self) -> None:
        failures = []
        for name, check in self._checks.items():
            try:
                check()
            except Exception as error:  # any failure means the dependency is down
                failures.append(
                    f"{name}: {error.__class__.__name__}: {str(error).splitlines()[0] if str(error) else ''}"
                )
        serving = not failures and not self.stopping.is_set()
        if serving != self._serving:
            if serving:
                log.info("health SERVING")
            else:
                log.warning("health NOT_SERVING", extra={"failures": failures})
        self._serving = serving
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in self._service_names:
            self.health.set(name, status)

    def _health_loop(self) -> None:
        while not self.stopping.wait(self.settings.health_interval_s):
            self._check_health()

    def stop(self, grace: float | None = None) -> None:
        """Refuse new RPCs, let in-flight ones finish within `grace` seconds, then cancel the rest."""
        if self.stopping.is_set():
            return
        self.stopping.set()
        self.health.enter_graceful_shutdown()
        grace = self.settings.shutdown_grace_s if grace is None else grace
        log.info("draining", extra={"grace_s": grace})
        self._server.stop(grace).wait()
        if self.audit is not None:
            self.audit.close()  # after the calls in flight, so their records are written too
        for hook in self.on_stop:
            hook()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
        log.info("stopped")

    def serve_forever(self) -> None:
        """Start, then block until SIGTERM or SIGINT, then drain."""
        done = threading.Event()

        def on_signal(signum: int, _frame: object) -> None:
            log.info("signal received", extra={"signal": signal.Signals(signum).name})
            done.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        self.start()
        done.wait()
        self.stop()
