"""The demo's run stage on a large scene, split by stage, on the local and Docker runtimes side by side.

    .venv/bin/python bench/run_stages.py [--size 2048] [--runtimes local,docker] [--runs 2]

For each runtime: a fresh mesh (temp home, free ports, SQLite), the mirrored-mosaic scene from
scripts/make_scenes.py registered as a dataset, the agent's plan for "map surface water" run
`--runs` times through the gateway. The first run deploys the model (cold: packaging + start), later
runs reuse it (warm). Stage times come from the run's own event stream (deploy = run start to job
launch; ingest = dataset + tile steps; infer = model step; stitch; export = vectorize + export).

Baseline, measured in the same process: the same model in-process over the same tiles (read,
convert, predict), so `infer tiles/s ÷ in-process tiles/s` is the price of the mesh. `--model`
picks the example model (default water-mlp, the demo's pick; ndwi-water is the other).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from constellation.agent.v1 import agent_pb2
from constellation.core.v1 import core_pb2
from constellation_sdk import Client, catalog, mesh_process, watch
from scripts.make_scenes import make_scene
from tests.conftest import TEST_API_KEY, mesh_env

BANDS = ["blue", "green", "red", "nir", "swir1", "swir2"]
MODELS = ROOT / "examples" / "models"


def in_process_tiles_per_s(scene: Path, folder: Path, tile: int = 256, batch: int = 8) -> tuple[float, int]:
    """The infer stage's work without the mesh: read the model's bands tile by tile, convert them the way the
    plan does (FP32 models get reflectance, digital numbers / 10000; UINT8 models the stored values), predict."""
    import rasterio
    from rasterio.windows import Window

    from model_runtime.manifest import load_manifest
    from model_runtime.server import LoadedModel

    manifest = load_manifest(folder)
    model = LoadedModel(folder, manifest)
    model.load()
    indexes = [BANDS.index(b) + 1 for b in manifest.bands]
    started = time.perf_counter()
    count = 0
    with rasterio.open(scene) as src:
        windows = [Window(x, y, tile, tile) for y in range(0, src.height, tile) for x in range(0, src.width, tile)]
        for i in range(0, len(windows), batch):
            tiles = np.stack(
                [src.read(indexes, window=w, boundless=True, fill_value=0) for w in windows[i : i + batch]]
            )
            model.predict(tiles.astype(np.float32) / 10000 if manifest.dtype == "FP32" else tiles.astype(np.uint8))
            count += len(tiles)
    return count / (time.perf_counter() - started), count


def bench_runtime(runtime: str, scene: Path, runs: int, model_name: str) -> list[watch.RunReport]:
    home = Path(tempfile.mkdtemp(prefix=f"bench-{runtime}-"))
    env = {**mesh_env(home, docker=runtime == "docker"), "CONSTELLATION_HEALTH_INTERVAL_S": "2"}
    env["CONSTELLATION_DATA_ROOTS"] += f",{scene.parent}"  # the generated scenes live under build/scenes
    state = mesh_process.up(env)
    reports = []
    try:
        with Client(state["processes"]["gateway"]["address"], api_key=TEST_API_KEY) as client:
            client.wait_ready()
            dataset = catalog.ensure_dataset(
                client.core, catalog.scene_dataset(scene, scene.stem, BANDS, sensor="landsat-7", tags=["water"])
            )
            ids = {model.name: model.id for model in catalog.ensure_models(client.core, MODELS)}
            request = agent_pb2.PlanPipelineRequest(
                prompt="map surface water", dataset_id=dataset.id, model_id=ids.get(model_name, "")
            )
            plan = client.agent.PlanPipeline(request)
            pipeline = catalog.ensure_pipeline(client.core, "bench", plan.spec)
            for _ in range(runs):
                run = client.core.RunPipeline(core_pb2.RunPipelineRequest(pipeline_id=pipeline.id))
                report = watch.follow(client.core, run.id, spec=pipeline.spec)
                if report.state != "succeeded":
                    raise SystemExit(f"{runtime}: run {report.state}: {report.run.state_message}")
                reports.append(report)
    finally:
        mesh_process.down(env)
    return reports


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--runtimes", default="local,docker")
    parser.add_argument("--runs", type=int, default=2, help="runs per runtime; the first one deploys the model")
    parser.add_argument(
        "--model", default="water-mlp", help="the example model to plan with (the demo's agent picks water-mlp)"
    )
    args = parser.parse_args()
    scene = make_scene(args.size, ROOT / "build" / "scenes" / f"olinda-{args.size}.tif")
    runtimes = [r for r in args.runtimes.split(",") if r]
    if "docker" in runtimes:
        from hosting_svc.images import Engine

        if not Engine.available():
            print("no Docker engine answers: skipping the docker runtime")
            runtimes.remove("docker")
    baseline, tiles = in_process_tiles_per_s(scene, MODELS / args.model)
    print(
        f"scene {scene.name}: {args.size}x{args.size} px, {tiles} tiles of 256 px; {args.model} in-process "
        f"baseline {baseline:.0f} tiles/s\n"
    )
    header = (
        f"{'runtime':<8} {'run':<5} {'total s':>8} "
        + " ".join(f"{s + ' s':>9}" for s in watch.STAGES)
        + f" {'infer share':>12} {'tiles/s':>8} {'÷ in-proc':>9}"
    )
    print(header)
    for runtime in runtimes:
        for index, report in enumerate(bench_runtime(runtime, scene, args.runs, args.model)):
            stages = report.stage_seconds
            run_stage = sum(stages.values()) - stages["deploy"]
            share = stages["infer"] / run_stage if run_stage else 0.0
            rate = report.tiles / stages["infer"] if stages["infer"] else 0.0
            label = "cold" if index == 0 else "warm"
            print(
                f"{runtime:<8} {label:<5} {sum(stages.values()):>8.2f} "
                + " ".join(f"{stages[s]:>9.2f}" for s in watch.STAGES)
                + f" {share:>12.0%} {rate:>8.0f} {rate / baseline:>9.2f}"
            )
    print("\ninfer share = infer ÷ (ingest + infer + stitch + export); total includes deploy.")


if __name__ == "__main__":
    main()
