"""Many runs at once: N runs of the demo pipeline submitted together through the gateway.

    .venv/bin/python bench/load.py [--size 2048] [--runtimes local,docker] [--runs 8,16] [--replicas 1,2]

For each runtime: a fresh mesh (temp home, free ports, SQLite, default settings), the mirrored-mosaic
scene from scripts/make_scenes.py registered, the agent's plan for "map surface water". One run deploys
the model (cold), one more runs alone (warm: the baseline, measured in the same process). Then, for each
replica count and each N, N runs are submitted at once (one thread each: RunPipeline, then WatchRun to
the end) and the table says: runs that succeeded, whether every output equals the lone run's (pixels
of rasters, bytes of other files), the batch's wall time against N x the warm run, the p95 of the runs'
own latencies (submission to end), the most the model's replicas held in memory (Docker: the
container cgroup's max usage; local: the largest peak RSS, VmHWM, of a replica process) against the
manifest's limit, and whether the engine killed or restarted a replica.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
from docker import errors as docker_errors

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from constellation.agent.v1 import agent_pb2
from constellation.common.v1 import common_pb2 as c
from constellation.core.v1 import core_pb2
from constellation.hosting.v1 import hosting_pb2
from constellation_sdk import Client, catalog, mesh_process, watch
from model_runtime.manifest import load_manifest, memory_bytes
from scripts.make_scenes import make_scene
from tests.conftest import mesh_env

BANDS = ["blue", "green", "red", "nir", "swir1", "swir2"]
MODELS = ROOT / "examples" / "models"
MODEL = "water-mlp"  # the demo's pick


def output_digests(run: core_pb2.Run) -> dict[str, str]:
    """By output name: a digest of its pixels (rasters) or bytes (anything else). STAC items are left out: they name
    their run and when it ran."""
    import rasterio

    digests = {}
    for output in run.outputs:
        if "profile=stac" in output.media_type:
            continue
        path = Path(urlparse(output.uri).path)
        if path.suffix == ".tif":
            with rasterio.open(path) as raster:
                digests[output.name] = hashlib.sha256(np.ascontiguousarray(raster.read()).tobytes()).hexdigest()
        else:
            digests[output.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


class MemoryPeak:
    """The most memory any replica of the model held while it ran (see the module docstring)."""

    def __init__(self, runtime: str, replicas: list[tuple[int, str]], every_s: float = 0.5) -> None:
        self.runtime, self.every_s = runtime, every_s
        self.ports = [port for port, _ in replicas]
        self.peak_bytes = 0
        self.restarts = 0
        self.oom_killed = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._containers: list = []
        if runtime == "docker":
            import docker

            engine = docker.from_env()
            self._containers = [engine.containers.get(replica_id) for _, replica_id in replicas]
            self._start_counts = {c.id: c.attrs["RestartCount"] for c in self._containers}

    def __enter__(self) -> MemoryPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._read()
        for container in self._containers:
            try:
                container.reload()
            except docker_errors.NotFound:  # removed (hosting replaced it); what it was is no longer known
                continue
            self.oom_killed |= bool(container.attrs["State"]["OOMKilled"])
            self.restarts += container.attrs["RestartCount"] - self._start_counts[container.id]

    def _sample(self) -> None:
        while not self._stop.wait(self.every_s):
            self._read()

    def _read(self) -> None:
        if self.runtime == "docker":
            for container in self._containers:
                try:
                    stats = container.stats(stream=False)["memory_stats"]
                except docker_errors.APIError:
                    continue  # stopped or removed meanwhile
                self.peak_bytes = max(self.peak_bytes, stats.get("max_usage", 0), stats.get("usage", 0))
            return
        for pid in replica_pids(self.ports):
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue  # it exited meanwhile
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    self.peak_bytes = max(self.peak_bytes, int(line.split()[1]) * 1024)


def replica_pids(ports: list[int]) -> list[int]:
    """Local runtime: the model servers (`python -m model_runtime ... --port P`) serving these ports."""
    wanted = {str(p) for p in ports}
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in argv]
        # the server itself (python -m model_runtime ...), not the relay or sandbox wrapping it
        if args[1:3] == ["-m", "model_runtime"] and "--port" in args and args[args.index("--port") + 1] in wanted:
            pids.append(int(proc.name))
    return pids


@dataclass
class Batch:
    runs: int
    succeeded: int
    identical: int
    wall_s: float
    latencies_s: list[float]
    peak_bytes: int
    oom_killed: bool
    restarts: int
    queued_events: int  # RUN_QUEUED events with a place in core's queue, over all runs
    retried_runs: int  # runs that met a dead replica: their model step retried, or they waited for it to recover
    failures: list[str] = field(default_factory=list)

    @property
    def p95_s(self) -> float:
        return float(np.percentile(self.latencies_s, 95)) if self.latencies_s else 0.0


@dataclass
class Setup:
    """A mesh with the scene, the model and the demo pipeline, and the lone warm run's figures."""

    env: dict
    client: Client
    runtime: str
    pipeline: core_pb2.Pipeline
    model_id: str
    alone_s: float = 0.0
    alone_digests: dict[str, str] = field(default_factory=dict)


