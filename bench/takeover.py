"""Takeover time: how long a run goes undriven after the replica driving it is killed.

    .venv/bin/python bench/takeover.py [--kills 5]

A mesh of `constellation up --replicas 2` (two cores, two hostings, two orchestrators, two agents) on a
throwaway PostgreSQL, default lease settings (CONSTELLATION_LEASE_TTL_S, CONSTELLATION_LEASE_RENEW_S), the
sample scene and a slow copy of the NDWI model (2.5 s a 32 px tile: a run of about five minutes). While one
run is in its model step, `--kills` times: SIGKILL the core that holds the run's lease (the `leases` row
names its pid), time until another core holds it, start the killed one again on its port; then the same
for the hosting instance watching the model's deployment, and for the orchestrator owning the run (its
worker lives on and is adopted; the orchestrators' leases are on the Dagster instance's database). The
bound is the TTL plus one renew period (the survivor notices at its next look); the target is 10 s.
Afterwards the run must have succeeded with a gap-free, duplicate-free event stream.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from constellation.common.v1 import common_pb2 as c
from constellation.core.v1 import core_pb2
from constellation.hosting.v1 import hosting_pb2
from constellation_sdk import Client, mesh_process, watch
from mesh import config
from mesh.db import create_db_engine
from mesh.leases import Leases
from tests.conftest import mesh_env
from tests.pg import PostgresCluster, create_database
from tests.test_main_job import SLOW_MODEL, model_variant, water_pipeline

E = c.RunEventType


@dataclass
class Setup:
    env: dict[str, str]
    state: dict
    client: Client
    leases: Leases  # a reader of the cores' leases table (it holds none itself)
    orchestrator_leases: Leases  # the same, of the orchestrators' (on the Dagster instance's database)


def set_up(home: Path, admin_url: str, replicas: int = 2) -> Setup:
    env = mesh_env(home)
    # core and hosting on one database (their tables do not overlap; both keep leases in `leases`)
    env["DATABASE_URL"] = env["CONSTELLATION_HOSTING_DATABASE_URL"] = create_database(admin_url)
    env["CONSTELLATION_DAGSTER_POSTGRES_URL"] = create_database(admin_url)  # Dagster's tables and its own leases
    state = mesh_process.up(env, replicas=replicas)
    try:
        client = Client(state["processes"]["gateway"]["address"], api_key=env["CONSTELLATION_API_KEY"])
        client.wait_ready()
        settings = config.load("core", env)
        leases = Leases(create_db_engine(env["DATABASE_URL"]), settings.lease_ttl_s, "bench")
        dagster = Leases(create_db_engine(env["CONSTELLATION_DAGSTER_POSTGRES_URL"]), settings.lease_ttl_s, "bench")
    except BaseException:
        mesh_process.down(env)
        raise
    return Setup(env, state, client, leases, dagster)


def tear_down(setup: Setup) -> None:
    setup.client.close()
    setup.leases.engine.dispose()
    setup.orchestrator_leases.engine.dispose()
    mesh_process.down(setup.env)


def slow_pipeline(setup: Setup, folder: Path, sleep_s: float, tile: int) -> core_pb2.Pipeline:
    model = model_variant(folder, f"slow-{tile}", SLOW_MODEL.replace("time.sleep(0.4)", f"time.sleep({sleep_s})"), tile)
    return water_pipeline({"client": setup.client, "env": setup.env}, f"takeover-{tile}", model, tile=tile)


def run_lease(run_id: str) -> str:
    return f"run:{run_id}"


def orchestrator_lease(run_id: str) -> str:
    """The lease of the orchestrator owning the run (orchestrator_svc.runs.LEASE_PREFIX)."""
    return f"orchestrator-run:{run_id}"


def leases_of(setup: Setup, lease: str) -> Leases:
    return setup.orchestrator_leases if lease.startswith("orchestrator-") else setup.leases


def deployment_lease(setup: Setup, model_name: str) -> str:
    """The lease of the hosting instance watching the model's deployment."""
    listed = setup.client.hosting.ListModels(hosting_pb2.ListModelsRequest()).models
    return "deployment:" + next(m.model_id for m in listed if m.model_name == model_name)


def replica_of(setup: Setup, lease_holder: str) -> str:
    pid = int(lease_holder.rsplit("-", 2)[1])
    return next(name for name, entry in setup.state["processes"].items() if entry["pid"] == pid)


def kill_holder(setup: Setup, lease: str, timeout_s: float = 60.0) -> tuple[str, float]:
    """SIGKILL the replica holding `lease` (a core driving a run, a hosting watching a deployment, an
    orchestrator owning a run); (its name, seconds until another replica held the lease)."""
    leases = leases_of(setup, lease)
    old = leases.holder_of(lease)
    assert old, f"no replica holds {lease}"
    name = replica_of(setup, old)
    os.kill(setup.state["processes"][name]["pid"], signal.SIGKILL)
    killed = time.monotonic()
    while time.monotonic() - killed < timeout_s:
        now = leases.holder_of(lease)
        if now and now != old:
            return name, time.monotonic() - killed
        time.sleep(0.05)
    raise TimeoutError(f"no replica took {lease} within {timeout_s:.0f}s of killing {name}")


