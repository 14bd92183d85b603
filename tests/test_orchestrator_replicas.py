"""Orchestrator replicas on one PostgreSQL Dagster instance: each run is owned by lease; when its owner is
SIGKILLed, a survivor takes the lease, adopts the run's live worker (the run finishes, cancel still works) and
re-executes a run whose worker died too from its unfinished steps (Dagster's re-execution from failure). Any
replica answers GetRun and WatchRun for any run. The first tests are the take-over decision alone
(orchestrator_svc.runs.takeover)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from dagster import DagsterRunStatus
from dagster._core.storage.dagster_run import DagsterRun

from constellation.common.v1 import common_pb2 as c
from constellation.orchestrator.v1 import orchestrator_pb2 as pb
from constellation.orchestrator.v1 import orchestrator_pb2_grpc as pb_grpc
from mesh import config
from mesh.services import insecure_channel, with_api_key
from orchestrator_svc.launcher import HOST_TAG, PID_TAG, START_TAG, WorkerRunLauncher, process_start_ticks
from orchestrator_svc.runs import ADOPT, LEASE_PREFIX, REEXECUTE, SETTLE, SKIP, dagster_run_id, takeover
from tests.orchestrator_support import (  # noqa: F401 - fixtures
    ModelEndpoint,
    Orchestrator,
    orchestrator_env,
    s3_server,
    scene_512,
    slow_model_dir,
    water_request,
)
from tests.pg import create_database, free_port
from tests.test_orchestrator_runs import assert_matches_ndwi, names, wait_for_progress

E = c.RunEventType

# -- the decision -------------------------------------------------------------------------------------------


def run_with_worker(
    pid: int, host: str | None = None, ticks: str | None = None, status: DagsterRunStatus = DagsterRunStatus.STARTED
) -> DagsterRun:
    tags = {PID_TAG: str(pid), HOST_TAG: host or socket.gethostname(), START_TAG: ticks or process_start_ticks(pid)}
    return DagsterRun(job_name="job", run_id="r", tags=tags, status=status)


@pytest.fixture
def launcher(tmp_path) -> WorkerRunLauncher:
    return WorkerRunLauncher(str(tmp_path))


def test_a_run_whose_worker_lives_on_this_host_is_adopted(launcher):
    with subprocess.Popen(["sleep", "30"]) as worker:
        try:
            assert takeover(run_with_worker(worker.pid), launcher, socket.gethostname()) == ADOPT
        finally:
            worker.kill()


def test_a_reused_pid_is_not_taken_for_the_worker(launcher):
    # this process is alive, but it started at another time than the worker recorded on the run
    run = run_with_worker(os.getpid(), ticks="1")
    assert takeover(run, launcher, socket.gethostname()) == REEXECUTE


def test_a_run_whose_worker_died_is_reexecuted_unless_it_was_being_canceled(launcher):
    worker = subprocess.Popen(["true"])
    ticks = process_start_ticks(worker.pid) or "0"
    worker.wait()
    here = socket.gethostname()
    assert takeover(run_with_worker(worker.pid, ticks=ticks), launcher, here) == REEXECUTE
    assert takeover(DagsterRun(job_name="job", run_id="r"), launcher, here) == REEXECUTE  # never started
    canceling = run_with_worker(worker.pid, ticks=ticks, status=DagsterRunStatus.CANCELING)
    assert takeover(canceling, launcher, here) == SETTLE


def test_another_hosts_worker_is_left_to_that_host(launcher):
    run = run_with_worker(os.getpid(), host="elsewhere", ticks="1")
    assert takeover(run, launcher, socket.gethostname()) == SKIP


# -- two orchestrators --------------------------------------------------------------------------------------


class Subprocess:
    """An orchestrator in a process of its own (so it can be SIGKILLed) and a stub to it."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        port = free_port()
        env = {**env, "CONSTELLATION_ORCHESTRATOR_PORT": str(port)}
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "orchestrator_svc"], env=env, stdout=out, stderr=subprocess.STDOUT
            )
        settings = config.load("orchestrator", env)
        self.channel = with_api_key(insecure_channel(f"127.0.0.1:{port}"), settings.service_key)
        self.stub = pb_grpc.OrchestratorServiceStub(self.channel)
        grpc.channel_ready_future(self.channel).result(timeout=60)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()
        self.channel.close()


def wait_owned(orch: Orchestrator, run_id: str, timeout_s: float) -> float:
    start = time.monotonic()
    while run_id not in orch.server.runs.owned():
        assert time.monotonic() - start < timeout_s, f"run {run_id} not taken over within {timeout_s}s"
        time.sleep(0.05)
    return time.monotonic() - start


