"""The audit log: the non-blocking queue every service records into (mesh.audit), core's store with its rules,
paging and retention (core_svc.audit), and the whole mesh behind the gateway, where hosting's and the
orchestrator's calls reach core's log."""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
import yaml
from google.protobuf import descriptor_pool
from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client import REGISTRY

from constellation.core.v1 import audit_pb2, audit_pb2_grpc, core_pb2
from constellation.hosting.v1 import hosting_pb2, hosting_pb2_grpc
from constellation.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from constellation_sdk import mesh_process
from core_svc.audit import AuditStore
from core_svc.db import migrate
from core_svc.server import build as build_core
from core_svc.settings import CoreSettings
from mesh import audit as mesh_audit
from mesh import config
from mesh.db import create_db_engine
from mesh.errors import field_violations
from mesh.identity import Identity
from mesh.services import SERVED_BY, SERVICES, channel_options, insecure_channel, with_api_key
from tests.conftest import mesh_env, rpc_error, service_env

ROOT = Path(__file__).resolve().parent.parent


def event(method: str = "DeployModel", when: datetime | None = None, **fields: str) -> audit_pb2.AuditEvent:
    record = audit_pb2.AuditEvent(service="hosting", method=method, outcome="OK", subject="key:abc", role="editor")
    for name, value in fields.items():
        setattr(record, name, value)
    record.time.FromDatetime(when or datetime.now(UTC))
    return record


def dropped(service: str, reason: str) -> float:
    labels = {"service": service, "reason": reason}
    return REGISTRY.get_sample_value("constellation_audit_dropped_total", labels) or 0.0


# --------------------------------------------------------------------------- the queue (mesh.audit)


class BlockingSink:
    """Takes batches, but holds the first write until released."""

    def __init__(self) -> None:
        self.written: list[audit_pb2.AuditEvent] = []
        self.entered, self.release = threading.Event(), threading.Event()

    def write(self, events: list[audit_pb2.AuditEvent]) -> None:
        self.entered.set()
        self.release.wait(30)
        self.written += events

    def close(self) -> None:
        pass


def test_a_full_queue_drops_with_a_count_and_a_warning_and_never_blocks(caplog):
    sink = BlockingSink()
    log = mesh_audit.AuditLog("queue-test", sink, queue_size=3)
    log.start()
    log.record(event(request_id="first"))
    assert sink.entered.wait(10), "the flusher takes the first record"
    before = dropped("queue-test", "queue_full")
    recording = threading.Thread(target=lambda: [log.record(event(request_id=f"r{i}")) for i in range(10)])
    with caplog.at_level(logging.WARNING, logger="mesh.audit"):
        recording.start()
        recording.join(10)
    assert not recording.is_alive(), "record() waited while the sink was stuck"
    assert dropped("queue-test", "queue_full") - before == 7  # three fit in the queue
    assert any(r.getMessage() == "audit records dropped" and r.levelno == logging.WARNING for r in caplog.records)
    sink.release.set()
    log.close()
    assert [e.request_id for e in sink.written] == ["first", "r0", "r1", "r2"]


class FlakySink:
    def __init__(self, failures: int) -> None:
        self.failures, self.written = failures, []

    def write(self, events: list[audit_pb2.AuditEvent]) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("core is away")
        self.written += events

    def close(self) -> None:
        pass


def test_a_batch_the_sink_refuses_is_retried_then_dropped_and_counted():
    recovering = FlakySink(failures=2)
    log = mesh_audit.AuditLog("retry-test", recovering, retry_s=30)
    log.start()
    log.record(event(request_id="kept"))
    deadline = time.monotonic() + 10
    while not recovering.written and time.monotonic() < deadline:
        time.sleep(0.05)
    log.close()
    assert [e.request_id for e in recovering.written] == ["kept"]

    before = dropped("retry-test", "write_failed")
    broken = FlakySink(failures=1000)
    log = mesh_audit.AuditLog("retry-test", broken, retry_s=0.3)
    log.start()
    log.record(event())
    log.record(event())
    deadline = time.monotonic() + 10
    while dropped("retry-test", "write_failed") - before < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    log.close()
    assert dropped("retry-test", "write_failed") - before == 2 and not broken.written


