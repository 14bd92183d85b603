"""Model sources other than a local folder (git, Hugging Face cache), and hosting restarts that adopt and clean up."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import docker
import grpc
import pytest
import yaml

from constellation.hosting.v1 import hosting_pb2
from hosting_svc import images
from hosting_svc.runtimes.docker import LABEL_OWNER
from tests.hosting_support import NDWI, STATE, HostingUnderTest, require_docker

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def hosting(tmp_path_factory):
    require_docker()
    under_test = HostingUnderTest(tmp_path_factory.mktemp("hosting-sources"))
    yield under_test
    for model in under_test.hosting.list():
        under_test.hosting.delete(model.id)
    under_test.close()


def versioned_copy(folder, version: str):
    shutil.copytree(NDWI, folder)
    manifest = yaml.safe_load((folder / "constellation.yaml").read_text())
    (folder / "constellation.yaml").write_text(yaml.safe_dump({**manifest, "version": version}))
    return folder


def ready(hosting: HostingUnderTest, status: hosting_pb2.ModelStatus) -> hosting_pb2.ModelStatus:
    events = hosting.wait_for(
        status.model_id, STATE.Value("DEPLOYMENT_STATE_READY"), STATE.Value("DEPLOYMENT_STATE_FAILED")
    )
    assert events[-1].state == STATE.Value("DEPLOYMENT_STATE_READY"), events[-1].message
    return hosting.stub.GetModelStatus(hosting_pb2.GetModelStatusRequest(model_id=status.model_id))


def test_package_from_a_git_repository_branch_and_subdirectory(hosting, tmp_path):
    repo = tmp_path / "repo"
    versioned_copy(repo / "models" / "ndwi", "2.0.0")
    git = ["git", "-C", str(repo), "-c", "user.email=t@example.org", "-c", "user.name=t"]
    subprocess.run(["git", "init", "-q", "-b", "release", str(repo)], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "model"], check=True)
    status = hosting.stub.PackageModel(
        hosting_pb2.PackageModelRequest(
            model_name="ndwi-water",
            model_version="2.0.0",
            git=hosting_pb2.GitSource(repo_url=f"file://{repo}", branch="release", subdirectory="models/ndwi"),
        )
    )
    assert ready(hosting, status).image == "constellation/ndwi-water:2.0.0"
    with pytest.raises(grpc.RpcError) as error:
        hosting.stub.PackageModel(
            hosting_pb2.PackageModelRequest(
                model_name="ndwi-water",
                model_version="2.0.0",
                git=hosting_pb2.GitSource(repo_url=f"file://{repo}", branch="no-such-branch"),
            )
        )
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "git clone" in error.value.details()


def test_package_from_the_hugging_face_cache_offline(hosting, tmp_path, monkeypatch):
    cache = tmp_path / "hf-cache"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = cache / "models--constellation-tests--tiny-ndwi" / "snapshots" / commit
    versioned_copy(snapshot, "3.0.0")
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    status = hosting.stub.PackageModel(
        hosting_pb2.PackageModelRequest(
            model_name="ndwi-water", model_version="3.0.0", hugging_face_id="hf://constellation-tests/tiny-ndwi@main"
        )
    )
    assert ready(hosting, status).image == "constellation/ndwi-water:3.0.0"
    with pytest.raises(grpc.RpcError) as error:
        hosting.stub.PackageModel(
            hosting_pb2.PackageModelRequest(model_name="x", model_version="1", hugging_face_id="hf://nobody/absent")
        )
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "cache" in error.value.details()


def test_a_restarted_hosting_adopts_serving_replicas_and_removes_orphans(hosting, tmp_path):
    status = ready(hosting, hosting.package(versioned_copy(tmp_path / "m", "4.0.0"), version="4.0.0"))
    hosting.stub.DeployModel(hosting_pb2.DeployModelRequest(model_id=status.model_id))
    hosting.wait_for(status.model_id, STATE.Value("DEPLOYMENT_STATE_HEALTHY"))
    engine = docker.from_env()
    home = hosting.env["CONSTELLATION_HOME"]

    def replica(owner: str):
        labels = {images.LABEL_MODEL: "hm_forgotten", images.LABEL_ROLE: "replica", LABEL_OWNER: owner}
        return engine.containers.run(status.image, ["sleep", "300"], detach=True, network_mode="none", labels=labels)

    orphan = replica(str(Path(home) / "hosting"))
    neighbours = replica("/elsewhere/another-mesh/hosting")  # another mesh's hosting on the same engine
    # The first hosting stops (its monitor and instance lease: its replicas keep serving), and a second starts on
    # the same state, as after a restart. (While an instance is running a new one joins it without reconciling.)
    hosting.hosting.close()
    second = HostingUnderTest(Path(home))
    try:
        adopted = second.stub.GetModelStatus(hosting_pb2.GetModelStatusRequest(model_id=status.model_id))
        assert adopted.state == STATE.Value("DEPLOYMENT_STATE_HEALTHY")
        assert "adopted 1 running replica" in second.hosting.store.events(status.model_id)[-1].message
        with pytest.raises(docker.errors.NotFound):
            engine.containers.get(orphan.id)
        assert engine.containers.get(neighbours.id).status in ("created", "running")
    finally:
        second.close()
        neighbours.remove(force=True)
