"""The gateway's limits at the door, against a real mesh behind the real Envoy: the admin interface only on a
0600 Unix socket, Host names checked, CORS only for the gateway's own origins, request sizes capped, per-address
and per-key rate limits, idle streams and surplus connections closed. Every request goes to 127.0.0.1; every loop
is bounded."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
import requests
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from constellation.core.v1 import core_pb2, core_pb2_grpc
from constellation_sdk import mesh_process
from gateway import admin
from gateway import supervisor as gateway
from gateway.settings import GatewaySettings
from tests.conftest import mesh_env
from tests.pg import free_port

PER_ADDRESS_PER_S = 40
PER_KEY_PER_S = 10
MAX_REQUEST_MB = 1
STREAM_IDLE_TIMEOUT_S = 2
MAX_CONNECTIONS = 20
UNUSED_ADDRESSES = {service: "127.0.0.1:1" for service in mesh_process.SERVICES}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    env = {
        **mesh_env(tmp_path_factory.mktemp("mesh")),
        "CONSTELLATION_GATEWAY_RATE_LIMIT_PER_ADDRESS": str(PER_ADDRESS_PER_S),
        "CONSTELLATION_GATEWAY_RATE_LIMIT_PER_KEY": str(PER_KEY_PER_S),
        "CONSTELLATION_GATEWAY_MAX_REQUEST_MB": str(MAX_REQUEST_MB),
        "CONSTELLATION_GATEWAY_STREAM_IDLE_TIMEOUT_S": str(STREAM_IDLE_TIMEOUT_S),
        "CONSTELLATION_GATEWAY_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
        # Deprecated: the admin interface stays on its socket all the same.
        "CONSTELLATION_GATEWAY_ADMIN_PORT": str(free_port()),
    }
    with pytest.warns(FutureWarning, match="CONSTELLATION_GATEWAY_ADMIN_PORT is deprecated"):
        state = mesh_process.up(env)
    gateway_entry = state["processes"]["gateway"]
    yield {
        "env": env,
        "gateway": gateway_entry["address"],
        "port": int(gateway_entry["address"].rpartition(":")[2]),
        "supervisor_pid": gateway_entry["pid"],
        "admin_socket": Path(gateway_entry["admin_socket"]),
    }
    mesh_process.down(env)


@pytest.fixture
def fresh_buckets():
    """Rate limit buckets refill each second: start a test with full ones."""
    time.sleep(1.1)


def health_check(
    address: str, *, authority: str | None = None, api_key: str | None = None, **request
) -> grpc.StatusCode:
    options = [("grpc.default_authority", authority)] if authority else []
    metadata = [("x-api-key", api_key)] if api_key else None
    with grpc.insecure_channel(address, options=options) as channel:
        try:
            health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(**request), metadata=metadata, timeout=5
            )
        except grpc.RpcError as error:
            return error.code()
    return grpc.StatusCode.OK


def envoy_pid(supervisor_pid: int) -> int:
    children = Path(f"/proc/{supervisor_pid}/task/{supervisor_pid}/children").read_text().split()
    [pid] = [int(child) for child in children if "envoy" in Path(f"/proc/{child}/cmdline").read_text()]
    return pid


def listening_tcp_ports(pid: int) -> set[int]:
    """The TCP ports process `pid` listens on, from its socket inodes and /proc/net/tcp{,6}."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rpartition(":")[2], 16))
    return ports


def test_envoy_admin_is_a_0600_unix_socket_and_no_tcp_port(mesh):
    path = mesh["admin_socket"]
    assert stat.S_ISSOCK(path.stat().st_mode)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert admin.request(path, "GET", "/ready") == (200, "LIVE\n")
    # What compose's health check and a person debugging run:
    cli = subprocess.run(
        [sys.executable, "-m", "gateway.admin", str(path), "/ready"], capture_output=True, text=True, timeout=30
    )
    assert (cli.returncode, cli.stdout) == (0, "LIVE\n"), cli.stderr
    assert listening_tcp_ports(envoy_pid(mesh["supervisor_pid"])) == {mesh["port"]}


QUIT_AS_ANOTHER_USER = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect(sys.argv[1])
except OSError as error:
    print(type(error).__name__)
    sys.exit(0)