def test_a_record_names_the_target_and_keeps_caller_text_printable_and_short():
    update = core_pb2.UpdateDatasetRequest(dataset=core_pb2.Dataset(id="ds_1", name="n"))
    created = core_pb2.Dataset(id="ds_new")
    caller = Identity("key:0123456789ab", "editor")
    cases = [
        (core_pb2.DeleteDatasetRequest(id="ds_9"), None, "ds_9"),
        (update, core_pb2.Dataset(id="ds_1"), "ds_1"),
        (core_pb2.CreateDatasetRequest(dataset=core_pb2.Dataset(name="n")), created, "ds_new"),
        (hosting_pb2.PackageModelRequest(model_name="m"), hosting_pb2.ModelStatus(model_id="hm_2"), "hm_2"),
        (hosting_pb2.StopDeploymentsRequest(), None, ""),
        (core_pb2.DeleteDatasetRequest(id="ds_\x00\n" + "x" * 500), None, "ds_" + "x" * 125),
        (b"undecodable", None, ""),
    ]
    for request, response, target in cases:
        record = mesh_audit.event_for_call(
            "core", "M", caller, "req-1", "OK", "ipv4:127.0.0.1:1", "6.6.6.6, 127.0.0.1", request, response
        )
        assert record.target_id == target, request
    assert (record.subject, record.role, record.forwarded_for) == ("key:0123456789ab", "editor", "127.0.0.1")
    anonymous = mesh_audit.event_for_call("core", "M", None, "req-2", "UNAUTHENTICATED", "", "")
    assert (anonymous.subject, anonymous.role, anonymous.forwarded_for) == ("", "", "")


# Every method of the mesh that changes something: the ones the audit log records. A method added to a proto
# fails this test until it is named here or its name says it reads (mesh.audit.READ_PREFIXES).
AUDITED = {
    "CoreService": {
        "CreateDataset", "UpdateDataset", "DeleteDataset", "ImportStacDatasets", "RegisterModel", "DeleteModel",
        "ImportModelFromStac", "CreatePipeline", "DeletePipeline", "RunPipeline", "CancelRun",
    },
    "IdentityService": {"CreateUser", "UpdateUser", "CreateApiKey", "RevokeApiKey"},
    "AuditService": {"RecordAuditEvents"},
    "HostingService": {
        "PackageModel", "DeployModel", "DeleteModel", "PullImage", "PushImage", "ExportCompose", "StopDeployments",
    },
    "OrchestratorService": {"LaunchRun", "CancelRun"},
    "AgentService": set(),
}  # fmt: skip


def test_the_audit_log_records_exactly_the_methods_that_change_something():
    for full_name, _ in SERVICES.values():
        service = descriptor_pool.Default().FindServiceByName(full_name)
        recorded = {m.name for m in service.methods if mesh_audit.audited(f"/{full_name}/{m.name}")}
        assert recorded == AUDITED[service.name], service.name


# --------------------------------------------------------------------------- core's store (core_svc.audit)


@pytest.fixture
def audit_core(tmp_path, database_url) -> Iterator[audit_pb2_grpc.AuditServiceStub]:
    """Core, called with the mesh's service key as hosting and the orchestrator send their records."""
    settings = config.load("core", service_env(tmp_path, DATABASE_URL=database_url))
    server = build_core(settings)
    server.start()
    with with_api_key(insecure_channel(f"127.0.0.1:{server.port}"), settings.service_key) as channel:
        yield audit_pb2_grpc.AuditServiceStub(channel)
    server.stop(0)


