"""Model code is untrusted (issue 12): local processes run confined, sources are bounded and checked before
they are copied, git only from allowed hosts within a timeout, registry credentials only for their registry,
and re-packaging a deployed model leaves no replica behind."""

from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import socket
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from constellation.hosting.v1 import hosting_pb2
from hosting_svc.registry import Registry
from hosting_svc.runtimes import sandbox
from hosting_svc.settings import HostingSettings
from tests.conftest import rpc_error
from tests.hosting_support import NDWI, STATE, HostingUnderTest, require_docker

pytestmark = pytest.mark.timeout(600)

READY, FAILED = STATE.Value("DEPLOYMENT_STATE_READY"), STATE.Value("DEPLOYMENT_STATE_FAILED")
HEALTHY = STATE.Value("DEPLOYMENT_STATE_HEALTHY")

PROBING_MODEL = """
import json, os, resource, socket
import numpy as np

def readable(path):
    try:
        with open(path, "rb") as f:
            f.read(1)
        return True
    except OSError:
        return False

def writes(path, size=1):
    try:
        with open(path, "wb") as f:
            f.write(b"x" * size)
        return True
    except OSError:
        return False

def connects(host, port):
    try:
        socket.create_connection((host, port), timeout=2).close()
        return True
    except OSError:
        return False

def resolves(name):
    try:
        socket.getaddrinfo(name, 443)
        return True
    except OSError:
        return False

def home_entries():
    try:
        return sorted(set(os.listdir("/root")) - set(IGNORED))
    except OSError:
        return []

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return line.split()[1]

def first_line(*paths):
    for path in paths:
        try:
            return open(path).read().strip()
        except OSError:
            pass
    return ""

class NdwiWater:
    def load(self):
        facts = {
            "uid": os.getuid(),
            "can_read_etc_shadow": readable("/etc/shadow"),
            "can_read_host_secret": readable(SECRET),
            "root_home_entries": home_entries(),
            "can_reach_host_loopback": connects("127.0.0.1", PORT),
            "can_reach_internet": connects("1.1.1.1", 53),
            "can_resolve_names": resolves("example.org"),
            "interfaces": sorted(name for _, name in socket.if_nameindex()),
            "can_write_tmp": writes("/tmp/probe"),
            "can_write_65_mib_in_tmp": writes("/tmp/big", 65 << 20),
            "can_write_model_folder": writes("/opt/model/x"),
            "can_write_root": writes("/probe"),
            "capabilities": status("CapEff"),
            "no_new_privs": status("NoNewPrivs"),
            "limits": {
                name: resource.getrlimit(getattr(resource, "RLIMIT_" + name.upper()))[1]
                for name in ("data", "nproc", "nofile", "fsize", "cpu", "core")
            },
            "memory_limit": first_line("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory.max"),
            "pids_limit": first_line("/sys/fs/cgroup/pids/pids.max", "/sys/fs/cgroup/pids.max"),
        }
        print("CONFINEMENT " + json.dumps(facts), flush=True)
        if FAIL:  # the smoke test then fails, with this line in its message's log tail
            raise RuntimeError("CONFINEMENT " + json.dumps(facts))

    def predict(self, batch):
        return np.zeros((batch.shape[0], 1, batch.shape[2], batch.shape[3]), np.float32)
"""


def variant(folder: Path, name: str, code: str = "", version: str = "1.0.0") -> Path:
    """A copy of ndwi-water under another name (and version), its model.py replaced when `code` is given."""
    shutil.copytree(NDWI, folder)
    manifest = yaml.safe_load((folder / "constellation.yaml").read_text())
    manifest["name"], manifest["version"] = name, version
    (folder / "constellation.yaml").write_text(yaml.safe_dump(manifest))
    if code:
        (folder / "model.py").write_text(code)
    return folder


def packaged(hosting: HostingUnderTest, status: hosting_pb2.ModelStatus) -> hosting_pb2.DeploymentEvent:
    return hosting.wait_for(status.model_id, READY, FAILED)[-1]


