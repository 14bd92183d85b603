"""Domain errors and the one place that turns them into gRPC statuses.

Domain code raises these; it never imports grpc. The server interceptor maps
them with `to_status`, attaching google.rpc error details (BadRequest field
violations for INVALID_ARGUMENT) so clients can point at the offending field.

A status travels in HTTP/2 trailers, which clients and proxies cap (a grpc
client refuses trailers over 8 KiB unless it sets grpc.max_metadata_size, and
then sees RESOURCE_EXHAUSTED instead of the answer; Envoy resets a stream
whose headers pass 60 KiB), and messages often quote what the caller sent.
So `shorten` cuts any echoed value to SHORT_VALUE_CHARS, and `to_status` caps
what goes on the wire whatever a raiser wrote: the message at
MAX_STATUS_MESSAGE_BYTES once percent-encoded as grpc-message (a byte outside
printable ASCII takes three), the details at MAX_STATUS_DETAILS_BYTES
serialized (grpc-status-details-bin is their base64, with the message again).
Together they stay under 7 KiB of trailers.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

SHORT_VALUE_CHARS = 100
MAX_STATUS_MESSAGE_BYTES = 1024  # as grpc-message, percent-encoded
MAX_STATUS_DETAILS_BYTES = 3072  # serialized; 4 KiB in base64
MAX_VIOLATION_BYTES = 512  # each field path and description in BadRequest details, UTF-8


def shorten(value: str, limit: int = SHORT_VALUE_CHARS) -> str:
    """`value` cut to `limit` characters, ending in "…" when cut: for quoting caller input in a message."""
    return value if len(value) <= limit else value[: limit - 1] + "…"


def _cap_bytes(text: str, limit: int) -> str:
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[: limit - len("…".encode())].decode(errors="ignore") + "…"


def _percent_encoded_bytes(char: str) -> int:
    """What `char` takes in grpc-message: printable ASCII but '%' as is, any other byte of its UTF-8 as %XX."""
    return sum(1 if 0x20 <= byte <= 0x7E and byte != 0x25 else 3 for byte in char.encode())


def _cap_message(text: str, limit: int) -> str:
    """`text` cut, ending in "…", so that it takes at most `limit` bytes as grpc-message."""
    if len(text) * 12 <= limit or sum(map(_percent_encoded_bytes, text)) <= limit:  # 12: 4 UTF-8 bytes, each %XX
        return text
    budget, kept = limit - _percent_encoded_bytes("…"), 0
    for char in text:
        budget -= _percent_encoded_bytes(char)
        if budget < 0:
            break
        kept += 1
    return text[:kept] + "…"


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
                    field=_cap_bytes(v.field, MAX_VIOLATION_BYTES),
                    description=_cap_bytes(v.description, MAX_VIOLATION_BYTES),
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
    message = _cap_message(error.message, MAX_STATUS_MESSAGE_BYTES)
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
