"""The audit log's collecting side, shared by every service.

The interceptor hands each finished mutating call to its service's AuditLog as an AuditEvent (`event_for_call`:
who, what, when, the request id, the outcome, the caller's address; never credentials, never the request's body).
`AuditLog.record` only queues the record and returns, so a call never waits for the audit log. The queue is
bounded: when it is full the record is dropped, counted in constellation_audit_dropped_total and reported at
WARNING. A background thread writes queued records in batches to the service's sink: core's own database for
core, core's AuditService.RecordAuditEvents for the others (`CoreAuditSink`). A batch the sink cannot take is
tried again with backoff for up to `retry_s`, then dropped and counted the same way.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from datetime import UTC, datetime
from typing import Protocol

import grpc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from prometheus_client import Counter

from constellation.core.v1 import audit_pb2, audit_pb2_grpc
from mesh.identity import Identity

log = logging.getLogger("mesh.audit")

QUEUE_SIZE = 10_000
MAX_BATCH = 500  # records per write, and per RecordAuditEvents call
# How often the writer looks at the queue. It sleeps between looks rather than waking for each record, so that a
# busy service pays for a record with a put into the queue, not a thread switch.
FLUSH_INTERVAL_S = 0.2
WARNING_INTERVAL_S = 10.0  # drops are reported at most this often, with how many there were
# Bounds of a record's text fields, in characters (they are caller input, or derived from it).
FIELD_LIMITS = {
    "service": 32,
    "method": 128,
    "target_id": 128,
    "subject": 256,
    "role": 16,
    "request_id": 128,
    "outcome": 32,
    "peer": 256,
    "forwarded_for": 256,
}
OUTCOMES = tuple(code.name for code in grpc.StatusCode)
# Methods that change nothing, by name (Authenticate and WhoAmI look a key up; Recommend and PlanPipeline answer
# from the catalog); every other method of the mesh is a mutating call and is audited.
READ_PREFIXES = ("Get", "List", "Watch", "Validate", "Recommend", "Plan", "WhoAmI", "Authenticate")
# The audit log's own intake: recording each accepted batch would write the log twice (refusals are recorded).
AUDIT_INTAKE = "/constellation.core.v1.AuditService/RecordAuditEvents"

DROPPED = Counter(
    "constellation_audit_dropped_total",
    "Audit records dropped: the queue was full, or the audit log could not be written.",
    ["service", "reason"],
)


class AuditSink(Protocol):
    """Where a service's audit records go."""

    def write(self, events: list[audit_pb2.AuditEvent]) -> None:
        """Stores `events`; raises when it cannot."""

    def close(self) -> None: ...


def audited(method: str) -> bool:
    """Whether a finished call of `method` ("/package.Service/Method") goes into the audit log."""
    return not method.rsplit("/", 1)[-1].startswith(READ_PREFIXES)


def printable(text: str, limit: int) -> str:
    """`text` without unprintable characters (NULs, newlines), cut to `limit` characters."""
    return "".join(char for char in text[: limit * 2] if char.isprintable())[:limit]


def _named_id(message: Message) -> str:
    """The value of `message`'s first set `id` or `*_id` string field."""
    for field, value in message.ListFields():
        if field.type == FieldDescriptor.TYPE_STRING and not field.is_repeated:
            if field.name == "id" or field.name.endswith("_id"):
                return str(value)
    return ""


def target_id(request: object, response: object) -> str:
    """The id a call acted on: the request's `id`/`*_id`, else one in a message it holds (an update's resource),
    else the response's (a create's new resource)."""
    for message in (request, response):
        if not isinstance(message, Message):
            continue
        found = _named_id(message) or next(
            (
                _named_id(value)
                for field, value in message.ListFields()
                if field.type == FieldDescriptor.TYPE_MESSAGE and not field.is_repeated and _named_id(value)
            ),
            "",
        )
        if found:
            return printable(found, FIELD_LIMITS["target_id"])
    return ""


