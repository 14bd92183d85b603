"""One server interceptor for every service: request ids, auth, metrics, logs, error mapping.

Health and reflection stay open when API keys are configured, so load
balancers and grpcurl can always see whether and what a server serves.
"""

from __future__ import annotations

import hmac
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import grpc
from prometheus_client import Counter, Histogram

from mesh.errors import DomainError, internal_status, to_status
from mesh.logs import request_id_var

log = logging.getLogger("mesh.rpc")

OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
# Methods a "reader" key may call: everything that does not change state.
READ_METHOD_PREFIXES = ("Get", "List", "Watch", "Validate", "Recommend", "Plan")

RPC_REQUESTS = Counter(
    "constellation_grpc_requests_total", "RPCs handled, by final status code.", ["service", "method", "code"]
)
RPC_LATENCY = Histogram(
    "constellation_grpc_request_duration_seconds",
    "Time from receiving an RPC to its final status.",
    ["service", "method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)


def _metadata(details: grpc.HandlerCallDetails) -> dict[str, str]:
    return {k.lower(): v for k, v in (details.invocation_metadata or ()) if isinstance(v, str)}


def _presented_key(metadata: dict[str, str]) -> str:
    auth = metadata.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return metadata.get("x-api-key", "").strip()


class MeshInterceptor(grpc.ServerInterceptor):
    def __init__(
        self,
        service: str,
        api_keys: dict[str, str],
        translate: Callable[[Exception], DomainError | None] | None = None,
    ) -> None:
        self.service = service
        self.api_keys = api_keys
        # Turns an adapter's exception (e.g. a dropped database connection)
        # into a domain error; None leaves it an internal error.
        self.translate = translate or (lambda error: None)

    def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        method = details.method
        metadata = _metadata(details)
        denial = None if method.startswith(OPEN_PREFIXES) else self._authorize(method, metadata)
        request_id = metadata.get("x-request-id") or uuid.uuid4().hex
        short_method = method.rsplit("/", 1)[-1]
        if handler.unary_unary:
            return handler._replace(unary_unary=self._unary(handler.unary_unary, short_method, request_id, denial))
        if handler.stream_unary:
            return handler._replace(stream_unary=self._unary(handler.stream_unary, short_method, request_id, denial))
        if handler.unary_stream:
            return handler._replace(unary_stream=self._stream(handler.unary_stream, short_method, request_id, denial))
        return handler._replace(stream_stream=self._stream(handler.stream_stream, short_method, request_id, denial))

    def _authorize(self, method: str, metadata: dict[str, str]) -> tuple[grpc.StatusCode, str] | None:
        if not self.api_keys:
            return None
        presented = _presented_key(metadata)
        if not presented:
            return grpc.StatusCode.UNAUTHENTICATED, "missing credentials: send 'authorization: Bearer <api key>'"
        role = next((r for k, r in self.api_keys.items() if hmac.compare_digest(k.encode(), presented.encode())), None)
        if role is None:
            return grpc.StatusCode.UNAUTHENTICATED, "the API key is not valid"
        name = method.rsplit("/", 1)[-1]
        if role == "reader" and not name.startswith(READ_METHOD_PREFIXES):
            return grpc.StatusCode.PERMISSION_DENIED, f"this API key may only read; {name} needs an admin key"
        return None

    def _finish(self, method: str, started: float, context: grpc.ServicerContext) -> None:
        code = context.code() or grpc.StatusCode.OK
        elapsed = time.perf_counter() - started
        RPC_REQUESTS.labels(self.service, method, code.name).inc()
        RPC_LATENCY.labels(self.service, method).observe(elapsed)
        log.info("rpc", extra={"method": method, "code": code.name, "duration_ms": round(elapsed * 1000, 3)})

    def _fail(self, error: Exception, context: grpc.ServicerContext, request_id: str) -> NoReturn:
        """Abort the RPC for `error` (always raises). A servicer's own context.abort() passes through."""
        if not isinstance(error, DomainError):
            error = self.translate(error) or error
        if isinstance(error, DomainError):
            context.abort_with_status(to_status(error, request_id))
        if context.code() not in (None, grpc.StatusCode.OK):
            raise error  # the servicer already chose a status with context.abort()
        log.error("unhandled error", exc_info=error)
        context.abort_with_status(internal_status(request_id))
        raise AssertionError("unreachable")  # abort_with_status always raises

    def _unary(self, behaviour: Callable, method: str, request_id: str, denial: tuple | None) -> Callable:
        def run(request: Any, context: grpc.ServicerContext) -> Any:
            token = request_id_var.set(request_id)
            started = time.perf_counter()
            try:
                context.send_initial_metadata((("x-request-id", request_id),))
                if denial:
                    context.abort(*denial)
                return behaviour(request, context)
            except Exception as error:  # mapped, never leaked
                self._fail(error, context, request_id)
            finally:
                self._finish(method, started, context)
                request_id_var.reset(token)

        return run

    def _stream(self, behaviour: Callable, method: str, request_id: str, denial: tuple | None) -> Callable:
        def run(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            request_id_var.set(request_id)
            started = time.perf_counter()
            try:
                context.send_initial_metadata((("x-request-id", request_id),))
                if denial:
                    context.abort(*denial)
                yield from behaviour(request, context)
            except Exception as error:  # mapped, never leaked
                self._fail(error, context, request_id)
            finally:
                self._finish(method, started, context)
                request_id_var.set("")  # a generator may be closed from another context: no reset(token)

        return run
