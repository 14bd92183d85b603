"""Hosting without Docker (the local runtime), the Modal app definition, and registry push/pull with auth."""

from __future__ import annotations

import ast
import logging
import os
import signal
import subprocess
import time

import bcrypt
import grpc
import numpy as np
import pytest

from constellation.hosting.v1 import hosting_pb2
from hosting_svc.domain import HostedModel
from hosting_svc.runtimes.modal import render_app
from inference import grpc_predict_v2_pb2 as v2
from inference import grpc_predict_v2_pb2_grpc as v2_grpc
from mesh.services import channel_options
from model_runtime.manifest import load_manifest
from tests.conftest import rpc_error
from tests.hosting_support import NDWI, STATE, HostingUnderTest, require_docker, state_path
from tests.pg import free_port

pytestmark = pytest.mark.timeout(900)


def infer_ndwi(address: str) -> bool:
    tiles = np.random.default_rng(3).uniform(0.01, 0.6, size=(2, 2, 256, 256)).astype(np.float32)
    request = v2.ModelInferRequest(
        model_name="ndwi-water",
        inputs=[v2.ModelInferRequest.InferInputTensor(name="tiles", datatype="FP32", shape=tiles.shape)],
        raw_input_contents=[tiles.tobytes()],
    )
    with grpc.insecure_channel(address, options=channel_options(1 << 27)) as channel:
        response = v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    out = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(response.outputs[0].shape)
    green, nir = tiles[:, 0:1], tiles[:, 1:2]
    return bool(np.array_equal(out > 0.5, (green - nir) / (green + nir) > 0))


def test_local_runtime_packages_deploys_heals_and_deletes(tmp_path):
    hosting = HostingUnderTest(tmp_path / "home", CONSTELLATION_HOSTING_DOCKER="off")
    try:
        status = hosting.package()
        packaged = hosting.wait_for(
            status.model_id, STATE.Value("DEPLOYMENT_STATE_READY"), STATE.Value("DEPLOYMENT_STATE_FAILED")
        )
        assert state_path(packaged) == ["PACKAGING", "BUILDING", "VALIDATING", "READY"], packaged[-1].message
        assert any("venv" in e.message for e in packaged if e.state == STATE.Value("DEPLOYMENT_STATE_BUILDING"))
        hosting.stub.DeployModel(hosting_pb2.DeployModelRequest(model_id=status.model_id))
        deployed = hosting.wait_for(
            status.model_id,
            STATE.Value("DEPLOYMENT_STATE_HEALTHY"),
            STATE.Value("DEPLOYMENT_STATE_FAILED"),
            after=packaged[-1].sequence,
        )
        assert deployed[-1].state == STATE.Value("DEPLOYMENT_STATE_HEALTHY"), deployed[-1].message
        current = hosting.stub.GetModelStatus(hosting_pb2.GetModelStatusRequest(model_id=status.model_id))
        assert current.runtime == hosting_pb2.RUNTIME_LOCAL and current.image == ""
        address = current.endpoints[0].address
        assert infer_ndwi(address)

        pid = int(current.endpoints[0].replica_id.removeprefix("pid:"))
        os.kill(pid, signal.SIGKILL)
        healed = hosting.wait_for(
            status.model_id, STATE.Value("DEPLOYMENT_STATE_HEALTHY"), after=deployed[-1].sequence, timeout_s=60
        )
        assert state_path(healed)[-2:] == ["UNHEALTHY", "HEALTHY"]
        assert any("restarted" in e.log_line for e in healed)
        assert infer_ndwi(address)

        hosting.stub.DeleteModel(hosting_pb2.DeleteModelRequest(model_id=status.model_id))
        time.sleep(0.2)
        alive = subprocess.run(["pgrep", "-f", f"--port {address.rsplit(':', 1)[1]}"], capture_output=True, text=True)
        assert alive.stdout.strip() == "", "no model process outlives DeleteModel"
        assert not (tmp_path / "home" / "hosting" / "local" / status.model_id).exists()
    finally:
        hosting.close()