def event_for_call(
    service: str,
    method: str,
    caller: Identity | None,
    request_id: str,
    outcome: str,
    peer: str,
    forwarded_for: str,
    request: object = None,
    response: object = None,
) -> audit_pb2.AuditEvent:
    """The record of one finished call. `forwarded_for` is the x-forwarded-for header: its last entry is the one
    the gateway added."""
    event = audit_pb2.AuditEvent(
        service=service,
        method=method,
        target_id=target_id(request, response),
        subject=caller.subject if caller else "",
        role=caller.role if caller else "",
        request_id=request_id,
        outcome=outcome,
        peer=printable(peer, FIELD_LIMITS["peer"]),
        forwarded_for=printable(forwarded_for.rsplit(",", 1)[-1].strip(), FIELD_LIMITS["forwarded_for"]),
    )
    event.time.FromDatetime(datetime.now(UTC))
    return event


class AuditLog:
    """A bounded queue of audit records and the thread that writes them to `sink` in batches."""

    def __init__(
        self,
        service: str,
        sink: AuditSink,
        queue_size: int = QUEUE_SIZE,
        batch_size: int = MAX_BATCH,
        retry_s: float = 60.0,
    ) -> None:
        self.service = service
        self.sink = sink
        self.batch_size = batch_size
        self.retry_s = retry_s
        self._queue: queue.Queue[audit_pb2.AuditEvent] = queue.Queue(queue_size)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._drops_lock = threading.Lock()
        self._unreported = 0
        self._last_warning = -WARNING_INTERVAL_S

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"{self.service}-audit", daemon=True)
        self._thread.start()

    def record(self, event: audit_pb2.AuditEvent) -> None:
        """Queues `event` without waiting; drops it (counted, with a WARNING) when the queue is full."""
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self._drop(1, "queue_full")

    def close(self, timeout_s: float = 5.0) -> None:
        """Writes what is queued (for at most `timeout_s`), then closes the sink."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self.sink.close()

    def _drop(self, count: int, reason: str) -> None:
        DROPPED.labels(self.service, reason).inc(count)
        with self._drops_lock:
            self._unreported += count
            now = time.monotonic()
            if now - self._last_warning < WARNING_INTERVAL_S:
                return
            count, self._unreported, self._last_warning = self._unreported, 0, now
        log.warning("audit records dropped", extra={"dropped": count, "reason": reason})

    def _run(self) -> None:
        while True:
            batch = self._take()
            if batch:
                self._write(batch)
            if len(batch) < self.batch_size:  # the queue is empty: look again later (at once when stopping)
                if self._stopping.is_set() and self._queue.empty():
                    return
                self._stopping.wait(FLUSH_INTERVAL_S)

    def _take(self) -> list[audit_pb2.AuditEvent]:
        """What is queued, up to a batch."""
        batch: list[audit_pb2.AuditEvent] = []
        while len(batch) < self.batch_size:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _write(self, batch: list[audit_pb2.AuditEvent]) -> None:
        deadline, delay = time.monotonic() + self.retry_s, 0.5
        while True:
            try:
                self.sink.write(batch)
                return
            except Exception as error:  # a sink that cannot write (core away, database down) must not stop the thread
                if self._stopping.is_set() or time.monotonic() + delay > deadline:
                    log.warning("audit records not written", extra={"records": len(batch), "error": str(error)[:200]})
                    self._drop(len(batch), "write_failed")
                    return
                self._stopping.wait(delay)
                delay = min(delay * 2, 10.0)


class CoreAuditSink:
    """Sends a service's audit records to core's AuditService over `channel` (which it closes), presenting the
    mesh's service key (RecordAuditEvents is internal to the mesh: mesh.roles)."""

    def __init__(self, channel: grpc.Channel, service_key: str, timeout_s: float = 10.0) -> None:
        self._channel = channel
        self._stub = audit_pb2_grpc.AuditServiceStub(channel)
        self._metadata = (("authorization", f"Bearer {service_key}"),) if service_key else ()
        self._timeout_s = timeout_s

    def write(self, events: list[audit_pb2.AuditEvent]) -> None:
        request = audit_pb2.RecordAuditEventsRequest(events=events)
        self._stub.RecordAuditEvents(request, metadata=self._metadata, timeout=self._timeout_s)

    def close(self) -> None:
        self._channel.close()
