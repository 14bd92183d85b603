"""Fencing of hosting's and the orchestrator's writes by lease generation, on SQLite and PostgreSQL.

A replica that was paused past its lease's expiry (in-process here: its lease expires, another holder takes
it) wakes up and tries to act: hosting's monitor on a deployment another instance watches now (write its
state, restart a replica), the orchestrator on a run another orchestrator owns now (settle it, re-execute
it). Each write is refused, nothing changes in the store, and the stale replica drops the work and says so;
the new holder's writes go through. The engine (hosting's runtime) is a recording stand-in at its interface:
what is tested is that no call reaches it. core's fencing is tested in test_leases.py."""

from __future__ import annotations

import logging
import socket
import subprocess
import time

import pytest
from dagster import DagsterRunStatus
from dagster._core.storage.dagster_run import DagsterRun

from clients.roots import StorageRoots
from hosting_svc.domain import Endpoint, HostedModel
from hosting_svc.journal import Journal
from hosting_svc.monitor import LEASE, WORK, Monitor
from hosting_svc.runtimes import Replica
from hosting_svc.settings import HostingSettings
from hosting_svc.store import Store
from mesh.leases import Lease, LeaseLost, Leases
from orchestrator_svc.instance import lease_engine, open_instance
from orchestrator_svc.launcher import ACTIVE, HOST_TAG, PID_TAG, START_TAG
from orchestrator_svc.runs import (
    LEASE_PREFIX,
    NEXT_TAG,
    ORCHESTRATOR_TAG,
    RUN_ID_TAG,
    RunManager,
    dagster_run_id,
)
from orchestrator_svc.settings import OrchestratorSettings

TTL = 0.6

# -- hosting --------------------------------------------------------------------------------------------------


class RecordingRuntime:
    """The engine's side of hosting's Runtime interface, recording every call that would change something."""

    name = "local"
    scales_itself = False

    def __init__(self, alive: bool) -> None:
        self.is_alive = alive
        self.calls: list[tuple[str, str]] = []
        self.serving: dict[str, list[str]] = {}  # model id -> replica ids the engine runs

    def alive(self, model: HostedModel, replica_id: str) -> bool:
        return self.is_alive

    def why_down(self, model: HostedModel, replica_id: str) -> str:
        return "exit code 1"

    def start(self, model: HostedModel, index: int, port: int) -> Replica:
        self.calls.append(("start", f"{index}:{port}"))
        return Replica(f"pid:{90000 + len(self.calls)}", f"127.0.0.1:{port}")

    def stop(self, model: HostedModel, replica_id: str) -> None:
        self.calls.append(("stop", replica_id))

    def running(self) -> dict[str, list[str]]:
        return dict(self.serving)

    def discard_trials(self, model_id: str = "") -> None:
        self.calls.append(("discard_trials", model_id))


def closed_port() -> int:
    with socket.socket() as s:  # bound, never listening: a replica that does not answer
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hosting_instance(store: Store, holder: str, runtime: RecordingRuntime, tmp_path) -> Monitor:
    settings = HostingSettings.from_env({}, home=tmp_path / holder)
    return Monitor(Journal(store), settings, {"local": runtime}, {}, Leases(store.engine, TTL, holder))


def snapshot(store: Store, model_id: str) -> tuple:
    model = store.get(model_id)
    assert model is not None
    return model.state, [(e.sequence, e.state, e.message) for e in store.events(model_id)]