@dataclass
class Lone:
    report: watch.RunReport
    seconds: float  # submission to end
    queued: int  # RUN_QUEUED events with a place in core's queue
    retried: bool  # its model step waited for an endpoint and sent requests again or was retried, or the run
    # waited for an unhealthy model's replicas to answer before its model step


def one_run(client: Client, pipeline: core_pb2.Pipeline, inferring: threading.Event | None = None) -> Lone:
    """One run to its end; sets `inferring` once its model step has answered some tiles, not all."""
    started = time.monotonic()
    queued, retried = 0, False

    def count(event: c.RunEvent) -> None:
        nonlocal queued, retried
        queued += event.type == c.RUN_EVENT_TYPE_RUN_QUEUED and event.message.startswith("waiting for a place")
        retried |= (
            event.type == c.RUN_EVENT_TYPE_STEP_RETRY
            or "retrying in" in event.message
            or "is unhealthy on hosting; waiting" in event.message
        )
        progress = event.progress
        if inferring is not None and progress.unit == "tiles" and 0 < progress.done < progress.total:
            inferring.set()

    run = client.core.RunPipeline(core_pb2.RunPipelineRequest(pipeline_id=pipeline.id))
    report = watch.follow(client.core, run.id, spec=pipeline.spec, on_event=count)
    return Lone(report, time.monotonic() - started, queued, retried)


def set_up(runtime: str, scene: Path, home: Path | None = None, **env_extra: str) -> Setup:
    home = home or Path(tempfile.mkdtemp(prefix=f"load-{runtime}-"))
    env = {**mesh_env(home, docker=runtime == "docker"), "CONSTELLATION_HEALTH_INTERVAL_S": "2", **env_extra}
    env["CONSTELLATION_DATA_ROOTS"] += f",{scene.parent}"
    state = mesh_process.up(env)
    client = Client(state["processes"]["gateway"]["address"])
    try:
        client.wait_ready()
        dataset = catalog.ensure_dataset(
            client.core, catalog.scene_dataset(scene, scene.stem, BANDS, sensor="landsat-7", tags=["water"])
        )
        ids = {model.name: model.id for model in catalog.ensure_models(client.core, MODELS)}
        plan = client.agent.PlanPipeline(
            agent_pb2.PlanPipelineRequest(prompt="map surface water", dataset_id=dataset.id, model_id=ids[MODEL])
        )
        pipeline = catalog.ensure_pipeline(client.core, "load", plan.spec)
        setup = Setup(env, client, runtime, pipeline, ids[MODEL])
        for _ in range(2):  # cold (deploys the model), then warm: the baseline
            lone = one_run(client, pipeline)
            if lone.report.state != "succeeded":
                raise RuntimeError(f"{runtime}: the lone run {lone.report.state}: {lone.report.run.state_message}")
        setup.alone_s, setup.alone_digests = lone.seconds, output_digests(lone.report.run)
        return setup
    except BaseException:
        client.close()
        mesh_process.down(env)
        raise


def tear_down(setup: Setup) -> None:
    setup.client.close()
    mesh_process.down(setup.env)


def replicas(setup: Setup) -> list[tuple[int, str]]:
    """(port, replica id) of each of the model's replicas: the replica id is the container's on Docker."""
    status = setup.client.hosting.GetModelStatus(hosting_pb2.GetModelStatusRequest(model_id=hosted_id(setup)))
    return [(int(e.address.rsplit(":", 1)[1]), e.replica_id) for e in status.endpoints]


def hosted_id(setup: Setup) -> str:
    models = setup.client.hosting.ListModels(hosting_pb2.ListModelsRequest()).models
    return next(m.model_id for m in models if m.model_name == MODEL)


