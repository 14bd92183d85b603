"""How long a run waits for its worker process: the orchestrator's spare worker against a worker started per run.

    .venv/bin/python bench/run_start.py [--runs 5] [--pause 3] [--scene examples/data/L7_ETMs.tif]

Two fresh meshes (temp home, free ports, SQLite, local runtime), one with CONSTELLATION_ORCHESTRATOR_SPARE_WORKER
off (the baseline: a worker started when the run is launched) and one with it on (the default). Each registers
the scene (default the demo's Olinda scene) and runs the agent's "map surface water" plan once to deploy the
model, then `--runs` times, `--pause` seconds apart (a user starting runs one at a time). Per mesh: the median
time from the orchestrator's "Starting the run's worker process" to the run's RUN_STARTED (the orchestrator's
clock for both), the median run wall time as the client waited, and the spare's resident memory while it waits.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run_stages import water_plan  # noqa: E402
from constellation.common.v1 import common_pb2 as c  # noqa: E402
from constellation.core.v1 import core_pb2  # noqa: E402
from constellation_sdk import Client, catalog, mesh_process, watch  # noqa: E402
from tests.conftest import TEST_API_KEY, mesh_env  # noqa: E402


def spare_rss_mib(home: Path) -> float:
    """The resident memory of this mesh's waiting spare worker (0 when there is none)."""
    wanted = f"CONSTELLATION_HOME={home}".encode()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if b"--spare" in (proc / "cmdline").read_bytes().split(b"\0") and wanted in (
                proc / "environ"
            ).read_bytes().split(b"\0"):
                line = next(x for x in (proc / "status").read_text().splitlines() if x.startswith("VmRSS:"))
                return int(line.split()[1]) / 1024
        except (OSError, StopIteration):
            continue
    return 0.0


def measure(spare: bool, scene: Path, runs: int, pause_s: float) -> tuple[list[float], list[float], float]:
    """(worker start seconds per run, wall seconds per run, the spare's RSS in MiB before the last run)."""
    home = Path(tempfile.mkdtemp(prefix="bench-start-"))
    env = {**mesh_env(home), "CONSTELLATION_ORCHESTRATOR_SPARE_WORKER": "1" if spare else "0"}
    env["CONSTELLATION_DATA_ROOTS"] += f",{scene.parent}"
    state = mesh_process.up(env)
    starts, walls, rss = [], [], 0.0
    try:
        with Client(state["processes"]["gateway"]["address"], api_key=TEST_API_KEY) as client:
            client.wait_ready()
            plan, _ = water_plan(client, scene, "water-mlp")
            pipeline = catalog.ensure_pipeline(client.core, "start", plan)
            for k in range(runs + 1):  # the first deploys the model
                time.sleep(pause_s)
                rss = spare_rss_mib(home) if spare else 0.0
                began = time.monotonic()
                run = client.core.RunPipeline(core_pb2.RunPipelineRequest(pipeline_id=pipeline.id))
                marks: dict[str, float] = {}

                def mark(event: c.RunEvent, marks: dict[str, float] = marks) -> None:
                    at = event.time.seconds + event.time.nanos / 1e9
                    if event.source == "orchestrator" and event.message.startswith("Starting the run's worker"):
                        marks.setdefault("launched", at)
                    elif event.type == c.RUN_EVENT_TYPE_RUN_STARTED:
                        marks.setdefault("started", at)

                report = watch.follow(client.core, run.id, on_event=mark, spec=pipeline.spec)
                if report.state != "succeeded":
                    raise SystemExit(f"run {report.state}: {report.run.state_message}")
                if k:
                    walls.append(time.monotonic() - began)
                    starts.append(marks["started"] - marks["launched"])
    finally:
        mesh_process.down(env)
        shutil.rmtree(home, ignore_errors=True)
    return starts, walls, rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--pause", type=float, default=3.0, help="seconds between runs")
    parser.add_argument("--scene", type=Path, default=ROOT / "examples" / "data" / "L7_ETMs.tif")
    args = parser.parse_args()
    results = {spare: measure(spare, args.scene.resolve(), args.runs, args.pause) for spare in (False, True)}
    print(f"{args.runs} runs of the water plan on {args.scene.name}, {args.pause:g} s apart, local runtime")
    print(f"{'worker':<22} {'start s (median)':>17} {'wall s (median)':>16} {'spare RSS MiB':>14}")
    for spare, (starts, walls, rss) in results.items():
        name = "spare (default)" if spare else "started per run"
        print(f"{name:<22} {statistics.median(starts):>17.2f} {statistics.median(walls):>16.2f} {rss:>14.0f}")
    (base_start, base_wall), (start, wall) = (
        (statistics.median(s), statistics.median(w)) for s, w, _ in (results[False], results[True])
    )
    print(f"spare ÷ started per run: start {start / base_start:.2f}x, wall {wall / base_wall:.2f}x")
    print(
        "start = the orchestrator's 'Starting the run's worker process' to RUN_STARTED; wall = RunPipeline to the end"
    )


if __name__ == "__main__":
    main()
