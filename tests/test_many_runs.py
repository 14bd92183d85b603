"""Many runs at once through the gateway, on the local and the Docker runtime: every run succeeds with the
outputs of a run alone, the model's replica is never killed for memory, runs beyond core's limit wait
in its queue, and a replica killed in the middle of a batch costs no run. The figures (wall time against
N runs alone, p95 latency, peak memory) are bench/load.py's."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import docker
import pytest

from bench.load import Batch, Setup, batch, replicas, set_up, tear_down
from model_runtime.manifest import load_manifest, memory_bytes
from scripts.make_scenes import make_scene
from tests.conftest import EXAMPLE_MODELS, MEASURED_FIGURES
from tests.hosting_support import ROOT, require_docker

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

RUNS = 8
LIMIT = memory_bytes(str(load_manifest(EXAMPLE_MODELS / "water-mlp").resources["memory"]))


@pytest.fixture(scope="module")
def scene():
    return make_scene(2048, ROOT / "build" / "scenes" / "olinda-2048.tif")


@pytest.fixture(scope="module", params=["local", "docker"])
def mesh(request, scene, tmp_path_factory):
    if request.param == "docker":
        require_docker()
    setup = set_up(request.param, scene, tmp_path_factory.mktemp(f"many-{request.param}"))
    yield setup
    tear_down(setup)


def note(setup: Setup, what: str, result: Batch) -> None:
    MEASURED_FIGURES.append(
        f"{setup.runtime}: {what}: {result.succeeded}/{result.runs} succeeded in {result.wall_s:.1f}s "
        f"({result.wall_s / (result.runs * setup.alone_s):.2f} x {result.runs} runs alone), p95 {result.p95_s:.1f}s, "
        f"replica peak {result.peak_bytes >> 20} MiB of {LIMIT >> 20}"
    )


def test_eight_runs_at_once_all_succeed_with_the_outputs_of_a_run_alone(mesh):
    result = batch(mesh, RUNS)
    note(mesh, f"{RUNS} runs at once", result)
    assert result.succeeded == RUNS, result.failures
    assert result.identical == RUNS, "every run's outputs equal the lone run's"
    assert not result.oom_killed and result.restarts == 0, "the engine never killed or restarted the replica"
    assert 0 < result.peak_bytes < LIMIT
    # core runs 4 at a time by default: the others waited in its queue, and said so on WatchRun
    assert result.queued_events >= RUNS - 4


def replica_process(address_port: int) -> int:
    """The process listening on the replica's port (the local runtime's relay, whose sandbox dies with it)."""
    out = subprocess.run(["ss", "-ltnpH", f"sport = :{address_port}"], capture_output=True, text=True).stdout
    return int(out.split("pid=")[1].split(",")[0])


def test_a_replica_killed_in_the_middle_of_eight_runs_costs_no_run(mesh):
    killed = []

    def kill_once_inference_runs(setup: Setup, inferring) -> None:
        assert inferring.wait(120), "no run reached its model step"
        port, replica_id = replicas(setup)[0]
        if setup.runtime == "docker":  # the model server crashes (as the OOM killer would end it)
            os.kill(docker.from_env().containers.get(replica_id).attrs["State"]["Pid"], signal.SIGKILL)
        else:
            os.kill(replica_process(port), signal.SIGKILL)
        killed.append(time.monotonic())

    result = batch(mesh, RUNS, during=kill_once_inference_runs)
    note(mesh, f"{RUNS} runs, a replica killed", result)
    assert killed and result.retried_runs >= 1, "some run's model step met the dead replica and waited for it"
    assert result.succeeded == RUNS, result.failures
    assert result.identical == RUNS
    assert not result.oom_killed