@pytest.fixture
def listener():
    """A host loopback port that is not the model's: a confined model must not reach it."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    yield server
    server.close()


def probe(tmp_path: Path, listener: socket.socket, fail: bool) -> Path:
    """A model whose load() reports what it can reach (and fails with the report when `fail`)."""
    secret = tmp_path / "host-secret.txt"
    secret.write_text("not for models")
    ignored = [Path(sys.base_prefix).parts[2]] if Path(sys.base_prefix).is_relative_to("/root") else []
    code = (
        f"SECRET = {str(secret)!r}\nPORT = {listener.getsockname()[1]}\nIGNORED = {ignored!r}\nFAIL = {fail}\n"
        + PROBING_MODEL
    )
    return variant(tmp_path / "probe", "probe", code)


def reported(text: str) -> list[dict]:
    """Each CONFINEMENT report in a log, in order."""
    return [json.loads(part.splitlines()[0]) for part in text.split("CONFINEMENT ")[1:] if part.startswith("{")]


def assert_confined(facts: dict) -> None:
    """What model code may not do on any runtime."""
    assert facts["uid"] == sandbox.SANDBOX_UID, facts
    assert not facts["can_read_etc_shadow"] and not facts["can_read_host_secret"], facts
    assert facts["root_home_entries"] == [], facts
    assert not facts["can_reach_host_loopback"] and facts["interfaces"] == ["lo"], facts
    assert not facts["can_reach_internet"] and not facts["can_resolve_names"], facts
    assert facts["can_write_tmp"] and not facts["can_write_65_mib_in_tmp"], facts
    assert not facts["can_write_model_folder"] and not facts["can_write_root"], facts
    assert int(facts["capabilities"], 16) == 0 and facts["no_new_privs"] == "1", facts
    limits = facts["limits"]
    assert limits["nofile"] == 1024 and limits["fsize"] == 64 << 20 and limits["core"] == 0, facts
    assert limits["cpu"] == 300 + 5, facts  # the smoke test's CPU time (hard limit: SIGXCPU at 300 s, SIGKILL at 305)


def test_local_model_code_runs_unprivileged_without_host_files_or_network(tmp_path, listener):
    folder = probe(tmp_path, listener, fail=False)
    hosting = HostingUnderTest(tmp_path / "home", CONSTELLATION_HOSTING_DOCKER="off")
    try:
        status = hosting.package(folder, name="probe")
        assert packaged(hosting, status).state == READY
        log = tmp_path / "home" / "hosting" / "local" / status.model_id / "replica-0.log"
        [facts] = reported(log.read_text())
        assert_confined(facts)
        assert facts["limits"]["data"] == (512 << 20) + sandbox.RUNTIME_RESERVE_BYTES, facts  # resources.memory
        assert facts["limits"]["nproc"] == 1024, facts
        assert not list((tmp_path / "home").rglob("*.sock")), "no socket (nor any file) of the model's on the host"

        hosting.stub.DeployModel(hosting_pb2.DeployModelRequest(model_id=status.model_id))
        deployed = hosting.wait_for(status.model_id, HEALTHY, FAILED, after=0)
        assert deployed[-1].state == HEALTHY, deployed[-1].message  # served through the relay
        _, replica = reported(log.read_text())
        assert replica["limits"]["cpu"] == resource.RLIM_INFINITY, "a replica has no CPU time limit"
        assert replica["limits"]["data"] == facts["limits"]["data"], replica
        hosting.stub.DeleteModel(hosting_pb2.DeleteModelRequest(model_id=status.model_id))
    finally:
        hosting.close()


def test_without_bubblewrap_local_model_code_runs_only_when_explicitly_allowed(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(sandbox, "available", lambda: False)
    refused = HostingUnderTest(tmp_path / "refused", CONSTELLATION_HOSTING_DOCKER="off")
    try:
        event = packaged(refused, refused.package())
        assert event.state == FAILED and "bubblewrap" in event.message, event.message
    finally:
        refused.close()
    caplog.set_level(logging.WARNING)
    allowed = HostingUnderTest(
        tmp_path / "allowed", CONSTELLATION_HOSTING_DOCKER="off", CONSTELLATION_HOSTING_ALLOW_UNCONFINED="true"
    )
    try:
        assert packaged(allowed, allowed.package()).state == READY
        assert any("unconfined" in r.getMessage() for r in caplog.records)
    finally:
        allowed.close()


def test_model_sources_outside_the_roots_or_holding_devices_links_out_or_too_much_are_refused(tmp_path):
    hosting = HostingUnderTest(tmp_path / "home", CONSTELLATION_HOSTING_DOCKER="off")
    try:
        for outside in ("/", "/etc", "/dev", "/nonexistent-folder"):
            error = rpc_error(hosting.package, Path(outside))
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED, (outside, error.details())
            assert "MODEL_ROOTS" in error.details()  # the same answer whether it exists or not

        with_device = variant(tmp_path / "with-device", "ndwi-water")
        (with_device / "zeros").symlink_to("/dev/zero")
        os.mkfifo(with_device / "pipe")
        started = time.monotonic()
        error = rpc_error(hosting.package, with_device)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and time.monotonic() - started < 5
        assert "zeros is a link to outside" in error.details() or "pipe is a device" in error.details()
        (with_device / "zeros").unlink()
        error = rpc_error(hosting.package, with_device)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "pipe is a device, FIFO" in error.details()

        linked = variant(tmp_path / "linked", "ndwi-water")
        (linked / "weights").symlink_to("/etc/passwd")
        error = rpc_error(hosting.package, linked)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "weights is a link to outside" in error.details()
        assert not (tmp_path / "home" / "hosting" / "sources").exists() or not any(
            (tmp_path / "home" / "hosting" / "sources").iterdir()
        ), "nothing is copied before the checks"
    finally:
        hosting.close()

    small = HostingUnderTest(
        tmp_path / "small",
        CONSTELLATION_HOSTING_DOCKER="off",
        CONSTELLATION_HOSTING_SOURCE_MAX_BYTES="1000000",
        CONSTELLATION_HOSTING_SOURCE_MAX_FILES="50",
    )
    try:
        big = variant(tmp_path / "big", "ndwi-water")
        (big / "weights.bin").write_bytes(b"\0" * 2_000_000)
        error = rpc_error(small.package, big)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "larger than 1000000 bytes" in error.details()
        many = variant(tmp_path / "many", "ndwi-water")
        for i in range(60):
            (many / f"f{i}.txt").write_text("x")
        error = rpc_error(small.package, many)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "more than 50 files" in error.details()
    finally:
        small.close()


def test_model_sources_by_default_only_from_the_mesh_home_and_the_examples(tmp_path):
    settings = HostingSettings.from_env({}, home=tmp_path / "home" / "hosting")
    roots = settings.model_roots
    assert (tmp_path / "home" / "models").resolve() in roots and NDWI.parent.resolve() in roots
    assert all(Path("/etc") != r and Path("/etc") not in r.parents for r in roots)


def git_request(url: str) -> hosting_pb2.PackageModelRequest:
    return hosting_pb2.PackageModelRequest(
        model_name="ndwi-water", model_version="1.0.0", git=hosting_pb2.GitSource(repo_url=url)
    )


def test_git_sources_only_from_allowed_hosts_and_within_a_timeout(tmp_path):
    silent = socket.socket()  # a "git server" that accepts and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.append(silent.accept()[0]), daemon=True).start()
    address = f"127.0.0.1:{silent.getsockname()[1]}"
    hosting = HostingUnderTest(
        tmp_path / "home",
        CONSTELLATION_HOSTING_DOCKER="off",
        CONSTELLATION_HOSTING_GIT_HOSTS=address,
        CONSTELLATION_HOSTING_GIT_TIMEOUT_S="3",
    )
    try:
        for url in ("https://example.org/models/ndwi.git", "ssh://git@example.org/x.git", "file:///etc"):
            error = rpc_error(hosting.stub.PackageModel, git_request(url))
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED, (url, error.details())
        started = time.monotonic()
        error = rpc_error(hosting.stub.PackageModel, git_request(f"http://{address}/ndwi.git"), timeout=60)
        assert error.code() == grpc.StatusCode.UNAVAILABLE and "within 3 s" in error.details(), error.details()
        assert time.monotonic() - started < 15
    finally:
        hosting.close()
        silent.close()
        for connection in held:
            connection.close()


def test_sources_that_are_neither_a_path_nor_a_url_are_invalid(tmp_path):
    """Found by tests/test_fuzz_rpcs.py: a NUL in a path and an unclosed IPv6 bracket in a URL raised ValueError
    in os.path and urllib, which was INTERNAL."""
    hosting = HostingUnderTest(tmp_path / "home", CONSTELLATION_HOSTING_DOCKER="off")
    with_branch = git_request(f"file://{NDWI}")
    with_branch.git.branch = "main\x00"
    try:
        for field, details, request in (
            ("local_path", "NUL", hosting_pb2.PackageModelRequest(
                model_name="ndwi-water", model_version="1.0.0", local_path=f"{NDWI}\x00/x")),
            ("git.repo_url", "NUL", git_request(f"file://{NDWI}\x00")),
            ("git.branch", "NUL", with_branch),
            ("git.repo_url", "not a valid URL", git_request("https://[::1/ndwi.git")),
            ("git.repo_url", "not a valid URL", git_request("file://[::1/ndwi")),
        ):  # fmt: skip
            error = rpc_error(hosting.stub.PackageModel, request)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (field, error.details())
            assert error.details().startswith(field) and details in error.details(), error.details()
    finally:
        hosting.close()


def test_registry_credentials_go_only_to_their_own_registry(tmp_path):
    auth_file = tmp_path / "auth.json"
    auth_file.write_text(json.dumps({"other.example:5000": {"username": "o", "password": "other-pass"}}))
    settings = HostingSettings.from_env(
        {
            "CONSTELLATION_REGISTRY_HOST": "registry.example:5000",
            "CONSTELLATION_REGISTRY_USERNAME": "pusher",
            "CONSTELLATION_REGISTRY_PASSWORD": "s3cret",
            "CONSTELLATION_REGISTRY_AUTH_FILE": str(auth_file),
        },
        home=tmp_path / "hosting",
    )
    registry = Registry(None, settings)
    assert registry.credentials("registry.example:5000") == {"username": "pusher", "password": "s3cret"}
    assert registry.credentials("other.example:5000") == {"username": "o", "password": "other-pass"}
    assert registry.credentials("attacker.example") is None
    assert registry.credentials("registry.example") is None  # another port is another registry
    anywhere = HostingSettings.from_env(
        {"CONSTELLATION_REGISTRY_USERNAME": "pusher", "CONSTELLATION_REGISTRY_PASSWORD": "s3cret"},
        home=tmp_path / "hosting",
    )
    assert Registry(None, anywhere).credentials("attacker.example") is None


def test_repackaging_a_deployed_model_stops_its_replicas_and_down_finds_none_left(tmp_path):
    hosting = HostingUnderTest(tmp_path / "home", CONSTELLATION_HOSTING_DOCKER="off")
    try:
        status = hosting.package()
        first = hosting.wait_for(status.model_id, READY, FAILED)
        hosting.stub.DeployModel(hosting_pb2.DeployModelRequest(model_id=status.model_id))
        deployed = hosting.wait_for(status.model_id, HEALTHY, FAILED, after=first[-1].sequence)
        assert deployed[-1].state == HEALTHY, deployed[-1].message
        pid = int(deployed[-1].endpoints[0].replica_id.removeprefix("pid:"))

        again = hosting.package()
        assert again.model_id == status.model_id
        repackaged = hosting.wait_for(status.model_id, READY, FAILED, after=deployed[-1].sequence)
        assert repackaged[-1].state == READY, repackaged[-1].message
        alive = True
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            alive = False
        if alive:  # the orphan `constellation down` would not find: stop it before failing
            os.kill(pid, 9)
        assert not alive, "the replica serving the previous packaging still runs"
        reply = hosting.stub.StopDeployments(hosting_pb2.StopDeploymentsRequest())
        assert reply.other_replicas_stopped == 0 and not hosting.hosting.deployer.replicas
        assert not list((tmp_path / "home" / "hosting" / "local").glob("*/replica-*.pid"))
        assert any("stopped its 1 running replica" in e.message for e in repackaged)
    finally:
        hosting.close()


MEMORY_HOG = """
import numpy as np