def test_stop_deployments_ends_every_endpoint_and_the_model_can_be_deployed_again(tmp_path):
    hosting = HostingUnderTest(tmp_path / "home", CONSTELLATION_HOSTING_DOCKER="off")
    try:
        status = hosting.package()
        packaged = hosting.wait_for(
            status.model_id, STATE.Value("DEPLOYMENT_STATE_READY"), STATE.Value("DEPLOYMENT_STATE_FAILED")
        )
        hosting.stub.DeployModel(hosting_pb2.DeployModelRequest(model_id=status.model_id, replicas=2))
        deployed = hosting.wait_for(
            status.model_id,
            STATE.Value("DEPLOYMENT_STATE_HEALTHY"),
            STATE.Value("DEPLOYMENT_STATE_FAILED"),
            after=packaged[-1].sequence,
        )
        assert deployed[-1].state == STATE.Value("DEPLOYMENT_STATE_HEALTHY"), deployed[-1].message
        pids = [int(e.replica_id.removeprefix("pid:")) for e in deployed[-1].endpoints]

        reply = hosting.stub.StopDeployments(hosting_pb2.StopDeploymentsRequest())
        assert [m.model_id for m in reply.stopped] == [status.model_id] and reply.other_replicas_stopped == 0
        assert reply.stopped[0].state == STATE.Value("DEPLOYMENT_STATE_READY") and not reply.stopped[0].endpoints
        time.sleep(1.0)  # a monitor pass: it must not restart what was stopped
        for pid in pids:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
        assert not list((tmp_path / "home" / "hosting" / "local").glob("*/replica-*.pid"))

        hosting.stub.DeployModel(hosting_pb2.DeployModelRequest(model_id=status.model_id))
        again = hosting.wait_for(
            status.model_id,
            STATE.Value("DEPLOYMENT_STATE_HEALTHY"),
            STATE.Value("DEPLOYMENT_STATE_FAILED"),
            after=deployed[-1].sequence,
        )
        assert again[-1].state == STATE.Value("DEPLOYMENT_STATE_HEALTHY"), again[-1].message
        hosting.stub.DeleteModel(hosting_pb2.DeleteModelRequest(model_id=status.model_id))
    finally:
        hosting.close()


def test_docker_runtime_refused_without_an_engine(tmp_path):
    hosting = HostingUnderTest(tmp_path / "home", CONSTELLATION_HOSTING_DOCKER="off")
    try:
        status = hosting.package()
        hosting.wait_for(status.model_id, STATE.Value("DEPLOYMENT_STATE_READY"))
        error = rpc_error(
            hosting.stub.DeployModel,
            hosting_pb2.DeployModelRequest(model_id=status.model_id, runtime=hosting_pb2.RUNTIME_DOCKER),
        )
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "Docker" in error.details()
    finally:
        hosting.close()


def test_list_models_filters_by_name_version_and_state_and_rejects_bad_filters(tmp_path):
    from clients.hosting import find_hosted

    hosting = HostingUnderTest(tmp_path / "home", CONSTELLATION_HOSTING_DOCKER="off")
    try:
        for i, (name, version, state) in enumerate(
            [("a", "1.0", "ready"), ("a", "2.0", "healthy"), ("b", "1.0", "failed")]
        ):
            hosting.hosting.store.save(HostedModel(id=f"hm_{i:03d}", name=name, version=version, state=state))

        def listed(text: str, **paging: object) -> list[tuple[str, str]]:
            response = hosting.stub.ListModels(hosting_pb2.ListModelsRequest(filter=text, **paging))
            return [(m.model_name, m.model_version) for m in response.models]

        assert listed("") == [("a", "1.0"), ("a", "2.0"), ("b", "1.0")]
        assert listed('name = "a"') == [("a", "1.0"), ("a", "2.0")]
        assert listed('name = "a" AND version = "2.0"') == [("a", "2.0")]
        assert listed('version = "1.0" and state = "FAILED"') == [("b", "1.0")]
        assert listed('name = ""') == []
        first = hosting.stub.ListModels(hosting_pb2.ListModelsRequest(filter='version = "1.0"', page_size=1))
        assert len(first.models) == 1 and listed('version = "1.0"', page_token=first.next_page_token) == [("b", "1.0")]
        for bad, says in (
            ('state = "sleeping"', "healthy"),
            ('colour = "red"', "name, version, state"),
            ("name = a", 'field = "value"'),
        ):
            error = rpc_error(hosting.stub.ListModels, hosting_pb2.ListModelsRequest(filter=bad))
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and says in error.details(), (bad, error.details())
        assert find_hosted(hosting.stub, "a", "2.0").model_version == "2.0"
        assert find_hosted(hosting.stub, "a", "3.0") is None
    finally:
        hosting.close()