@pytest.fixture
def slower_endpoint(tmp_path):
    """NDWI at 1.5 s per request, 9 tiles one at a time: every run has seconds of its model step left after the
    kill, also the first one launched, which the owner's spare worker starts about 2 s before the others."""
    endpoint = ModelEndpoint(slow_model_dir(tmp_path / "slower-ndwi", 1.5), tmp_path).start()
    yield endpoint
    endpoint.stop()


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_killed_orchestrators_runs_are_adopted_or_settled_by_the_other(
    tmp_path, postgres_admin_url, s3_server, slower_endpoint, scene_512
):
    env = orchestrator_env(
        tmp_path / "home",
        CONSTELLATION_DAGSTER_POSTGRES_URL=create_database(postgres_admin_url),
        CONSTELLATION_LEASE_TTL_S="3",
        CONSTELLATION_LEASE_RENEW_S="1",
    )
    survivor = Orchestrator(env)
    owner = Subprocess(env, tmp_path / "owner.log")
    try:

        def launch(name: str) -> pb.Run:
            request = water_request(
                f"file://{scene_512}", slower_endpoint.address, [f"file://{tmp_path}/{name}"], batch_size=1,
                max_concurrency=1,
            )  # fmt: skip
            return owner.stub.LaunchRun(request)

        finishing, canceled, orphan = launch("a"), launch("b"), launch("c")
        for run in (finishing, canceled, orphan):
            assert survivor.server.runs.leases.holder_of(LEASE_PREFIX + run.id), "the launching replica owns it"
            assert run.id not in survivor.server.runs.owned()
        # the survivor serves the owner's runs from the shared instance
        before = wait_for_progress(survivor, finishing.id, "water", 1)
        wait_for_progress(survivor, canceled.id, "water", 1)
        orphan_before = wait_for_progress(survivor, orphan.id, "water", 1)
        orphan_pid = int(survivor.server.runs.instance.get_run_by_id(dagster_run_id(orphan.id)).tags[PID_TAG])

        owner.kill()  # SIGKILL: no lease is released
        os.kill(orphan_pid, signal.SIGKILL)  # this run's worker dies with its owner
        bound = 3 + 1 + 1.5  # TTL, the survivor's next look, slack for a loaded machine
        taken = [wait_owned(survivor, r.id, 30) for r in (finishing, canceled)]
        assert max(taken) <= bound, taken

        assert wait_owned(survivor, orphan.id, 30) <= bound
        survivor.stub.CancelRun(pb.CancelRunRequest(id=canceled.id))
        assert survivor.wait(canceled.id).state == c.RUN_STATE_CANCELED

        for run, seen in ((finishing, before), (orphan, orphan_before)):
            done = survivor.wait(run.id, timeout_s=180)
            assert done.state == c.RUN_STATE_SUCCEEDED, done.state_message
            events = survivor.events(run.id)
            assert [e.sequence for e in events] == list(range(1, len(events) + 1)), "gap-free, duplicate-free"
            assert events[: len(seen)] == seen, "the stream before the kill is the same after it"
            assert sorted(e.block_id for e in events if e.type == E.RUN_EVENT_TYPE_STEP_SUCCEEDED) == sorted(
                CHAIN_AND_EXPORT
            ), names(events)
            assert names(events).count("RUN_STARTED") == 1 and names(events)[-1] == "RUN_SUCCEEDED", names(events)
            raster = next(o for o in done.outputs if o.media_type.split(";")[0] == "image/tiff")
            assert_matches_ndwi(Path(raster.uri.removeprefix("file://")), scene_512)
            assert {o.block_id for o in done.outputs} == {"out-0"}
        attempts = survivor.server.runs._chain(survivor.server.runs._run(orphan.id))
        assert len(attempts) == 2 and attempts[1].parent_run_id == attempts[0].run_id
        # from failure: the steps that had finished before the kill (scene, tiles) are not run again
        assert attempts[1].step_keys_to_execute and len(attempts[1].step_keys_to_execute) == len(CHAIN_AND_EXPORT) - 2

        deadline = time.monotonic() + 10  # ended runs' leases are given back
        while survivor.server.runs.owned():
            assert time.monotonic() < deadline, survivor.server.runs.owned()
            time.sleep(0.2)
    finally:
        if owner.process.poll() is None:
            owner.kill()
        survivor.stop()


CHAIN_AND_EXPORT = ["scene", "tiles", "water", "mosaic", "polygons", "out-0"]


def test_no_spare_worker_when_it_is_turned_off(tmp_path):
    """CONSTELLATION_ORCHESTRATOR_SPARE_WORKER=0 reaches the launcher, which then starts a worker per run only."""
    from orchestrator_svc import settings as orchestrator_settings
    from orchestrator_svc.instance import instance_config

    settings = orchestrator_settings.load(
        {"CONSTELLATION_HOME": str(tmp_path), "CONSTELLATION_ORCHESTRATOR_SPARE_WORKER": "0"}
    )
    config = instance_config(settings)["run_launcher"]["config"]
    assert config["spare"] is False
    launcher = WorkerRunLauncher(**config)
    launcher.start_spare()
    assert launcher._spare is None