def test_records_a_service_sends_are_checked_before_they_are_stored(audit_core):
    bad = [
        event(outcome="FINE"),
        event(service="elsewhere"),
        event(method=""),
        event(subject="key:\x00"),
        event(role="root"),
        event(peer="p" * 257),
    ]
    bad.append(audit_pb2.AuditEvent(service="hosting", method="M", outcome="OK"))  # no time
    error = rpc_error(audit_core.RecordAuditEvents, audit_pb2.RecordAuditEventsRequest(events=bad))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in field_violations(error)] == [
        "events[0].outcome", "events[1].service", "events[2].method", "events[3].subject", "events[4].role",
        "events[5].peer", "events[6].time",
    ]  # fmt: skip
    too_many = audit_pb2.RecordAuditEventsRequest(events=[event()] * (mesh_audit.MAX_BATCH + 1))
    assert rpc_error(audit_core.RecordAuditEvents, too_many).code() == grpc.StatusCode.INVALID_ARGUMENT
    # Nothing of what was sent is stored; the refusals themselves are in the log (core writes its own records
    # from a background thread).
    deadline, logged = time.monotonic() + 10, []
    while len(logged) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
        logged = audit_core.ListAuditEvents(audit_pb2.ListAuditEventsRequest()).events
    assert [(e.method, e.outcome) for e in logged] == [("RecordAuditEvents", "INVALID_ARGUMENT")] * 2


def test_list_pages_newest_first_within_a_time_range(audit_core):
    start = datetime(2026, 3, 1, tzinfo=UTC)
    records = [event(request_id=f"r{i}", when=start + timedelta(minutes=i)) for i in range(7)]
    reply = audit_core.RecordAuditEvents(audit_pb2.RecordAuditEventsRequest(events=records[::-1]))
    assert reply.recorded == 7

    def stamp(minutes: int) -> Timestamp:
        value = Timestamp()
        value.FromDatetime(start + timedelta(minutes=minutes))
        return value

    request = audit_pb2.ListAuditEventsRequest(page_size=2, start_time=stamp(1), end_time=stamp(6))
    seen, pages = [], 0
    while True:
        page = audit_core.ListAuditEvents(request)
        seen += [e.request_id for e in page.events]
        pages += 1
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    assert seen == ["r5", "r4", "r3", "r2", "r1"] and pages == 3
    first = audit_core.ListAuditEvents(audit_pb2.ListAuditEventsRequest(page_size=2))
    assert [e.request_id for e in first.events] == ["r6", "r5"]
    assert first.events[0].time.ToDatetime(tzinfo=UTC) == start + timedelta(minutes=6)
    moved = audit_pb2.ListAuditEventsRequest(page_size=2, page_token=first.next_page_token, start_time=stamp(3))
    assert rpc_error(audit_core.ListAuditEvents, moved).code() == grpc.StatusCode.INVALID_ARGUMENT
    unknown = audit_pb2.ListAuditEventsRequest(filter='password = "x"')
    assert "subject, method, outcome" in rpc_error(audit_core.ListAuditEvents, unknown).details()


def test_records_older_than_the_retention_are_deleted(tmp_path):
    engine = create_db_engine(f"sqlite:///{tmp_path / 'audit.db'}")
    migrate(engine)
    store = AuditStore(engine, retention_days=30)
    now = datetime.now(UTC)
    store.write([event(request_id="old", when=now - timedelta(days=31)), event(request_id="new", when=now)])
    assert store.prune(now) == 1
    admin = Identity("key:admin", "admin")
    listed, _ = store.list(admin, 0, "", "", None, None)
    assert [e.request_id for e in listed] == ["new"]
    assert CoreSettings.from_env({"CONSTELLATION_AUDIT_RETENTION_DAYS": "7"}).audit_retention_days == 7
    with pytest.raises(config.ConfigError, match="CONSTELLATION_AUDIT_RETENTION_DAYS"):
        CoreSettings.from_env({"CONSTELLATION_AUDIT_RETENTION_DAYS": "0"})


# --------------------------------------------------------------------------- the whole mesh