def test_modal_app_is_generated_from_the_manifest(tmp_path):
    manifest = load_manifest(NDWI)
    model = HostedModel(
        id="hm_1",
        name="ndwi-water",
        version="1.0.0",
        replicas=2,
        manifest={"requirements": list(manifest.requirements), "resources": {"cpu": 2, "memory": "1g", "gpu": 1}},
    )
    source = render_app(model, tmp_path / "app")
    tree = ast.parse(source)  # valid Python
    calls = {
        node.func.attr for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
    }
    assert {"App", "pip_install", "add_local_dir", "function", "forward", "from_name"} <= calls
    assert "'numpy>=1.26'" in source and "'grpcio==" in source
    assert "gpu='any'" in source and "memory=1024" in source and "min_containers=2" in source
    assert "modal.Secret.from_name('constellation-ndwi-water')" in source
    assert '"--model-dir", "/opt/model"' in source


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    require_docker()
    root = tmp_path_factory.mktemp("registry")
    password = "s3cret-registry-pass"
    (root / "htpasswd").write_text(f"pusher:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()}\n")
    port = free_port()
    (root / "config.yml").write_text(
        f"""version: 0.1
storage:
  filesystem:
    rootdirectory: {root / "data"}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
auth:
  htpasswd:
    realm: constellation-test
    path: {root / "htpasswd"}
"""
    )
    process = subprocess.Popen(
        ["docker-registry", "serve", str(root / "config.yml")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 20
    import urllib.error
    import urllib.request

    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1)
        except urllib.error.HTTPError:
            break  # 401: up, and asking for credentials
        except OSError:
            time.sleep(0.1)
    yield {"address": f"127.0.0.1:{port}", "user": "pusher", "password": password}
    process.terminate()
    process.wait(10)


def test_push_delete_pull_round_trip_with_auth_and_no_leaked_secret(registry, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    hosting = HostingUnderTest(
        tmp_path / "home",
        CONSTELLATION_REGISTRY_HOST=registry["address"],
        CONSTELLATION_REGISTRY_USERNAME=registry["user"],
        CONSTELLATION_REGISTRY_PASSWORD=registry["password"],
    )
    engine = require_docker()
    try:
        status = hosting.package()
        ready = hosting.wait_for(status.model_id, STATE.Value("DEPLOYMENT_STATE_READY"))
        pushed = hosting.stub.PushImage(
            hosting_pb2.PushImageRequest(model_id=status.model_id, repository=f"{registry['address']}/constellation")
        )
        assert (
            pushed.image == f"{registry['address']}/constellation/ndwi-water:1.0.0"
            and pushed.image_digest.startswith("sha256:")
        )
        engine.images.remove(pushed.image)
        assert not engine.images.list(name=f"{registry['address']}/constellation/ndwi-water")
        pulled = hosting.stub.PullImage(hosting_pb2.PullImageRequest(image=pushed.image))
        assert pulled.image_digest == pushed.image_digest
        assert engine.images.get(pushed.image)

        wrong = HostingUnderTest(
            tmp_path / "wrong",
            CONSTELLATION_REGISTRY_HOST=registry["address"],
            CONSTELLATION_REGISTRY_USERNAME=registry["user"],
            CONSTELLATION_REGISTRY_PASSWORD="not-the-password",
        )
        try:
            refused = rpc_error(wrong.stub.PullImage, hosting_pb2.PullImageRequest(image=pushed.image))
            assert refused.code() == grpc.StatusCode.UNAUTHENTICATED, refused.details()
            assert "credentials" in refused.details() and "not-the-password" not in refused.details()
        finally:
            wrong.close()

        events = hosting.hosting.store.events(status.model_id)
        every_message = " ".join(e.message + e.log_line for e in events) + " ".join(
            r.getMessage() for r in caplog.records
        )
        assert registry["password"] not in every_message
        assert any("pushing" in e.message for e in events[len(ready) :])
        engine.images.remove(pushed.image)
    finally:
        hosting.hosting.delete(status.model_id)
        hosting.close()
