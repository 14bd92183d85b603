"""Hosting on a real one-node Docker Swarm: deploy, infer, scale, roll out, roll back on its own, delete."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from clients.inference import InferenceClient
from constellation.hosting.v1 import hosting_pb2
from hosting_svc import images
from hosting_svc.runtimes.docker import LABEL_OWNER
from tests.hosting_support import NDWI, STATE, HostingUnderTest, require_docker, state_path

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

HEALTHY, FAILED, READY = (STATE.Value(f"DEPLOYMENT_STATE_{s}") for s in ("HEALTHY", "FAILED", "READY"))

# Passes its smoke test (which has a CPU time limit) but never loads as a replica: Swarm's health checks fail.
NEVER_LOADS_AS_A_REPLICA = """
import resource


def _load_in_smoke_tests_only(self):
    if resource.getrlimit(resource.RLIMIT_CPU)[0] == resource.RLIM_INFINITY:
        raise RuntimeError("this version loads only in its smoke test")


NdwiWater.load = _load_in_smoke_tests_only
"""
SEEN: dict[str, int] = {}  # model id -> the last event's sequence a test has waited for


@pytest.fixture(scope="module")
def engine():
    """The engine as a one-node swarm; left exactly as found (it leaves the swarm only if it made it)."""
    client = require_docker()
    state = client.info()["Swarm"]["LocalNodeState"]
    if state == "active" and not client.info()["Swarm"].get("ControlAvailable"):
        pytest.fail("the engine is a Swarm worker, not a manager; these tests need a manager")
    made = state == "inactive"
    if made:
        subprocess.run(["docker", "swarm", "init", "--advertise-addr", "127.0.0.1"], check=True, capture_output=True)
    yield client
    if made:
        subprocess.run(["docker", "swarm", "leave", "--force"], check=True, capture_output=True)


@pytest.fixture(scope="module")
def hosting(engine, tmp_path_factory):
    under_test = HostingUnderTest(
        tmp_path_factory.mktemp("hosting"),
        CONSTELLATION_HOSTING_SWARM="on",
        CONSTELLATION_HOSTING_READY_TIMEOUT_S="60",
        CONSTELLATION_HOSTING_SWARM_ROLLOUT_TIMEOUT_S="120",
    )
    yield under_test
    for model in under_test.hosting.list():
        under_test.hosting.delete(model.id)
    under_test.close()


def version_of_ndwi(tmp_path: Path, version: str, extra_code: str = "") -> Path:
    folder = tmp_path / f"ndwi-{version}"
    shutil.copytree(NDWI, folder)
    manifest = yaml.safe_load((folder / "constellation.yaml").read_text())
    (folder / "constellation.yaml").write_text(yaml.safe_dump({**manifest, "version": version}))
    with open(folder / "model.py", "a") as model_code:
        model_code.write(extra_code)
    return folder


def packaged(hosting: HostingUnderTest, folder: Path = NDWI, version: str = "1.0.0") -> str:
    status = hosting.package(folder, version=version)
    events = hosting.wait_for(status.model_id, READY, FAILED)
    assert events[-1].state == READY, events[-1].message
    SEEN[status.model_id] = events[-1].sequence
    return status.model_id


def deploy(hosting: HostingUnderTest, model_id: str, replicas: int, environment: str = "swarm") -> list:
    hosting.stub.DeployModel(
        hosting_pb2.DeployModelRequest(
            model_id=model_id, environment=environment, replicas=replicas, runtime=hosting_pb2.RUNTIME_SWARM
        )
    )
    events = hosting.wait_for(model_id, HEALTHY, FAILED, after=SEEN[model_id], timeout_s=300)
    SEEN[model_id] = events[-1].sequence
    return events


def services(engine, hosting: HostingUnderTest) -> list:
    return engine.services.list(filters={"label": f"{LABEL_OWNER}={hosting.hosting.settings.home}"})


def infer_everywhere(status: hosting_pb2.ModelStatus) -> None:
    """Every endpoint answers, and the replicas together answer like the model's formula, through the client the
    orchestrator's model step uses (round-robin over the endpoints)."""
    batches = np.random.default_rng(7).random((6, 2, 2, 256, 256), dtype=np.float32)
    addresses = [e.address for e in status.endpoints]
    for address in addresses:
        with InferenceClient(address, "ndwi-water") as client:
            assert client.ready(timeout_s=5), address
    with InferenceClient(addresses, "ndwi-water", output_name="water_probability") as client:
        client.describe()
        answers = {
            key: np.frombuffer(raw, np.float32).reshape(shape)
            for key, raw, _, shape in client.run(enumerate(batches), 4)
        }
    for key, batch in enumerate(batches):
        green, nir = batch[:, 0:1], batch[:, 1:2]
        expected = 1 / (1 + np.exp(-10 * (green - nir) / (green + nir)))
        np.testing.assert_allclose(answers[key], expected, atol=1e-5)


def listening_on_loopback_only(port: int) -> bool:
    out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    local = [line.split()[3] for line in out.splitlines()]
    return bool(local) and all(a in (f"127.0.0.1:{port}", f"[::ffff:127.0.0.1]:{port}") for a in local)