class NdwiWater:
    def load(self):
        self.hoard = np.ones(3 << 30, np.uint8)  # 3 GiB, every page touched

    def predict(self, batch):
        return np.zeros((batch.shape[0], 1, batch.shape[2], batch.shape[3]), np.float32)
"""

FORK_BOMB = """
import os, time
import numpy as np

class NdwiWater:
    def load(self):
        while True:  # until fork fails; each child waits (a quiet bomb: the machine is shared)
            if os.fork() == 0:
                time.sleep(600)
                os._exit(0)

    def predict(self, batch):
        return np.zeros((batch.shape[0], 1, batch.shape[2], batch.shape[3]), np.float32)
"""

CPU_SPINNER = """
import numpy as np

class NdwiWater:
    def load(self):
        while True:
            pass

    def predict(self, batch):
        return np.zeros((batch.shape[0], 1, batch.shape[2], batch.shape[3]), np.float32)
"""


def hostile(folder: Path, code: str, memory: str = "") -> Path:
    folder = variant(folder, "hostile", code)
    if memory:
        manifest = yaml.safe_load((folder / "constellation.yaml").read_text())
        manifest["resources"]["memory"] = memory
        (folder / "constellation.yaml").write_text(yaml.safe_dump(manifest))
    return folder


def left_behind(home: Path) -> list[str]:
    """Processes started for models of this hosting (relays, sandboxes and whatever runs in them)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(home) in (proc / "cmdline").read_bytes().decode(errors="replace"):
                found.append(proc.name)
        except OSError:
            continue
    return found