@pytest.mark.parametrize("replica_alive", [True, False], ids=["state-write", "restart"])
def test_a_hosting_instance_that_lost_a_deployments_lease_writes_and_restarts_nothing(
    database_url, tmp_path, caplog, replica_alive
):
    """state-write: the replica's process runs but does not answer, so the stale watcher would mark the model
    UNHEALTHY (a database write, fenced in its transaction); restart: the process exited, so it would restart
    it (an engine call, fenced by a renewal just before)."""
    store = Store(database_url)
    port = closed_port()
    model = HostedModel(
        id="hm_1",
        name="water",
        version="1",
        state="healthy",
        runtime="local",
        replicas=1,
        endpoints=[Endpoint(f"127.0.0.1:{port}", "pid:1", True)],
    )
    Journal(store).emit(model, message="1 replica(s) serving")
    stale_engine, new_engine = RecordingRuntime(replica_alive), RecordingRuntime(replica_alive)
    stale = hosting_instance(store, "hosting-a", stale_engine, tmp_path)
    assert stale.claim(model.id)
    stale.replicas[model.id] = [Replica("pid:1", f"127.0.0.1:{port}")]

    time.sleep(TTL + 0.2)  # hosting-a stalls past its lease; hosting-b takes the deployment
    successor = hosting_instance(store, "hosting-b", new_engine, tmp_path)
    assert successor.claim(model.id)
    assert successor.held[model.id].generation == stale.held[model.id].generation + 1
    before = snapshot(store, model.id)

    with caplog.at_level(logging.WARNING, logger="hosting"):
        stale.check(model.id)  # hosting-a wakes up and does its health round

    assert snapshot(store, model.id) == before, "the stale instance wrote nothing"
    assert stale_engine.calls == [], "the stale instance neither stopped nor started a replica"
    assert model.id not in stale.held and model.id not in stale.replicas, "it stopped watching the deployment"
    assert any("lost the lease on a deployment" in r.getMessage() for r in caplog.records)
    assert successor.leases.holder_of(LEASE + model.id) == "hosting-b"

    # The new holder's round goes through: the same finding, written (and the replica restarted) once.
    successor.replicas[model.id] = [Replica("pid:1", f"127.0.0.1:{port}")]
    successor.check(model.id)
    state, events = snapshot(store, model.id)
    assert state == "unhealthy" and events[-1][0] == before[1][-1][0] + (2 if not replica_alive else 1)
    assert [c[0] for c in new_engine.calls] == ([] if replica_alive else ["stop", "start"])
    store.engine.dispose()


def test_a_fenced_deployment_event_is_refused_in_its_own_transaction(database_url):
    """The journal's write itself: with a lease taken over between the holder's last renewal and its write,
    neither the model's new state nor the event lands."""
    store = Store(database_url)
    model = HostedModel(id="hm_2", name="m", version="1", state="healthy")
    journal = Journal(store)
    journal.emit(model, message="serving")
    a, b = Leases(store.engine, TTL, "a"), Leases(store.engine, TTL, "b")
    old = a.acquire(LEASE + model.id)
    assert old is not None
    journal.emit(model, "unhealthy", "replica 0 down", fence=lambda s: a.check(s, old))  # held: written
    time.sleep(TTL + 0.2)
    assert b.acquire(LEASE + model.id) is not None
    with pytest.raises(LeaseLost):
        journal.emit(model, "healthy", "stale", fence=lambda s: a.check(s, old))
    assert snapshot(store, model.id) == ("unhealthy", [(1, "healthy", "serving"), (2, "unhealthy", "replica 0 down")])
    store.engine.dispose()


@pytest.mark.parametrize("state", ["building", "deploying"])
def test_work_a_dead_instance_left_in_progress_is_failed_by_another(database_url, tmp_path, state):
    """hosting-a packages (or rolls out) a model and dies: while it renews its work's lease nobody touches the
    model; once the lease expired (and nothing was written for two lease periods) hosting-b fails it, with the
    reason, and removes its smoke-test (or rollout) replicas: it is never left in progress for ever."""
    store = Store(database_url)
    a_engine, b_engine = RecordingRuntime(True), RecordingRuntime(True)
    a = hosting_instance(store, "hosting-a", a_engine, tmp_path)
    b = hosting_instance(store, "hosting-b", b_engine, tmp_path)
    a.journal.working, b.journal.working = a, b
    model = HostedModel(id="hm_2", name="water", version="1", runtime="local")
    a.journal.emit(model, state, f"{state} on hosting-a")
    assert a.leases.holder_of(WORK + model.id) == "hosting-a"
    b_engine.serving = {model.id: ["pid:7"]}

    deadline = time.monotonic() + 3 * TTL
    while time.monotonic() < deadline:  # hosting-a lives: its keeper renews the lease
        a._keep_leases()
        assert b.abandoned(store.all()) == []
        time.sleep(TTL / 4)
    assert store.get(model.id).state == state and b_engine.calls == []

    time.sleep(2 * TTL + 0.2)  # hosting-a died: its lease expires, nothing is written
    assert b.abandoned(store.all()) == [model.id]
    failed = store.get(model.id)
    again = "deploy it again" if state == "deploying" else "package the model again"
    assert (
        failed.state == "failed" and failed.state_message == f"the hosting instance it was {state} on stopped; {again}"
    )
    assert ("discard_trials", model.id) in b_engine.calls
    assert (("stop", "pid:7") in b_engine.calls) == (state == "deploying")
    assert b.leases.holder_of(WORK + model.id) == "", "the work's lease is given back"
    assert b.abandoned(store.all()) == [], "failed once"
    store.engine.dispose()