def test_deploy_scale_roll_out_roll_back_and_delete(hosting, engine, tmp_path):
    first = packaged(hosting)
    deployed = deploy(hosting, first, replicas=2)
    assert state_path(deployed) == ["DEPLOYING", "HEALTHY"], deployed[-1].message
    status = hosting.stub.GetModelStatus(hosting_pb2.GetModelStatusRequest(model_id=first))
    assert status.runtime == hosting_pb2.RUNTIME_SWARM and len(status.endpoints) == 2
    infer_everywhere(status)
    for endpoint in status.endpoints:
        assert listening_on_loopback_only(int(endpoint.address.rsplit(":", 1)[1])), endpoint.address

    (service,) = services(engine, hosting)
    spec = service.attrs["Spec"]
    container = spec["TaskTemplate"]["ContainerSpec"]
    assert container["User"] == "10001" and container["ReadOnly"] and container["CapabilityDrop"] == ["ALL"]
    assert "setpriv --no-new-privs" in container["Command"][-1]
    assert container["Healthcheck"]["Test"][-1].endswith("/opt/runtime/healthcheck.py")
    limits = spec["TaskTemplate"]["Resources"]["Limits"]
    # resources: {cpu: 1, memory: 512m} in ndwi-water's constellation.yaml
    assert limits["Pids"] == images.PIDS_LIMIT and limits["MemoryBytes"] == 512 << 20 and limits["NanoCPUs"] == 10**9
    assert spec["UpdateConfig"]["FailureAction"] == "rollback" and spec["Mode"]["Replicated"]["Replicas"] == 2
    for task in service.tasks(filters={"desired-state": "running"}):
        inside = engine.containers.get(task["Status"]["ContainerStatus"]["ContainerID"]).attrs
        assert inside["HostConfig"]["NetworkMode"] == "host" and inside["HostConfig"]["ReadonlyRootfs"]

    # Scale: the same version with three replicas is the same service, scaled in place.
    scaled = deploy(hosting, first, replicas=3)
    assert scaled[-1].state == HEALTHY, scaled[-1].message
    status = hosting.stub.GetModelStatus(hosting_pb2.GetModelStatusRequest(model_id=first))
    assert len(status.endpoints) == 3
    infer_everywhere(status)
    assert [s.id for s in services(engine, hosting)] == [service.id]

    # Roll out 1.1.0: Swarm replaces the tasks one by one; 1.0.0 is retired.
    second = packaged(hosting, version_of_ndwi(tmp_path, "1.1.0"), "1.1.0")
    rolled = deploy(hosting, second, replicas=3)
    assert rolled[-1].state == HEALTHY, rolled[-1].message
    service.reload()
    assert service.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"].startswith("constellation/ndwi-water:1.1.0")
    retired = hosting.wait_for(first, READY, after=SEEN[first])
    assert "superseded by 1.1.0" in retired[-1].message
    assert not hosting.stub.GetModelStatus(hosting_pb2.GetModelStatusRequest(model_id=first)).endpoints
    serving = hosting.stub.GetModelStatus(hosting_pb2.GetModelStatusRequest(model_id=second))
    infer_everywhere(serving)

    # 1.2.0's replicas never load: Swarm rolls the service back to 1.1.0 by itself, which keeps serving.
    broken = packaged(hosting, version_of_ndwi(tmp_path, "1.2.0", NEVER_LOADS_AS_A_REPLICA), "1.2.0")
    failed = deploy(hosting, broken, replicas=3)
    assert failed[-1].state == FAILED and "rolled the service back" in failed[-1].message, failed[-1].message
    assert "traffic stays on ndwi-water:1.1.0" in failed[-1].message
    service.reload()
    assert service.attrs["Spec"]["Labels"][images.LABEL_VERSION] == "1.1.0"
    assert service.attrs["UpdateStatus"]["State"] == "rollback_completed", (
        service.attrs["UpdateStatus"],
        [(t["Slot"], t["DesiredState"], t["Status"], t["Spec"]["ContainerSpec"]["Image"]) for t in service.tasks()],
    )
    # The monitor saw 1.1.0's replica stop while 1.2.0 was tried; it is healthy again once Swarm put it back.
    serving = hosting.stub.GetModelStatus(hosting_pb2.GetModelStatusRequest(model_id=second))
    if serving.state != HEALTHY:
        hosting.wait_for(second, HEALTHY, after=SEEN[second], timeout_s=60)
    infer_everywhere(serving)

    # With no version to go back to, a rollout that never converges is FAILED and its service removed.
    alone = deploy(hosting, broken, replicas=1, environment="alone")
    assert alone[-1].state == FAILED and "0 of 1 replica(s) running" in alone[-1].message, alone[-1].message
    assert [s.id for s in services(engine, hosting)] == [service.id]

    # Deleting the serving version removes the service (it does not go back to a retired version).
    for model_id in (broken, first, second):
        hosting.stub.DeleteModel(hosting_pb2.DeleteModelRequest(model_id=model_id))
    assert services(engine, hosting) == []
    left = engine.containers.list(all=True, filters={"label": f"{LABEL_OWNER}={hosting.hosting.settings.home}"})
    assert left == [] or all(c.status in ("removing", "exited", "dead") for c in left)
