"""The shared server bootstrap: auth, request ids, metrics, error mapping, health, graceful shutdown."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from constellation.core.v1 import core_pb2, core_pb2_grpc
from core_svc.server import build as build_core
from core_svc.servicer import CoreServicer
from mesh import config
from mesh.server import MeshServer
from mesh.services import insecure_channel, registration
from tests.conftest import key_channel, rpc_error, service_env
from tests.pg import PostgresCluster, free_port

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def secured(tmp_path):
    env = service_env(
        tmp_path, CONSTELLATION_API_KEYS="admin-secret,reader-secret:reader", DATABASE_URL=f"sqlite:///{tmp_path}/c.db"
    )
    server = build_core(config.load("core", env))
    server.start()
    channel = insecure_channel(f"127.0.0.1:{server.port}")
    yield channel
    channel.close()
    server.stop(0)


def test_auth_rejects_missing_and_wrong_keys_and_enforces_roles(secured):
    core = core_pb2_grpc.CoreServiceStub(secured)
    listing = core_pb2.ListDatasetsRequest()
    missing = rpc_error(core.ListDatasets, listing)
    assert missing.code() == grpc.StatusCode.UNAUTHENTICATED and "Bearer" in missing.details()
    wrong = rpc_error(core.ListDatasets, listing, metadata=[("authorization", "Bearer guess")])
    assert wrong.code() == grpc.StatusCode.UNAUTHENTICATED
    assert core.ListDatasets(listing, metadata=[("authorization", "Bearer admin-secret")]).datasets == []
    assert core.ListDatasets(listing, metadata=[("x-api-key", "reader-secret")]).datasets == []
    create = core_pb2.CreateDatasetRequest(dataset=core_pb2.Dataset(name="a", uri="file:///data/a.tif", bands=["red"]))
    denied = rpc_error(core.CreateDataset, create, metadata=[("authorization", "Bearer reader-secret")])
    assert (
        denied.code() == grpc.StatusCode.PERMISSION_DENIED and "CreateDataset needs an editor key" in denied.details()
    )
    assert core.CreateDataset(create, metadata=[("authorization", "Bearer admin-secret")]).name == "a"


def test_health_and_reflection_stay_open_without_a_key(secured):
    reply = health_pb2_grpc.HealthStub(secured).Check(health_pb2.HealthCheckRequest(service=""))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(secured)
    [answer] = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in answer.list_services_response.service}
    assert {
        "constellation.core.v1.CoreService",
        "constellation.hosting.v1.HostingService",
        "grpc.health.v1.Health",
    } <= names


def test_request_id_is_echoed_and_attached_to_errors(core):
    call = core.ListDatasets.with_call(core_pb2.ListDatasetsRequest(), metadata=[("x-request-id", "req-123")])
    assert ("x-request-id", "req-123") in call[1].initial_metadata()
    error = rpc_error(
        core.GetDataset, core_pb2.GetDatasetRequest(id="ds_missing"), metadata=[("x-request-id", "req-456")]
    )
    status = rpc_status.from_call(error)
    assert any(d.type_url.endswith("google.rpc.RequestInfo") and b"req-456" in d.value for d in status.details)


class BrokenServicer(CoreServicer):
    def GetDataset(self, request, context):
        return {}["no such key"]


def test_bugs_become_internal_with_a_request_id_and_no_traceback(tmp_path, caplog):
    settings = config.load("core", service_env(tmp_path))
    server = MeshServer(settings, [registration("core", BrokenServicer(None, None, None))])
    server.start()
    try:
        with key_channel(f"127.0.0.1:{server.port}") as channel:
            error = rpc_error(
                core_pb2_grpc.CoreServiceStub(channel).GetDataset,
                core_pb2.GetDatasetRequest(id="x"),
                metadata=[("x-request-id", "bug-1")],
            )
    finally:
        server.stop(0)
    assert error.code() == grpc.StatusCode.INTERNAL
    assert "bug-1" in error.details()
    assert "Traceback" not in error.details() and "KeyError" not in error.details()
    assert any(r.exc_info and r.exc_info[0] is KeyError for r in caplog.records)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def counter(text: str, method: str, code: str) -> float:
    pattern = rf'constellation_grpc_requests_total\{{code="{code}",method="{method}",service="core"\}} ([0-9.e+]+)'
    match = re.search(pattern, text)
    return float(match.group(1)) if match else 0.0


def test_metrics_count_rpcs_by_code_and_time_them(tmp_path):
    port = free_port()
    server = build_core(config.load("core", service_env(tmp_path, CONSTELLATION_CORE_METRICS_PORT=str(port))))
    server.start()
    try:
        before = scrape(port)
        with key_channel(f"127.0.0.1:{server.port}") as channel:
            core = core_pb2_grpc.CoreServiceStub(channel)
            for _ in range(3):
                core.ListDatasets(core_pb2.ListDatasetsRequest())
            rpc_error(core.GetDataset, core_pb2.GetDatasetRequest(id="ds_missing"))
        after = scrape(port)
    finally:
        server.stop(0)
    assert counter(after, "ListDatasets", "OK") - counter(before, "ListDatasets", "OK") == 3
    assert counter(after, "GetDataset", "NOT_FOUND") - counter(before, "GetDataset", "NOT_FOUND") == 1
    assert (
        'constellation_grpc_request_duration_seconds_bucket{le="0.005",method="ListDatasets",service="core"}' in after
    )


def wait_for_health(channel: grpc.Channel, wanted: int, timeout_s: float = 15.0) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout_s
    status = None
    while time.monotonic() < deadline:
        status = stub.Check(health_pb2.HealthCheckRequest(service="constellation.core.v1.CoreService")).status
        if status == wanted:
            return
        time.sleep(0.1)
    pytest.fail(f"health stayed {status}, wanted {wanted}")


def test_health_follows_the_database_down_and_back(tmp_path):
    cluster = PostgresCluster().start()
    try:
        env = service_env(tmp_path, DATABASE_URL=cluster.admin_url)
        server = build_core(config.load("core", env))
        server.start()
        channel = key_channel(f"127.0.0.1:{server.port}")
        core = core_pb2_grpc.CoreServiceStub(channel)
        try:
            wait_for_health(channel, health_pb2.HealthCheckResponse.SERVING)
            cluster.stop()
            wait_for_health(channel, health_pb2.HealthCheckResponse.NOT_SERVING)
            outage = rpc_error(core.ListDatasets, core_pb2.ListDatasetsRequest())
            assert outage.code() == grpc.StatusCode.UNAVAILABLE and "database" in outage.details()
            cluster.start()
            wait_for_health(channel, health_pb2.HealthCheckResponse.SERVING)
            assert core.ListDatasets(core_pb2.ListDatasetsRequest()).datasets == []
        finally:
            channel.close()
            server.stop(0)
    finally:
        cluster.destroy()


def test_sigterm_lets_in_flight_rpcs_finish_then_exits_cleanly(tmp_path):
    env = {**os.environ, **service_env(tmp_path), "SLOW_SECONDS": "1.5", "CONSTELLATION_SHUTDOWN_GRACE_S": "10"}
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "helpers" / "slow_server.py")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        port = int(process.stdout.readline())
        channel = key_channel(f"127.0.0.1:{port}")
        core = core_pb2_grpc.CoreServiceStub(channel)
        result: dict = {}
        slow = threading.Thread(
            target=lambda: result.update(reply=core.GetDataset(core_pb2.GetDatasetRequest(id="ds_1"), timeout=10))
        )
        slow.start()
        time.sleep(0.4)  # the slow call is in flight
        process.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        refused = rpc_error(core.ListDatasets, core_pb2.ListDatasetsRequest(), timeout=2)
        assert refused.code() == grpc.StatusCode.UNAVAILABLE
        slow.join(10)
        assert result["reply"].name == "slow"  # finished, not cancelled
        assert process.wait(10) == 0
        channel.close()
    finally:
        process.kill()
        process.wait()
    assert '"msg": "draining"' in process.stderr.read()
