"""The main job under compose vs under `constellation up`, on the same scene, model and plan.

    .venv/bin/python bench/compose.py [--runs 3]

Compose: a stack of its own (project name, ports, volumes; tests/test_compose.py's Stack), built with
scripts/compose_prepare.sh; the scene in its S3 store, each run in its own container (DockerRunLauncher),
outputs to S3. Baseline, in the same process: `constellation up` with hosting on Docker (temp home, free ports,
SQLite, local files). On each: the Olinda scene, ndwi-water, the agent's plan, run `--runs` times through the
gateway; the first run deploys the model (cold), the others reuse it (warm). Printed: wall time from
RunPipeline to the run's last event, cold and the median of the warm runs, and compose ÷ up.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from constellation.agent.v1 import agent_pb2
from constellation.core.v1 import core_pb2
from constellation.hosting.v1 import hosting_pb2
from constellation_sdk import Client, catalog, mesh_process, watch
from tests.conftest import TEST_API_KEY, mesh_env
from tests.test_compose import BANDS, MODEL, SCENE, Stack, register_and_plan


def timed_runs(client: Client, pipeline_id: str, runs: int) -> list[float]:
    seconds = []
    for _ in range(runs):
        start = time.monotonic()
        run = client.core.RunPipeline(core_pb2.RunPipelineRequest(pipeline_id=pipeline_id))
        report = watch.follow(client.core, run.id, lambda _event: None)
        assert report.state == "succeeded", report.run.state_message
        seconds.append(time.monotonic() - start)
    return seconds


def under_up(runs: int) -> list[float]:
    with tempfile.TemporaryDirectory() as home:
        env = mesh_env(Path(home), docker=True)
        state = mesh_process.up(env)
        try:
            with Client(state["processes"]["gateway"]["address"], api_key=TEST_API_KEY) as client:
                client.wait_ready(30)
                dataset = catalog.scene_dataset(SCENE, "olinda-landsat7", BANDS, sensor="landsat-7")
                catalog.ensure_dataset(client.core, dataset)
                model = catalog.ensure_model(
                    client.core, catalog.model_from_folder(ROOT / "examples" / "models" / MODEL)
                )
                answer = client.agent.PlanPipeline(
                    agent_pb2.PlanPipelineRequest(prompt="map surface water in the Olinda scene", model_id=model.id)
                )
                pipeline = catalog.ensure_pipeline(client.core, "olinda-water-bench", answer.spec)
                seconds = timed_runs(client, pipeline.id, runs)
                client.hosting.StopDeployments(hosting_pb2.StopDeploymentsRequest(), timeout=120)
                return seconds
        finally:
            mesh_process.down(env)


def under_compose(runs: int) -> list[float]:
    subprocess.run([str(ROOT / "scripts" / "compose_prepare.sh")], cwd=ROOT, check=True)
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(Path(tmp))
        try:
            stack.up(build=True)
            with stack.client() as client:
                pipeline = register_and_plan(client, stack.s3)
                seconds = timed_runs(client, pipeline.id, runs)
                client.hosting.StopDeployments(hosting_pb2.StopDeploymentsRequest(), timeout=120)
                return seconds
        finally:
            stack.remove()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs on each mesh (the first deploys the model)")
    args = parser.parse_args()
    results = {"up": under_up(args.runs), "compose": under_compose(args.runs)}
    for name, seconds in results.items():
        warm = statistics.median(seconds[1:]) if len(seconds) > 1 else float("nan")
        each = ", ".join(f"{s:.1f}" for s in seconds)
        print(f"{name:<8} cold {seconds[0]:6.1f} s   warm median {warm:6.1f} s   ({each})")
    up, compose = results["up"], results["compose"]
    print(f"compose / up: cold {compose[0] / up[0]:.2f}x", end="")
    if args.runs > 1:
        print(f", warm {statistics.median(compose[1:]) / statistics.median(up[1:]):.2f}x")
    else:
        print()


if __name__ == "__main__":
    main()
