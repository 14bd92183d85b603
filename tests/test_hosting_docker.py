"""Hosting on the real Docker engine: package, validate, deploy, infer, watch, heal, roll back, delete."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml

from constellation.hosting.v1 import hosting_pb2
from hosting_svc import images
from mesh.errors import field_violations
from tests.conftest import key_channel, rpc_error
from tests.hosting_support import MODEL_ROOTS, NDWI, ROOT, STATE, HostingUnderTest, require_docker, state_path

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def engine():
    return require_docker()


@pytest.fixture(scope="module")
def hosting(engine, tmp_path_factory):
    under_test = HostingUnderTest(tmp_path_factory.mktemp("hosting"))
    yield under_test
    for model in under_test.hosting.list():
        under_test.hosting.delete(model.id)
    under_test.close()


@pytest.fixture(scope="module")
def ndwi_ready(hosting):
    status = hosting.package()
    events = hosting.wait_for(
        status.model_id, STATE.Value("DEPLOYMENT_STATE_READY"), STATE.Value("DEPLOYMENT_STATE_FAILED")
    )
    assert events[-1].state == STATE.Value("DEPLOYMENT_STATE_READY"), events[-1].message
    return status.model_id, events


def labelled(engine, model_id: str) -> tuple[list, list]:
    return (
        engine.containers.list(all=True, filters={"label": f"{images.LABEL_MODEL}={model_id}"}),
        engine.images.list(filters={"label": f"{images.LABEL_MODEL}={model_id}"}),
    )


def triton(address: str) -> dict:
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "helpers" / "triton_check.py"), address, "ndwi-water"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_packaging_streams_every_state_and_records_the_image(hosting, ndwi_ready, engine):
    model_id, events = ndwi_ready
    assert state_path(events) == ["PACKAGING", "BUILDING", "VALIDATING", "READY"]
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert any("Step" in e.log_line for e in events), "build log lines are streamed"
    status = hosting.stub.GetModelStatus(hosting_pb2.GetModelStatusRequest(model_id=model_id))
    assert status.image == "constellation/ndwi-water:1.0.0" and status.image_digest.startswith("sha256:")
    assert "numpy==" + np.__version__ in status.installed_packages
    image = engine.images.get(status.image)
    assert image.labels[images.LABEL_MODEL] == model_id and image.labels[images.LABEL_MANIFEST].startswith("sha256:")
    assert image.attrs["Size"] < 300e6
    assert image.attrs["Config"]["User"] == "10001"


def test_deploy_two_replicas_answer_tritonclient_then_delete_leaves_nothing(hosting, ndwi_ready, engine, tmp_path):
    model_id, events = ndwi_ready
    hosting.stub.DeployModel(
        hosting_pb2.DeployModelRequest(
            model_id=model_id, environment="staging", replicas=2, runtime=hosting_pb2.RUNTIME_DOCKER
        )
    )
    deployed = hosting.wait_for(
        model_id,
        STATE.Value("DEPLOYMENT_STATE_HEALTHY"),
        STATE.Value("DEPLOYMENT_STATE_FAILED"),
        after=events[-1].sequence,
    )
    assert state_path(deployed) == ["DEPLOYING", "HEALTHY"], deployed[-1].message
    status = hosting.stub.GetModelStatus(hosting_pb2.GetModelStatusRequest(model_id=model_id))
    assert len(status.endpoints) == 2 and status.environment == "staging" and status.deployed_at.seconds > 0
    for endpoint in status.endpoints:
        seen = triton(endpoint.address)
        assert seen["ready"] and seen["agrees_with_numpy_ndwi"] and seen["max_abs_error"] < 1e-5
    containers, _ = labelled(engine, model_id)
    for container in containers:
        host = container.attrs["HostConfig"]
        assert host["NetworkMode"] == "host" and host["ReadonlyRootfs"] and host["CapDrop"] == ["ALL"]
        assert "no-new-privileges" in host["SecurityOpt"] and host["RestartPolicy"]["Name"] == "unless-stopped"
        assert container.attrs["Config"]["Healthcheck"]["Test"][-1] == "/opt/runtime/healthcheck.py"

    compose = hosting.stub.ExportCompose(hosting_pb2.ExportComposeRequest(model_ids=[model_id])).compose_yaml
    (tmp_path / "compose.yaml").write_text(compose)
    checked = subprocess.run(
        ["docker-compose", "-f", str(tmp_path / "compose.yaml"), "config"], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stderr
    service = yaml.safe_load(checked.stdout)["services"]["ndwi-water-1-0-0"]
    assert service["deploy"]["replicas"] == 2 and service["healthcheck"]["test"][-1] == "/opt/runtime/healthcheck.py"

    listed = hosting.stub.ListModels(hosting_pb2.ListModelsRequest())
    assert [m.model_id for m in listed.models] == [model_id] and listed.models[0].state == STATE.Value(
        "DEPLOYMENT_STATE_HEALTHY"
    )

    # Resume: replaying after a cursor gives exactly the later events.
    full = hosting.wait_for(model_id, STATE.Value("DEPLOYMENT_STATE_HEALTHY"))
    resumed = hosting.wait_for(model_id, STATE.Value("DEPLOYMENT_STATE_HEALTHY"), after=full[2].sequence)
    assert [e.sequence for e in resumed] == [e.sequence for e in full[3:]]


def test_a_killed_replica_is_restarted_and_the_stream_shows_it(hosting, ndwi_ready, engine):
    model_id, _ = ndwi_ready
    status = hosting.stub.GetModelStatus(hosting_pb2.GetModelStatusRequest(model_id=model_id))
    if status.state != STATE.Value("DEPLOYMENT_STATE_HEALTHY"):
        status = hosting.stub.DeployModel(hosting_pb2.DeployModelRequest(model_id=model_id))
        hosting.wait_for(model_id, STATE.Value("DEPLOYMENT_STATE_HEALTHY"))
    last = hosting.wait_for(model_id, STATE.Value("DEPLOYMENT_STATE_HEALTHY"))[-1].sequence
    containers, _ = labelled(engine, model_id)
    victim = next(c for c in containers if c.labels.get(images.LABEL_ROLE) == "replica")
    os.kill(victim.attrs["State"]["Pid"], signal.SIGKILL)  # the model server crashes
    events = hosting.wait_for(model_id, STATE.Value("DEPLOYMENT_STATE_HEALTHY"), after=last, timeout_s=60)
    assert state_path(events) == ["UNHEALTHY", "HEALTHY"]
    assert "not answering" in events[0].message
    victim.reload()
    assert victim.attrs["RestartCount"] >= 1


def test_a_replica_stopped_from_outside_is_started_again(hosting, ndwi_ready, engine):
    """`docker kill` stops a container for good (the restart policy skips containers stopped by hand): the
    monitor starts a new replica on the same port, says so on the stream, and the model serves again."""
    model_id, _ = ndwi_ready
    status = hosting.stub.GetModelStatus(hosting_pb2.GetModelStatusRequest(model_id=model_id))
    if status.state != STATE.Value("DEPLOYMENT_STATE_HEALTHY"):
        hosting.stub.DeployModel(hosting_pb2.DeployModelRequest(model_id=model_id))
    last = hosting.wait_for(model_id, STATE.Value("DEPLOYMENT_STATE_HEALTHY"))[-1].sequence
    before = hosting.stub.GetModelStatus(hosting_pb2.GetModelStatusRequest(model_id=model_id)).endpoints
    addresses = [e.address for e in before]  # earlier tests may have left more than one replica
    victim = next(c for c in labelled(engine, model_id)[0] if c.labels.get(images.LABEL_ROLE) == "replica")
    victim.kill()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        after = hosting.stub.GetModelStatus(hosting_pb2.GetModelStatusRequest(model_id=model_id))
        replicas = [c for c in labelled(engine, model_id)[0] if c.labels.get(images.LABEL_ROLE) == "replica"]
        restarted = replicas and all(c.id != victim.id for c in replicas)
        if (
            restarted
            and after.state == STATE.Value("DEPLOYMENT_STATE_HEALTHY")
            and all(e.healthy for e in after.endpoints)
        ):
            break
        time.sleep(1)
    else:
        raise AssertionError(f"the killed replica was not replaced by a serving one: {after}")
    assert [e.address for e in after.endpoints] == addresses
    stream = hosting.stub.WatchDeployment(
        hosting_pb2.WatchDeploymentRequest(model_id=model_id, after_sequence=last), timeout=3
    )
    lines = []
    with pytest.raises(grpc.RpcError):  # the watch stays open until its deadline
        lines.extend(e.log_line for e in stream)
    restarts = [line for line in lines if "exited" in line and "restarted it on " in line]
    assert len(restarts) == 1 and restarts[0].rsplit(" ", 1)[-1] in addresses, lines


def test_delete_removes_containers_and_image(hosting, engine, tmp_path):
    folder = tmp_path / "ndwi-delete"
    shutil.copytree(NDWI, folder)
    manifest = yaml.safe_load((folder / "constellation.yaml").read_text())
    (folder / "constellation.yaml").write_text(yaml.safe_dump({**manifest, "name": "ndwi-delete"}))
    status = hosting.package(folder, name="ndwi-delete")
    hosting.wait_for(status.model_id, STATE.Value("DEPLOYMENT_STATE_READY"))
    hosting.stub.DeployModel(hosting_pb2.DeployModelRequest(model_id=status.model_id))
    healthy = hosting.wait_for(status.model_id, STATE.Value("DEPLOYMENT_STATE_HEALTHY"))
    assert labelled(engine, status.model_id)[0]
    hosting.stub.DeleteModel(hosting_pb2.DeleteModelRequest(model_id=status.model_id))
    containers, found_images = labelled(engine, status.model_id)
    assert containers == [] and found_images == []
    assert not engine.images.list(name="constellation/ndwi-delete")
    error = rpc_error(hosting.stub.GetModelStatus, hosting_pb2.GetModelStatusRequest(model_id=status.model_id))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert healthy[-1].state == STATE.Value("DEPLOYMENT_STATE_HEALTHY")


def test_onnx_model_is_built_with_onnxruntime_and_answers_like_in_process(hosting, engine):
    import onnxruntime

    from clients.inference import InferenceClient

    folder = ROOT / "examples" / "models" / "water-mlp"
    status = hosting.package(folder, name="water-mlp")
    ready = hosting.wait_for(
        status.model_id, STATE.Value("DEPLOYMENT_STATE_READY"), STATE.Value("DEPLOYMENT_STATE_FAILED")
    )
    assert ready[-1].state == STATE.Value("DEPLOYMENT_STATE_READY"), ready[-1].message
    built = hosting.stub.GetModelStatus(hosting_pb2.GetModelStatusRequest(model_id=status.model_id))
    assert "onnxruntime==" + onnxruntime.__version__ in built.installed_packages
    assert engine.images.get(built.image).attrs["Size"] < 400e6
    hosting.stub.DeployModel(
        hosting_pb2.DeployModelRequest(model_id=status.model_id, runtime=hosting_pb2.RUNTIME_DOCKER)
    )
    healthy = hosting.wait_for(
        status.model_id,
        STATE.Value("DEPLOYMENT_STATE_HEALTHY"),
        STATE.Value("DEPLOYMENT_STATE_FAILED"),
        after=ready[-1].sequence,
    )
    assert healthy[-1].state == STATE.Value("DEPLOYMENT_STATE_HEALTHY"), healthy[-1].message
    address = (
        hosting.stub.GetModelStatus(hosting_pb2.GetModelStatusRequest(model_id=status.model_id)).endpoints[0].address
    )

    example = np.load(folder / "example_input.npy")
    tiles = np.concatenate([example, np.random.default_rng(8).integers(0, 256, example.shape, dtype=np.uint8)])
    with InferenceClient(address) as client:
        served = client.infer("water-mlp", tiles, timeout=60)["water_probability"]
    session = onnxruntime.InferenceSession(str(folder / "water_mlp.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(served, session.run(None, {"tiles": tiles})[0], rtol=0, atol=1e-6)
    assert 0.05 < (served[0] > 0.5).mean() < 0.95, "the example tile holds both water and land"
    hosting.stub.DeleteModel(hosting_pb2.DeleteModelRequest(model_id=status.model_id))
    assert labelled(engine, status.model_id) == ([], [])


NEVER_LOADS_AS_A_REPLICA = """
import resource