def uid_tasks(uid: int) -> int:
    """Tasks (processes and threads) of a uid: what RLIMIT_NPROC counts."""
    count = 0
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and proc.stat().st_uid == uid:
                count += len(list((proc / "task").iterdir()))
        except OSError:
            continue
    return count


@pytest.mark.slow
@pytest.mark.parametrize(
    ("code", "memory", "env", "why"),
    [
        (MEMORY_HOG, "256m", {}, "ran out of memory (limit 256m; raise resources.memory)"),
        (FORK_BOMB, "", {"CONSTELLATION_HOSTING_SANDBOX_MAX_PROCESSES": "200"}, "hit the process limit (200"),
        (CPU_SPINNER, "", {"CONSTELLATION_HOSTING_SMOKE_CPU_S": "3"}, "killed by SIGXCPU (its CPU time limit)"),
    ],
    ids=["memory", "fork-bomb", "cpu"],
)
def test_local_model_past_its_limits_fails_packaging_and_leaves_the_host_unharmed(tmp_path, code, memory, env, why):
    home = tmp_path / "home"
    hosting = HostingUnderTest(
        home, CONSTELLATION_HOSTING_DOCKER="off", CONSTELLATION_HOSTING_READY_TIMEOUT_S="60", **env
    )
    try:
        event = packaged(hosting, hosting.package(hostile(tmp_path / "hostile", code, memory), name="hostile"))
        assert event.state == FAILED and "smoke test failed" in event.message and why in event.message, event.message
        deadline = time.monotonic() + 10
        while left_behind(home) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not left_behind(home), "the sandbox and everything in it end with the smoke test"
        assert uid_tasks(sandbox.SANDBOX_UID) < 200 or not env, "the bomb's children are gone"
        health = health_pb2_grpc.HealthStub(hosting.channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        hosting.close()


@pytest.fixture(scope="module")
def docker_engine():
    return require_docker()


def test_docker_smoke_test_runs_model_code_without_network_root_or_writable_files(tmp_path, listener, docker_engine):
    hosting = HostingUnderTest(tmp_path / "home")
    try:
        event = packaged(hosting, hosting.package(probe(tmp_path, listener, fail=True), name="probe"))
        assert event.state == FAILED and "CONFINEMENT" in event.message, event.message
        facts = reported(event.message)[0]  # printed, then raised
        assert_confined(facts)
        assert int(facts["memory_limit"]) == 512 << 20, facts  # resources.memory of the model
        assert facts["pids_limit"] == "256", facts
    finally:
        for model in hosting.hosting.list():
            hosting.hosting.delete(model.id)
        hosting.close()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("code", "memory", "why"),
    [
        (MEMORY_HOG, "256m", "killed for running out of memory (limit 256m; raise resources.memory)"),
        (FORK_BOMB, "", "hit the process limit (256 processes and threads)"),
    ],
    ids=["memory", "fork-bomb"],
)
def test_docker_model_past_its_limits_fails_packaging(tmp_path, docker_engine, code, memory, why):
    hosting = HostingUnderTest(tmp_path / "home", CONSTELLATION_HOSTING_READY_TIMEOUT_S="30")
    try:
        event = packaged(hosting, hosting.package(hostile(tmp_path / "hostile", code, memory), name="hostile"))
        assert event.state == FAILED and "smoke test failed" in event.message and why in event.message, event.message
        smoke = docker_engine.containers.list(all=True, filters={"label": "constellation.role=smoke"})
        assert not [c for c in smoke if c.labels.get("constellation.owner") == str(tmp_path / "home" / "hosting")]
    finally:
        for model in hosting.hosting.list():
            hosting.hosting.delete(model.id)
        hosting.close()