s.sendall(b"POST /quitquitquit HTTP/1.1\\r\\nHost: envoy\\r\\nContent-Length: 0\\r\\n\\r\\n")
print("CONNECTED", s.recv(100))
"""


# The other user's interpreter: the system's (ours may live where that user may not read).
SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin")


@pytest.mark.skipif(os.geteuid() != 0 or not SYSTEM_PYTHON, reason="runs a system python as another user (root)")
def test_another_local_user_cannot_quit_the_gateway(mesh):
    attempt = subprocess.run(
        [str(SYSTEM_PYTHON), "-c", QUIT_AS_ANOTHER_USER, str(mesh["admin_socket"])],
        user=65534,
        group=65534,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert attempt.stdout.strip() == "PermissionError", attempt.stdout + attempt.stderr
    time.sleep(0.5)
    assert health_check(mesh["gateway"]) == grpc.StatusCode.OK


def test_a_foreign_host_is_refused(mesh, fresh_buckets):
    assert health_check(mesh["gateway"], authority="rebound.example:80") == grpc.StatusCode.PERMISSION_DENIED
    page = requests.get(f"http://{mesh['gateway']}/", headers={"Host": "rebound.example"}, timeout=10)
    assert page.status_code == 403
    for own in (f"localhost:{mesh['port']}", f"127.0.0.1:{mesh['port']}", "localhost"):
        assert health_check(mesh["gateway"], authority=own) == grpc.StatusCode.OK, own


def preflight(mesh, origin: str) -> requests.Response:
    return requests.options(
        f"http://{mesh['gateway']}/constellation.core.v1.CoreService/ListDatasets",
        headers={
            "origin": origin,
            "access-control-request-method": "POST",
            "access-control-request-headers": "content-type,x-grpc-web",
        },
        timeout=10,
    )


def test_cors_answers_only_the_gateways_own_origins(mesh, fresh_buckets):
    for own in (f"http://localhost:{mesh['port']}", f"http://127.0.0.1:{mesh['port']}"):
        assert preflight(mesh, own).headers.get("access-control-allow-origin") == own
    for foreign in ("http://evil.example", "http://localhost:5173", f"http://127.0.0.1.evil.example:{mesh['port']}"):
        assert "access-control-allow-origin" not in preflight(mesh, foreign).headers, foreign
    listed = requests.post(
        f"http://{mesh['gateway']}/constellation.core.v1.CoreService/ListDatasets",
        data=b"\x00\x00\x00\x00\x00",
        headers={"content-type": "application/grpc-web+proto", "x-grpc-web": "1", "origin": "http://evil.example"},
        timeout=10,
    )
    assert listed.status_code == 200 and "access-control-allow-origin" not in listed.headers


def test_configured_origins_and_hosts_are_rendered():
    settings = GatewaySettings(cors_origins_raw="http://localhost:5173/", hosts_raw="Mesh.Example.org")
    config = yaml.safe_load(gateway.render_config(8080, Path("/run/a.sock"), UNUSED_ADDRESSES, settings))
    [virtual_host, _] = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
        "route_config"
    ]["virtual_hosts"]
    assert "mesh.example.org" in virtual_host["domains"] and "localhost:8080" in virtual_host["domains"]
    origins = virtual_host["typed_per_filter_config"]["envoy.filters.http.cors"]["allow_origin_string_match"]
    assert {"exact": "http://localhost:5173"} in origins and {"exact": "http://127.0.0.1:8080"} in origins


def grpc_web_health(session: requests.Session, mesh, service: str = "") -> tuple[int, str]:
    """A gRPC-web (HTTP/1.1) health check: (HTTP status, grpc-status), the latter from headers or trailers."""
    message = health_pb2.HealthCheckRequest(service=service).SerializeToString()
    response = session.post(
        f"http://{mesh['gateway']}/grpc.health.v1.Health/Check",
        data=b"\x00" + struct.pack(">I", len(message)) + message,
        headers={"content-type": "application/grpc-web+proto", "x-grpc-web": "1"},
        timeout=10,
    )
    status = response.headers.get("grpc-status") or response.content.partition(b"grpc-status:")[2][:2].strip().decode()
    return response.status_code, status


def test_a_request_over_the_size_limit_is_refused(mesh, fresh_buckets):
    limit = MAX_REQUEST_MB * 1024 * 1024
    with grpc.insecure_channel(mesh["gateway"]) as channel:
        core = core_pb2_grpc.CoreServiceStub(channel)
        created = core.CreateDataset(
            core_pb2.CreateDatasetRequest(
                dataset=core_pb2.Dataset(name="small", uri="s3://scenes/a.tif", bands=["red"])
            ),
            timeout=10,
        )
        assert created.id
    # Just under the limit reaches core, whose own bound on a string refuses it (the gateway would have answered
    # RESOURCE_EXHAUSTED); over it never leaves the gateway.
    assert health_check(mesh["gateway"], service="x" * (limit - 1024)) == grpc.StatusCode.INVALID_ARGUMENT
    assert health_check(mesh["gateway"], service="x" * (limit + 1024)) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert health_check(mesh["gateway"], service="x" * (60 << 20)) == grpc.StatusCode.RESOURCE_EXHAUSTED  # issue 12
    upload = requests.post(f"http://{mesh['gateway']}/files/x", data=b"x" * (limit + 1024), timeout=10)
    assert upload.status_code == 413
    with requests.Session() as session:
        assert grpc_web_health(session, mesh, "x" * (limit + 1024)) == (200, "8")  # RESOURCE_EXHAUSTED
        assert grpc_web_health(session, mesh, "x" * 1024) == (200, "5")  # NOT_FOUND: core answered


def burst(call, count: int) -> tuple[list, float]:
    """`count` calls back to back: their results, and how many seconds they took."""
    started = time.monotonic()
    results = [call() for _ in range(count)]
    return results, time.monotonic() - started


def most_accepted(per_second: int, elapsed_s: float) -> int:
    """A full bucket, plus one refill for each second tick a burst may have met."""
    return per_second * (2 + int(elapsed_s))


def health_calls(address: str, api_key: str | None = None):
    """Health checks on one channel (one connection), so a burst is quick."""
    channel = grpc.insecure_channel(address)
    health = health_pb2_grpc.HealthStub(channel)
    metadata = [("x-api-key", api_key)] if api_key else None

    def call() -> grpc.StatusCode:
        try:
            health.Check(health_pb2.HealthCheckRequest(), metadata=metadata, timeout=5)
        except grpc.RpcError as error:
            return error.code()
        return grpc.StatusCode.OK

    return channel, call


def test_a_burst_over_the_address_rate_limit_is_refused(mesh, fresh_buckets):
    channel, check = health_calls(mesh["gateway"])
    with channel:
        codes, elapsed_s = burst(check, 4 * PER_ADDRESS_PER_S)
        assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert codes.count(grpc.StatusCode.OK) <= most_accepted(PER_ADDRESS_PER_S, elapsed_s)
        time.sleep(1.1)
        below, _ = burst(check, PER_ADDRESS_PER_S // 2)
        assert below == [grpc.StatusCode.OK] * (PER_ADDRESS_PER_S // 2)
    with requests.Session() as session:
        pages, _ = burst(
            lambda: session.get(f"http://{mesh['gateway']}/", timeout=10).status_code, 4 * PER_ADDRESS_PER_S
        )
        time.sleep(1.1)
        web_calls, _ = burst(lambda: grpc_web_health(session, mesh), 4 * PER_ADDRESS_PER_S)
    assert 429 in pages
    assert set(web_calls) == {(200, "0"), (200, "8")}  # OK, RESOURCE_EXHAUSTED (never UNAVAILABLE: no retry storm)


def test_a_burst_over_one_keys_rate_limit_spares_other_keys(mesh, fresh_buckets):
    channel, check_one = health_calls(mesh["gateway"], api_key="key-one")
    with channel:
        codes, elapsed_s = burst(check_one, 3 * PER_KEY_PER_S)  # with key-two below, under the address limit
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes
    assert codes.count(grpc.StatusCode.OK) <= most_accepted(PER_KEY_PER_S, elapsed_s)
    channel, check_two = health_calls(mesh["gateway"], api_key="key-two")
    with channel:
        other, _ = burst(check_two, PER_KEY_PER_S // 2)
    assert other == [grpc.StatusCode.OK] * (PER_KEY_PER_S // 2)


def test_an_idle_request_is_closed_after_the_idle_timeout(mesh, fresh_buckets):
    with socket.create_connection(("127.0.0.1", mesh["port"]), timeout=STREAM_IDLE_TIMEOUT_S + 10) as connection:
        # Headers promise a body that never comes.
        connection.sendall(
            f"POST /files/x HTTP/1.1\r\nHost: 127.0.0.1:{mesh['port']}\r\nContent-Length: 10\r\n\r\n".encode()
        )
        started = time.monotonic()
        answer = connection.recv(200)
    assert answer.startswith(b"HTTP/1.1 408")
    assert STREAM_IDLE_TIMEOUT_S - 0.5 <= time.monotonic() - started < STREAM_IDLE_TIMEOUT_S + 5


def test_watch_routes_keep_their_own_idle_timeout():
    for watch_idle_s, expected in ((0.0, "0s"), (3600.0, "3600s")):
        settings = GatewaySettings(watch_idle_timeout_s=watch_idle_s, stream_idle_timeout_s=60)
        config = yaml.safe_load(gateway.render_config(8080, Path("/run/a.sock"), UNUSED_ADDRESSES, settings))
        manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        assert manager["stream_idle_timeout"] == "60s"
        routes = manager["route_config"]["virtual_hosts"][0]["routes"]
        watches = [r for r in routes if r["match"].get("path", "").endswith(("/WatchRun", "/WatchDeployment"))]
        assert len(watches) == 3
        assert all(r["route"]["idle_timeout"] == expected and r["route"]["timeout"] == "0s" for r in watches)


def answered(connection: socket.socket) -> bool:
    try:
        return connection.recv(12).startswith(b"HTTP/1.1")
    except OSError:
        return False


def test_connections_over_the_limit_are_closed(mesh, fresh_buckets):
    connections = [
        socket.create_connection(("127.0.0.1", mesh["port"]), timeout=5) for _ in range(MAX_CONNECTIONS + 10)
    ]
    try:
        time.sleep(0.5)
        request = f"GET /no-such-page HTTP/1.1\r\nHost: 127.0.0.1:{mesh['port']}\r\n\r\n".encode()
        for connection in connections:
            try:
                connection.sendall(request)
            except OSError:
                pass  # already closed by the gateway
        answers = [answered(connection) for connection in connections]
    finally:
        for connection in connections:
            connection.close()
    assert MAX_CONNECTIONS - 2 <= answers.count(True) <= MAX_CONNECTIONS, answers
    time.sleep(0.5)
    assert health_check(mesh["gateway"]) == grpc.StatusCode.OK