def _load_in_smoke_tests_only(self):
    if resource.getrlimit(resource.RLIMIT_CPU)[0] == resource.RLIM_INFINITY:
        raise RuntimeError("this version loads only in its smoke test")


NdwiWater.load = _load_in_smoke_tests_only
"""


def test_a_new_version_that_never_gets_healthy_rolls_back(hosting, ndwi_ready, tmp_path):
    model_id, _ = ndwi_ready
    status = hosting.stub.GetModelStatus(hosting_pb2.GetModelStatusRequest(model_id=model_id))
    if status.state != STATE.Value("DEPLOYMENT_STATE_HEALTHY"):
        hosting.stub.DeployModel(hosting_pb2.DeployModelRequest(model_id=model_id))
        hosting.wait_for(model_id, STATE.Value("DEPLOYMENT_STATE_HEALTHY"))
    env = hosting.stub.GetModelStatus(hosting_pb2.GetModelStatusRequest(model_id=model_id)).environment
    # 1.1.0 passes its smoke test but its replicas never load: it fails where there is no CPU time limit, which
    # only smoke tests have. (A memory limit too small to start no longer passes the smoke test, which has it too.)
    folder = tmp_path / "ndwi-1.1.0"
    shutil.copytree(NDWI, folder)
    manifest = yaml.safe_load((folder / "constellation.yaml").read_text())
    (folder / "constellation.yaml").write_text(yaml.safe_dump({**manifest, "version": "1.1.0"}))
    with open(folder / "model.py", "a") as model_code:
        model_code.write(NEVER_LOADS_AS_A_REPLICA)
    new = hosting.package(folder, version="1.1.0")
    hosting.wait_for(new.model_id, STATE.Value("DEPLOYMENT_STATE_READY"))
    hosting.stub.DeployModel(hosting_pb2.DeployModelRequest(model_id=new.model_id, environment=env))
    failed = hosting.wait_for(
        new.model_id, STATE.Value("DEPLOYMENT_STATE_FAILED"), STATE.Value("DEPLOYMENT_STATE_HEALTHY"), timeout_s=120
    )
    assert failed[-1].state == STATE.Value("DEPLOYMENT_STATE_FAILED")
    assert "traffic stays on ndwi-water:1.0.0" in failed[-1].message
    old = hosting.stub.GetModelStatus(hosting_pb2.GetModelStatusRequest(model_id=model_id))
    assert old.state == STATE.Value("DEPLOYMENT_STATE_HEALTHY")
    assert triton(old.endpoints[0].address)["agrees_with_numpy_ndwi"]
    hosting.stub.DeleteModel(hosting_pb2.DeleteModelRequest(model_id=new.model_id))


def write_broken(tmp_path: Path, **changes) -> Path:
    folder = tmp_path / "broken"
    shutil.copytree(NDWI, folder)
    manifest = yaml.safe_load((folder / "constellation.yaml").read_text())
    (folder / "constellation.yaml").write_text(yaml.safe_dump({**manifest, **changes}))
    return folder


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        (
            {"requirements": ["numpy>=1.26", "--extra-index-url https://example.org/simple"]},
            "constellation.yaml.requirements[1]",
        ),
        ({"requirements": ["numpy @ https://example.org/numpy.whl"]}, "constellation.yaml.requirements[0]"),
        ({"entrypoint": "../../etc:Model"}, "constellation.yaml.entrypoint"),
        ({"input": {"bands": ["green", "nir"], "dtype": "FLOAT32"}}, "constellation.yaml.input.dtype"),
        ({"version": "2.0.0"}, "model_version"),
    ],
)
def test_bad_manifests_are_rejected_before_anything_is_built(hosting, engine, tmp_path, changes, field):
    before = {i.id for i in engine.images.list()}
    error = rpc_error(hosting.package, write_broken(tmp_path, **changes))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in [v.field for v in field_violations(error)]
    assert {i.id for i in engine.images.list()} == before
    assert all(m.model_version != "2.0.0" for m in hosting.stub.ListModels(hosting_pb2.ListModelsRequest()).models)


def test_conflicting_requirements_fail_naming_the_pair(hosting, tmp_path):
    folder = write_broken(tmp_path, name="conflicted", requirements=["numpy==1.26.4"])
    status = hosting.package(folder, name="conflicted")
    events = hosting.wait_for(
        status.model_id, STATE.Value("DEPLOYMENT_STATE_FAILED"), STATE.Value("DEPLOYMENT_STATE_READY")
    )
    assert events[-1].state == STATE.Value("DEPLOYMENT_STATE_FAILED")
    assert "numpy==1.26.4" in events[-1].message and "numpy==" + np.__version__ in events[-1].message
    hosting.stub.DeleteModel(hosting_pb2.DeleteModelRequest(model_id=status.model_id))


def test_deploy_errors_are_clear(hosting, ndwi_ready):
    model_id, _ = ndwi_ready
    missing = rpc_error(hosting.stub.DeployModel, hosting_pb2.DeployModelRequest(model_id="hm_missing"))
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    modal = rpc_error(
        hosting.stub.DeployModel, hosting_pb2.DeployModelRequest(model_id=model_id, runtime=hosting_pb2.RUNTIME_MODAL)
    )
    assert modal.code() == grpc.StatusCode.FAILED_PRECONDITION and "MODAL_TOKEN_ID" in modal.details()
    replicas = rpc_error(hosting.stub.DeployModel, hosting_pb2.DeployModelRequest(model_id=model_id, replicas=99))
    assert [v.field for v in field_violations(replicas)] == ["replicas"]


def test_hosting_killed_mid_build_reconciles_on_restart(engine, tmp_path):
    home = tmp_path / "home"
    env = {
        **os.environ,
        "CONSTELLATION_HOME": str(home),
        "CONSTELLATION_HOSTING_METRICS_PORT": "0",
        "CONSTELLATION_HOSTING_MODEL_ROOTS": MODEL_ROOTS,
        "CONSTELLATION_LOG_FORMAT": "text",
    }

    def start() -> tuple[subprocess.Popen, str]:
        port = str(_free_port())
        process = subprocess.Popen(
            [sys.executable, "-m", "hosting_svc"],
            env={**env, "CONSTELLATION_HOSTING_PORT": port},
            stderr=subprocess.DEVNULL,
        )
        address = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with key_channel(address) as channel:
                try:
                    grpc.channel_ready_future(channel).result(timeout=1)
                    return process, address
                except grpc.FutureTimeoutError:
                    time.sleep(0.2)
        pytest.fail("hosting did not start")

    folder = write_broken(tmp_path, name="interrupted")
    (folder / "model.py").write_text((folder / "model.py").read_text() + f"\n# {time.time()}\n")  # a fresh code layer
    process, address = start()
    from constellation.hosting.v1 import hosting_pb2_grpc

    with key_channel(address) as channel:
        stub = hosting_pb2_grpc.HostingServiceStub(channel)
        status = stub.PackageModel(
            hosting_pb2.PackageModelRequest(model_name="interrupted", model_version="1.0.0", local_path=str(folder))
        )
        for event in stub.WatchDeployment(hosting_pb2.WatchDeploymentRequest(model_id=status.model_id), timeout=300):
            if event.state in (STATE.Value("DEPLOYMENT_STATE_BUILDING"), STATE.Value("DEPLOYMENT_STATE_VALIDATING")):
                break
    process.kill()
    process.wait()
    process, address = start()
    try:
        with key_channel(address) as channel:
            stub = hosting_pb2_grpc.HostingServiceStub(channel)
            after = stub.GetModelStatus(hosting_pb2.GetModelStatusRequest(model_id=status.model_id))
            assert after.state == STATE.Value("DEPLOYMENT_STATE_FAILED") and "hosting restarted" in after.state_message
            smoke = engine.containers.list(
                all=True, filters={"label": [f"{images.LABEL_MODEL}={status.model_id}", f"{images.LABEL_ROLE}=smoke"]}
            )
            assert smoke == []
            stub.PackageModel(
                hosting_pb2.PackageModelRequest(model_name="interrupted", model_version="1.0.0", local_path=str(folder))
            )
            for event in stub.WatchDeployment(
                hosting_pb2.WatchDeploymentRequest(model_id=status.model_id), timeout=300
            ):
                if event.state == STATE.Value("DEPLOYMENT_STATE_READY") and not event.log_line:
                    break
            stub.DeleteModel(hosting_pb2.DeleteModelRequest(model_id=status.model_id))
    finally:
        process.terminate()
        process.wait(30)


def _free_port() -> int:
    from tests.pg import free_port

    return free_port()


def test_join_network_makes_an_internal_models_network_once(engine):
    """CONSTELLATION_HOSTING_DOCKER_NETWORK (compose): hosting makes the models network, internal (no route out),
    unless it exists; outside a container of the engine (as here) it connects nothing. tests/test_compose.py runs
    it in hosting's container, where hosting joins it and model replicas are reached on it by name."""
    name = f"cstltest-models-{os.getpid()}"
    try:
        images.Engine().join_network(name)
        images.Engine().join_network(name)  # a second hosting instance: the same network
        [network] = engine.networks.list(names=[name])
        assert network.attrs["Internal"] is True and network.attrs["Labels"] == {images.LABEL_ROLE: "models"}
        assert not network.attrs["Containers"]
    finally:
        for network in engine.networks.list(names=[name]):
            network.remove()