def scale(setup: Setup, replicas: int, timeout_s: float = 300) -> None:
    """Deploy the model with `replicas` replicas and wait until every one is healthy."""
    model_id = hosted_id(setup)
    status = setup.client.hosting.GetModelStatus(hosting_pb2.GetModelStatusRequest(model_id=model_id))
    setup.client.hosting.DeployModel(
        hosting_pb2.DeployModelRequest(model_id=model_id, replicas=replicas, runtime=status.runtime)
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = setup.client.hosting.GetModelStatus(hosting_pb2.GetModelStatusRequest(model_id=model_id))
        if sum(e.healthy for e in status.endpoints) == replicas and len(status.endpoints) == replicas:
            return
        time.sleep(1)
    raise TimeoutError(f"{replicas} replicas never became healthy: {status.state_message}")


def batch(setup: Setup, runs: int, during=None) -> Batch:
    """`runs` runs submitted at once; `during(setup, inferring)` (if given) runs in this thread while they do,
    `inferring` set once a run's model step is under way."""
    inferring = threading.Event()
    with MemoryPeak(setup.runtime, replicas(setup)) as memory, ThreadPoolExecutor(runs) as pool:
        started = time.monotonic()
        futures = [pool.submit(one_run, setup.client, setup.pipeline, inferring) for _ in range(runs)]
        if during is not None:
            during(setup, inferring)
        results = [f.result() for f in futures]
        wall = time.monotonic() - started
    ok = [lone.report for lone in results if lone.report.state == "succeeded"]
    return Batch(
        runs=runs,
        succeeded=len(ok),
        identical=sum(output_digests(r.run) == setup.alone_digests for r in ok),
        wall_s=wall,
        latencies_s=[lone.seconds for lone in results],
        peak_bytes=memory.peak_bytes,
        oom_killed=memory.oom_killed,
        restarts=memory.restarts,
        queued_events=sum(lone.queued for lone in results),
        retried_runs=sum(lone.retried for lone in results),
        failures=[
            f"{lone.report.run.id}: {lone.report.state}: {lone.report.run.state_message}"
            for lone in results
            if lone.report.state != "succeeded"
        ],
    )


def killed(result: Batch) -> str:
    """The engine's word on the replicas: OOM (killed for memory), Nx (restarted N times), - (neither)."""
    return ("OOM " if result.oom_killed else "") + (f"{result.restarts}x" if result.restarts else "-")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--runtimes", default="local,docker")
    parser.add_argument("--runs", default="8,16", help="comma-separated N: runs submitted at once")
    parser.add_argument("--replicas", default="1,2", help="comma-separated replica counts")
    args = parser.parse_args()
    scene = make_scene(args.size, ROOT / "build" / "scenes" / f"olinda-{args.size}.tif")
    limit = memory_bytes(str(load_manifest(MODELS / MODEL).resources.get("memory", "")))
    runtimes = [r for r in args.runtimes.split(",") if r]
    if "docker" in runtimes:
        from hosting_svc.images import Engine

        if not Engine.available():
            print("no Docker engine answers: skipping the docker runtime")
            runtimes.remove("docker")
    print(f"scene {scene.name}: {args.size}x{args.size} px; model {MODEL}, memory limit {limit >> 20} MiB\n")
    print(
        f"{'runtime':<8} {'repl':>4} {'N':>3} {'ok':>5} {'same':>5} {'wall s':>7} {'N×alone s':>9} {'ratio':>6} "
        f"{'p95 s':>6} {'peak MiB':>8} {'killed':>6} {'queued':>6}"
    )
    for runtime in runtimes:
        setup = set_up(runtime, scene)
        try:
            for replicas in [int(r) for r in args.replicas.split(",")]:
                if replicas > 1:
                    scale(setup, replicas)
                for n in [int(r) for r in args.runs.split(",")]:
                    result = batch(setup, n)
                    alone = n * setup.alone_s
                    print(
                        f"{runtime:<8} {replicas:>4} {n:>3} {result.succeeded:>2}/{n:<2} {result.identical:>5} "
                        f"{result.wall_s:>7.1f} {alone:>9.1f} {result.wall_s / alone:>6.2f} {result.p95_s:>6.1f} "
                        f"{result.peak_bytes / (1 << 20):>8.0f} "
                        f"{killed(result):>6} "
                        f"{result.queued_events:>6}",
                        flush=True,
                    )
                    for failure in result.failures:
                        print("   ", failure)
            print(f"{runtime}: one warm run alone took {setup.alone_s:.1f} s")
        finally:
            tear_down(setup)
    print(
        "\nratio = wall ÷ (N × one warm run alone, measured first in the same mesh); p95 = runs' submission-to-end "
        "latency; same = outputs identical to the lone run's; queued = RUN_QUEUED events with a place in core's queue"
    )


if __name__ == "__main__":
    main()
