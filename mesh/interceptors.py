"""One server interceptor for every service: request ids, auth, request bounds, stream slots, metrics, logs,
error mapping, the audit log.

Health and reflection stay open when API keys are configured, so load
balancers and grpcurl can always see whether and what a server serves.

Before a servicer sees a request, the interceptor answers INVALID_ARGUMENT for
a body that does not decode (grpc itself would log a traceback and answer
INTERNAL) and for one that breaks `mesh.limits`. Streaming calls hold a worker
thread for as long as they are open, so at most `max_streams` run at once and
the rest get RESOURCE_EXHAUSTED: the threads above that cap stay free for
unary calls, health checks among them.

Every mutating call (any method but reads, health and reflection) is handed to
the service's audit log once it has finished, with its outcome: one hook,
`_audit_hook`, that queues a record and never blocks the call (mesh.audit).
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NoReturn

import grpc
from prometheus_client import Counter, Histogram

from mesh import identity, roles
from mesh.audit import AUDIT_INTAKE, AuditLog, audited, event_for_call
from mesh.auth import Authenticator
from mesh.errors import DomainError, InvalidArgument, PermissionDenied, Unauthenticated, internal_status, to_status
from mesh.limits import check_request
from mesh.logs import request_id_var

log = logging.getLogger("mesh.rpc")

OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

RPC_REQUESTS = Counter(
    "constellation_grpc_requests_total", "RPCs handled, by final status code.", ["service", "method", "code"]
)
RPC_LATENCY = Histogram(
    "constellation_grpc_request_duration_seconds",
    "Time from receiving an RPC to its final status.",
    ["service", "method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)


# Records a finished call in the audit log: (request, response or None, context).
AuditHook = Callable[[Any, Any, grpc.ServicerContext], None]


def _metadata(details: grpc.HandlerCallDetails) -> dict[str, str]:
    return {k.lower(): v for k, v in (details.invocation_metadata or ()) if isinstance(v, str)}


class _UndecodableBody:
    """What the lenient deserializer hands on instead of raising, so the call can answer INVALID_ARGUMENT."""

    def __init__(self, message_name: str, size: int) -> None:
        self.message_name = message_name
        self.size = size


def _lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None
    message_type = getattr(deserializer, "__self__", None)  # generated stubs pass <Message>.FromString
    descriptor = getattr(message_type, "DESCRIPTOR", None)
    message_name = descriptor.full_name if descriptor is not None else "request message"

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:  # any decoding failure is the caller's, not ours
            return _UndecodableBody(message_name, len(data))

    return deserialize


def _presented_key(metadata: dict[str, str]) -> str:
    auth = metadata.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return metadata.get("x-api-key", "").strip()


REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def _request_id(presented: str) -> str:
    """The caller's x-request-id when it is a plain token of at most 128 characters (it goes into every log line
    and error detail), else a fresh one."""
    return presented if REQUEST_ID.match(presented) else uuid.uuid4().hex


class MeshInterceptor(grpc.ServerInterceptor):
    def __init__(
        self,
        service: str,
        authenticator: Authenticator,
        translate: Callable[[Exception], DomainError | None] | None = None,
        max_streams: int = 24,
        audit: AuditLog | None = None,
    ) -> None:
        self.service = service
        self.authenticator = authenticator
        self.audit = audit
        self.max_streams = max_streams
        self._stream_slots = threading.BoundedSemaphore(max_streams)
        # Turns an adapter's exception (e.g. a dropped database connection)
        # into a domain error; None leaves it an internal error.
        self.translate = translate or (lambda error: None)

    def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        method = details.method
        metadata = _metadata(details)
        caller, denial = (None, None) if method.startswith(OPEN_PREFIXES) else self._authorize(method, metadata)
        request_id = _request_id(metadata.get("x-request-id", ""))
        short_method = method.rsplit("/", 1)[-1]
        handler = handler._replace(request_deserializer=_lenient(handler.request_deserializer))
        audit = self._audit_hook(method, metadata)
        if handler.unary_unary:
            unary_unary = self._unary(handler.unary_unary, short_method, request_id, caller, denial, audit)
            return handler._replace(unary_unary=unary_unary)
        if handler.stream_unary:
            stream_unary = self._unary(
                handler.stream_unary, short_method, request_id, caller, denial, audit, streaming=True
            )
            return handler._replace(stream_unary=stream_unary)
        if handler.unary_stream:
            unary_stream = self._stream(handler.unary_stream, short_method, request_id, caller, denial, audit)
            return handler._replace(unary_stream=unary_stream)
        stream_stream = self._stream(
            handler.stream_stream, short_method, request_id, caller, denial, audit, streaming=True
        )
        return handler._replace(stream_stream=stream_stream)

    def _audit_hook(self, method: str, metadata: dict[str, str]) -> AuditHook | None:
        """What records a finished call of `method` in the audit log: None for reads, health and reflection, or
        when the service keeps no audit log. It runs while the call's identity and request id are still set."""
        short = method.rsplit("/", 1)[-1]
        if self.audit is None or method.startswith(OPEN_PREFIXES) or not audited(method):
            return None
        audit = self.audit

        def record(request: Any, response: Any, context: grpc.ServicerContext) -> None:
            code = context.code() or grpc.StatusCode.OK
            if method == AUDIT_INTAKE and code == grpc.StatusCode.OK:
                return
            caller, request_id, forwarded = (
                identity.current(),
                request_id_var.get(),
                metadata.get("x-forwarded-for", ""),
            )
            try:
                event = event_for_call(
                    self.service, short, caller, request_id, code.name, context.peer(), forwarded, request, response
                )
            except Exception:  # the audit log must never change a call's answer
                log.exception("audit record not made", extra={"method": short})
                return
            audit.record(event)

        return record

    def _authorize(self, method: str, metadata: dict[str, str]) -> tuple[identity.Identity | None, DomainError | None]:
        """Who the call is for, or why it is refused: the key (mesh.auth), the user a service acts for, the role
        the method needs (mesh.roles)."""
        if not self.authenticator.enabled:
            unlisted = roles.required_role(method) is None  # fails closed even then
            return identity.ANONYMOUS_ADMIN, PermissionDenied(roles.unlisted(method)) if unlisted else None
        presented = _presented_key(metadata)
        if not presented:
            return None, Unauthenticated("missing credentials: send 'authorization: Bearer <api key>'")
        try:
            caller = self.authenticator.authenticate(presented)
            acting = self.authenticator.acting_for(caller, metadata.get(identity.ON_BEHALF_HEADER, ""))
        except DomainError as refusal:
            return None, refusal
        denial = roles.denial(method, caller, acting)
        return acting, PermissionDenied(denial) if denial else None

    def _finish(self, method: str, started: float, context: grpc.ServicerContext) -> None:
        code = context.code() or grpc.StatusCode.OK
        elapsed = time.perf_counter() - started
        RPC_REQUESTS.labels(self.service, method, code.name).inc()
        RPC_LATENCY.labels(self.service, method).observe(elapsed)
        caller = identity.current()
        log.info(
            "rpc",
            extra={
                "method": method,
                "code": code.name,
                "duration_ms": round(elapsed * 1000, 3),
                "caller": caller.subject if caller else "",
            },
        )

    def _take_stream_slot(self, context: grpc.ServicerContext) -> bool:
        """True once this call holds one of the `max_streams` slots; aborts with RESOURCE_EXHAUSTED if none is free."""
        if not self._stream_slots.acquire(blocking=False):
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self.service} already serves {self.max_streams} streams, its limit; close one or retry later",
            )
        return True

    def _checked(self, request: Any, method: str) -> Any:
        """`request`, when it decoded and keeps within mesh.limits; raises InvalidArgument otherwise."""
        if isinstance(request, _UndecodableBody):
            log.warning("undecodable request body", extra={"method": method, "bytes": request.size})
            raise InvalidArgument([], message=f"request body is not a valid {request.message_name}")
        violations = check_request(request)
        if violations:
            raise InvalidArgument(violations)
        return request

    def _requests(self, requests: Iterable[Any], method: str) -> Iterator[Any]:
        for request in requests:
            yield self._checked(request, method)

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

    def _unary(
        self,
        behaviour: Callable,
        method: str,
        request_id: str,
        caller: identity.Identity | None,
        denial: DomainError | None,
        audit: AuditHook | None,
        streaming: bool = False,
    ) -> Callable:
        def run(request: Any, context: grpc.ServicerContext) -> Any:
            token = request_id_var.set(request_id)
            caller_token = identity.set_current(caller)
            started = time.perf_counter()
            slot = False
            response = None
            try:
                context.send_initial_metadata((("x-request-id", request_id),))
                if denial:
                    raise denial
                if streaming:
                    slot = self._take_stream_slot(context)
                    response = behaviour(self._requests(request, method), context)
                else:
                    response = behaviour(self._checked(request, method), context)
                return response
            except Exception as error:  # mapped, never leaked
                self._fail(error, context, request_id)
            finally:
                if slot:
                    self._stream_slots.release()
                self._finish(method, started, context)
                if audit is not None:
                    audit(request, response, context)
                identity.reset_current(caller_token)
                request_id_var.reset(token)

        return run

    def _stream(
        self,
        behaviour: Callable,
        method: str,
        request_id: str,
        caller: identity.Identity | None,
        denial: DomainError | None,
        audit: AuditHook | None,
        streaming: bool = False,
    ) -> Callable:
        def run(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            request_id_var.set(request_id)
            identity.set_current(caller)
            started = time.perf_counter()
            slot = False
            try:
                context.send_initial_metadata((("x-request-id", request_id),))
                if denial:
                    raise denial
                slot = self._take_stream_slot(context)
                requests = self._requests(request, method) if streaming else self._checked(request, method)
                yield from behaviour(requests, context)
            except Exception as error:  # mapped, never leaked
                self._fail(error, context, request_id)
            finally:
                if slot:
                    self._stream_slots.release()
                self._finish(method, started, context)
                if audit is not None:
                    audit(request, None, context)
                request_id_var.set("")  # a generator may be closed from another context: no reset(token)
                identity.set_current(None)

        return run