def restart(setup: Setup, name: str) -> None:
    """Start the killed replica again on its port, as an operator's supervisor would."""
    entry = setup.state["processes"][name]
    service = name.split("-")[0]
    env = dict(setup.env)
    for other in mesh_process.REPLICATED:
        env[f"CONSTELLATION_{other.upper()}_ADDR"] = ",".join(
            e["address"] for n, e in setup.state["processes"].items() if n.split("-")[0] == other
        )
    env[f"CONSTELLATION_{service.upper()}_PORT"] = entry["address"].rsplit(":", 1)[1]
    env[f"CONSTELLATION_{service.upper()}_METRICS_PORT"] = "0"
    with open(entry["log"], "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", f"{service}_svc"], env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    entry["pid"] = process.pid
    paths = mesh_process.MeshPaths(Path(setup.env["CONSTELLATION_HOME"]))
    paths.state.write_text(json.dumps(setup.state))  # so `down` stops the new one
    deadline = time.monotonic() + 60
    with Client(entry["address"]) as direct:
        while not direct.serving(timeout_s=1.0):
            assert time.monotonic() < deadline and process.poll() is None, f"{name} did not start again"
            time.sleep(0.1)


def check_stream(setup: Setup, run_id: str, spec: c.PipelineSpec) -> list[c.RunEvent]:
    """The run's whole stream: numbered 1..n, and every step succeeded exactly once."""
    events = list(setup.client.core.WatchRun(core_pb2.WatchRunRequest(run_id=run_id)))
    assert [e.sequence for e in events] == list(range(1, len(events) + 1)), "gaps or duplicates in the stream"
    steps = sorted(e.block_id for e in events if e.type == E.RUN_EVENT_TYPE_STEP_SUCCEEDED)
    assert steps == sorted(b.id for b in spec.blocks), f"a step lost or doubled: {steps}"
    upstream = [e.sequence for e in events if e.source == "orchestrator"]
    assert upstream, "no orchestrator event was forwarded"
    return events


def wait_for_inference(setup: Setup, run_id: str, timeout_s: float = 300.0) -> list[c.RunEvent]:
    """The run's events until its model step has answered a tile."""
    seen = []
    for event in setup.client.core.WatchRun(core_pb2.WatchRunRequest(run_id=run_id), timeout=timeout_s):
        seen.append(event)
        if event.type == E.RUN_EVENT_TYPE_STEP_PROGRESS and event.block_id == "water" and event.progress.done > 0:
            return seen
    raise AssertionError(f"the run ended before its model step answered: {seen[-1] if seen else None}")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=5)
    args = parser.parse_args()
    cluster = PostgresCluster().start()
    root = Path(tempfile.mkdtemp(prefix="bench-takeover-"))
    try:
        measure(cluster.admin_url, root, args.kills)
    finally:
        cluster.destroy()
        shutil.rmtree(root, ignore_errors=True)


def measure(admin_url: str, root: Path, kills: int) -> None:
    setup = set_up(root / "home", admin_url)
    try:
        settings = config.load("core", setup.env)
        pipeline = slow_pipeline(setup, root, sleep_s=2.5, tile=32)
        run = setup.client.core.RunPipeline(core_pb2.RunPipelineRequest(pipeline_id=pipeline.id))
        wait_for_inference(setup, run.id)
        times: dict[str, list[float]] = {"core": [], "hosting": [], "orchestrator": []}
        for i in range(kills):
            for service, lease in (
                ("core", run_lease(run.id)),
                ("hosting", deployment_lease(setup, "slow-32")),
                ("orchestrator", orchestrator_lease(run.id)),
            ):
                name, seconds = kill_holder(setup, lease)
                times[service].append(seconds)
                print(f"kill {i + 1}: {name} SIGKILLed, another replica held {lease} after {seconds:.2f} s", flush=True)
                restart(setup, name)
        report = watch.follow(setup.client.core, run.id, spec=pipeline.spec)
        events = check_stream(setup, run.id, pipeline.spec)
        bound = settings.lease_ttl_s + settings.lease_renew_s
        for service, seconds in times.items():
            print(
                f"{service} takeover over {len(seconds)} kills: p50 {percentile(seconds, 0.5):.2f} s, p95 "
                f"{percentile(seconds, 0.95):.2f} s, max {max(seconds):.2f} s (bound: TTL {settings.lease_ttl_s:g} s "
                f"+ renew {settings.lease_renew_s:g} s = {bound:g} s; target 10 s)"
            )
        print(f"the run {report.state} with {len(events)} events numbered 1..{len(events)}, every step once")
        if report.state != "succeeded":
            raise SystemExit(f"the run did not succeed: {report.run.state_message}")
    finally:
        tear_down(setup)


if __name__ == "__main__":
    main()