def test_containers_removed_by_someone_else_meanwhile_are_no_error(engine):
    """Swarm removes a task's container by itself, and a replica's container may go while hosting deletes its
    model: one that goes between the engine's listing and hosting's look at it is left out, and removing one
    that is already gone is done, where docker-py raised NotFound (DeleteModel answered INTERNAL in CI)."""
    label = f"cstltest-removed-{os.getpid()}"
    started = [
        engine.containers.create("constellation/base:bookworm", ["sleep", "60"], labels={label: str(i)})
        for i in range(2)
    ]
    under_test = images.Engine()
    listing = under_test.client.api.containers

    def listed_then_one_removed(*args, **kwargs):
        found = listing(*args, **kwargs)
        engine.api.remove_container(started[0].id, force=True)  # as Swarm would, right after the listing
        return found

    try:
        under_test.client.api.containers = listed_then_one_removed
        assert [c.id for c in under_test.containers(**{label: ""})] == [started[1].id]
        under_test.client.api.containers = listing
        under_test.remove_container(started[0].id)  # already gone: nothing to do
        under_test.remove_container(started[1].id)
        assert not engine.containers.list(all=True, filters={"label": label})
    finally:
        for container in engine.containers.list(all=True, filters={"label": label}):
            container.remove(force=True)