def test_every_service_has_a_gateway_route_to_the_process_that_serves_it():
    envoy = yaml.safe_load((ROOT / "envoy" / "envoy.yaml").read_text())
    manager = envoy["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    [mesh_host] = [h for h in manager["route_config"]["virtual_hosts"] if h["name"] == "mesh"]
    routes = {r["match"].get("prefix"): r["route"]["cluster"] for r in mesh_host["routes"] if "route" in r}
    for service, (full_name, _) in SERVICES.items():
        assert routes.get(f"/{full_name}/") == SERVED_BY.get(service, service), service


SPOOFED = "203.0.113.9"
KEYS = {"admin": "mesh-admin-key-31", "editor": "mesh-editor-key-47", "viewer": "mesh-viewer-key-59"}


@pytest.fixture(scope="module")
def keyed_mesh(tmp_path_factory):
    env = mesh_env(tmp_path_factory.mktemp("audit-mesh"))
    env["CONSTELLATION_API_KEYS"] = ",".join(f"{key}:{role}" for role, key in KEYS.items())
    state = mesh_process.up(env)
    channel = grpc.insecure_channel(state["processes"]["gateway"]["address"], options=channel_options())
    try:
        yield channel
    finally:
        channel.close()
        mesh_process.down(env)


def as_(who: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {KEYS[who]}")]


def request_id_and_code(call, request, metadata) -> tuple[str, str]:
    """The request id the service gave the call (the gateway replaces a client's) and its final status code."""
    try:
        _, answered = call.with_call(request, metadata=metadata, timeout=30)
    except grpc.RpcError as error:
        answered = error  # a failed call is also a grpc.Call
    request_id = dict(answered.initial_metadata())["x-request-id"]
    return request_id, answered.code().name


def test_hosting_and_orchestrator_calls_reach_core_audit_log_through_the_gateway(keyed_mesh):
    hosting = hosting_pb2_grpc.HostingServiceStub(keyed_mesh)
    orchestrator = orchestrator_pb2_grpc.OrchestratorServiceStub(keyed_mesh)
    audit = audit_pb2_grpc.AuditServiceStub(keyed_mesh)
    calls = {
        "deleted": (hosting.DeleteModel, hosting_pb2.DeleteModelRequest(model_id="hm_gone"), "editor"),
        "denied": (hosting.DeployModel, hosting_pb2.DeployModelRequest(model_id="hm_gone"), "viewer"),
        "canceled": (orchestrator.CancelRun, orchestrator_pb2.CancelRunRequest(id="run_gone"), "admin"),
        "read": (hosting.ListModels, hosting_pb2.ListModelsRequest(), "editor"),
        "read too": (orchestrator.GetRun, orchestrator_pb2.GetRunRequest(id="run_gone"), "admin"),
    }
    answers = {}
    for name, (call, request, who) in calls.items():
        spoofed = [*as_(who), ("x-forwarded-for", SPOOFED)]
        answers[name] = request_id_and_code(call, request, spoofed)
    assert answers["denied"][1] == "PERMISSION_DENIED" and answers["canceled"][1] == "NOT_FOUND"

    by_request = {request_id: name for name, (request_id, _) in answers.items()}
    deadline, found = time.monotonic() + 20, {}
    while len(found) < 3 and time.monotonic() < deadline:  # hosting and the orchestrator send batches
        request = audit_pb2.ListAuditEventsRequest(page_size=100)
        events = audit.ListAuditEvents(request, metadata=as_("admin"), timeout=10).events
        found = {by_request[e.request_id]: e for e in events if e.request_id in by_request}
        time.sleep(0.2)
    assert set(found) == {"deleted", "denied", "canceled"}, "mutating calls only: reads are not audited"
    for name, record in found.items():
        assert (record.request_id, record.outcome) == answers[name]
        # The address the gateway saw (loopback, or this host's own under some sandboxes), not the one the client
        # wrote into x-forwarded-for itself.
        assert ipaddress.ip_address(record.forwarded_for) != ipaddress.ip_address(SPOOFED)
        assert record.subject.startswith("key:") and record.peer
    deleted, denied, canceled = found["deleted"], found["denied"], found["canceled"]
    assert (deleted.service, deleted.method, deleted.target_id, deleted.role) == (
        "hosting", "DeleteModel", "hm_gone", "editor"
    )  # fmt: skip
    assert (denied.service, denied.method, denied.role) == ("hosting", "DeployModel", "viewer")
    assert (canceled.service, canceled.method, canceled.target_id) == ("orchestrator", "CancelRun", "run_gone")
    assert not any(key in str(list(found.values())) for key in KEYS.values())
    for who in ("editor", "viewer"):
        refused = rpc_error(audit.ListAuditEvents, audit_pb2.ListAuditEventsRequest(), metadata=as_(who))
        assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
