"""Domain errors and the one place that turns them into gRPC statuses.

Domain code raises these; it never imports grpc. The server interceptor maps
them with `to_status`, attaching google.rpc error details (BadRequest field
violations for INVALID_ARGUMENT) so clients can point at the offending field.

A status travels in HTTP/2 trailers, which proxies cap (Envoy resets a stream
whose headers pass 60 KiB), and messages often quote what the caller sent.
So `shorten` cuts any echoed value to SHORT_VALUE_CHARS, and `to_status` caps
the message at MAX_STATUS_MESSAGE_BYTES and the details at
MAX_STATUS_DETAILS_BYTES whatever a raiser wrote.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

SHORT_VALUE_CHARS = 100
MAX_STATUS_MESSAGE_BYTES = 2048
MAX_STATUS_DETAILS_BYTES = 8192
MAX_VIOLATION_CHARS = 512  # each field path and description in BadRequest details


def shorten(value: str, limit: int = SHORT_VALUE_CHARS) -> str:
    """`value` cut to `limit` characters, ending in "…" when cut: for quoting caller input in a message."""
    return value if len(value) <= limit else value[: limit - 1] + "…"


def _cap_bytes(text: str, limit: int) -> str:
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[: limit - len("…".encode())].decode(errors="ignore") + "…"


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class DomainError(Exception):
    code = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def details(self) -> list[any_pb2.Any]:
        return []


class InvalidArgument(DomainError):
    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, violations: list[FieldViolation] | FieldViolation, message: str | None = None) -> None:
        self.violations = [violations] if isinstance(violations, FieldViolation) else list(violations)
        if message is None:
            first = self.violations[0]
            message = f"{first.field}: {first.description}"
            if len(self.violations) > 1:
                message += f" (and {len(self.violations) - 1} more problem{'s' if len(self.violations) > 2 else ''})"
        super().__init__(message)

    @classmethod
    def field(cls, field: str, description: str) -> InvalidArgument:
        return cls(FieldViolation(field, description))

    def details(self) -> list[any_pb2.Any]:
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=shorten(v.field, MAX_VIOLATION_CHARS), description=shorten(v.description, MAX_VIOLATION_CHARS)
                )
                for v in self.violations
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(bad_request)
        return [packed]


class NotFound(DomainError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(DomainError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(DomainError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unauthenticated(DomainError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(DomainError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unavailable(DomainError):
    """A dependency (database, engine, peer service) does not answer."""

    code = grpc.StatusCode.UNAVAILABLE


class Unimplemented(DomainError):
    code = grpc.StatusCode.UNIMPLEMENTED


def _capped_details(details: list[any_pb2.Any]) -> list[any_pb2.Any]:
    """`details` within MAX_STATUS_DETAILS_BYTES: a BadRequest keeps its first violations that fit."""
    kept: list[any_pb2.Any] = []
    budget = MAX_STATUS_DETAILS_BYTES
    for detail in details:
        if detail.ByteSize() > budget and detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            fitting = error_details_pb2.BadRequest()
            size = 64  # the Any's type URL and framing
            for violation in bad_request.field_violations:
                size += violation.ByteSize() + 4  # 4: its tag and length
                if size > budget:
                    break
                fitting.field_violations.append(violation)
            detail = any_pb2.Any()
            detail.Pack(fitting)
        if detail.ByteSize() <= budget:
            kept.append(detail)
            budget -= detail.ByteSize()
    return kept


def to_status(error: DomainError, request_id: str = "") -> grpc.Status:
    details = _capped_details(error.details())
    if request_id:
        info = error_details_pb2.RequestInfo(request_id=request_id)
        packed = any_pb2.Any()
        packed.Pack(info)
        details.append(packed)
    message = _cap_bytes(error.message, MAX_STATUS_MESSAGE_BYTES)
    status = status_pb2.Status(code=error.code.value[0], message=message, details=details)
    return rpc_status.to_status(status)


def internal_status(request_id: str) -> grpc.Status:
    """What a client sees for a bug: no traceback, a request id to find the log line."""
    message = f"internal error; the server log has details under request id {request_id}"
    info = any_pb2.Any()
    info.Pack(error_details_pb2.RequestInfo(request_id=request_id))
    return rpc_status.to_status(status_pb2.Status(code=code_pb2.INTERNAL, message=message, details=[info]))


def field_violations(error: grpc.RpcError) -> list[FieldViolation]:
    """Read BadRequest field violations back out of a client-side RpcError."""
    status = rpc_status.from_call(error)
    found: list[FieldViolation] = []
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            found += [FieldViolation(v.field, v.description) for v in bad_request.field_violations]
    return found