# -- orchestrator -----------------------------------------------------------------------------------------------


def orchestrator(tmp_path, database_url: str, holder: str) -> RunManager:
    """An orchestrator's run manager on the shared instance: the PostgreSQL database, or SQLite in one home. It
    launches no run, so it keeps no spare worker: two spares importing Dagster at once made the steps between
    orch-b taking a lease and the test reading it outlast the lease's 0.6 s on a busy 2-core machine (CI)."""
    env = {"CONSTELLATION_HOME": str(tmp_path / "home"), "CONSTELLATION_ORCHESTRATOR_SPARE_WORKER": "0"}
    if database_url.startswith("postgresql"):
        env["CONSTELLATION_DAGSTER_POSTGRES_URL"] = database_url
    settings = OrchestratorSettings.from_env(env)
    leases = Leases(lease_engine(settings), TTL, holder)
    return RunManager(open_instance(settings), settings, StorageRoots.from_env({}), leases=leases, lease_renew_s=1)


def dead_worker_run(run_id: str) -> DagsterRun:
    """A started run whose worker (a pid of this host that has exited) is gone."""
    worker = subprocess.Popen(["true"])
    worker.wait()
    gone = worker.pid
    tags = {
        ORCHESTRATOR_TAG: "1",
        RUN_ID_TAG: run_id,
        PID_TAG: str(gone),
        HOST_TAG: socket.gethostname(),
        START_TAG: "1",
    }
    return DagsterRun(job_name="water", run_id=dagster_run_id(run_id), tags=tags, status=DagsterRunStatus.STARTED)


def test_an_orchestrator_that_lost_a_runs_lease_neither_settles_nor_reexecutes_it(database_url, tmp_path, caplog):
    stale, successor = orchestrator(tmp_path, database_url, "orch-a"), orchestrator(tmp_path, database_url, "orch-b")
    try:
        run = stale.instance.add_run(dead_worker_run("run_fenced"))
        assert isinstance(stale._own("run_fenced"), Lease)
        time.sleep(TTL + 0.2)  # orch-a stalls past its lease; orch-b takes the run
        assert successor._own("run_fenced") is not None
        events_before = len(stale.instance.all_logs(run.run_id))
        runs_before = len(stale.instance.get_runs())

        with caplog.at_level(logging.WARNING, logger="orchestrator.runs"):
            # orch-a wakes up: its reaper saw the worker exit, and its keeper wanted to re-execute the run
            stale.launcher.settle(run.run_id, "its worker process exited with code 1")
            with pytest.raises(LeaseLost):
                stale._reexecute(run)

        after = stale.instance.get_run_by_id(run.run_id)
        assert after is not None and after.status == DagsterRunStatus.STARTED, "not marked failed by orch-a"
        assert NEXT_TAG not in after.tags, "no re-execution chained by orch-a"
        assert len(stale.instance.all_logs(run.run_id)) == events_before
        assert len(stale.instance.get_runs()) == runs_before
        assert "run_fenced" not in stale.owned(), "orch-a stopped owning it"
        assert any("lease this orchestrator lost" in r.getMessage() for r in caplog.records)
        assert stale.leases.holder_of(LEASE_PREFIX + "run_fenced") == "orch-b"

        # The owner's write goes through (through its own instance and launcher).
        successor.launcher.settle(run.run_id, "its worker process exited with code 1")
        settled = successor.instance.get_run_by_id(run.run_id)
        assert settled is not None and settled.status not in ACTIVE and settled.status == DagsterRunStatus.FAILURE
    finally:
        for manager in (stale, successor):
            manager.close()
            manager.instance.dispose()
