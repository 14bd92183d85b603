"""The demo's run stage on a large scene, split by stage, on the local and Docker runtimes side by side.

    .venv/bin/python bench/run_stages.py [--size 2048] [--runtimes local,docker] [--runs 2] [--scenes DIR]
    .venv/bin/python bench/run_stages.py --size 8192,16384 --runs 2 --runtimes local --scenes /tmp/scenes

For each runtime: a fresh mesh (temp home, free ports, SQLite), the mirrored-mosaic scene from
scripts/make_scenes.py registered as a dataset, the agent's plan for "map surface water" run
`--runs` times through the gateway. The first run deploys the model (cold: packaging + start), later
runs reuse it (warm). Stage times come from the run's own event stream (deploy = run start to job
launch; ingest = dataset + tile steps; infer = model step; stitch; export = vectorize + export); their sum is
the run's "total", and "wall" is the whole run as the client waited for it (the stages, the worker starting
and the steps' hand-overs).

Baselines, measured in the same process: the same model in-process over the same tiles (read,
convert, predict), so `infer tiles/s ÷ in-process tiles/s` is the price of the mesh; and a plain
single-process script doing the raster part of the job the straightforward rasterio way (windowed
read -> the same model in-process -> tiled GeoTIFF -> overviews), against which a warm run's total is
given as a ratio (target <= 2x), next to export ÷ infer (target <= 1) and the worker's peak memory
(VmHWM, recorded on the orchestrator's run). With two sizes (`--size 8192,16384`) it also prints
time and peak-memory ratios of the larger scene to the smaller (targets <= 4.4 and <= 1.5 for 4x
the pixels). `--model` picks the example model (default water-mlp, the demo's pick; ndwi-water is
the other). Scenes are made once (scripts/make_scenes.py) in `--scenes` (default build/scenes;
put a 16384² scene, 1 GB, under /tmp).
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from constellation.agent.v1 import agent_pb2
from constellation.common.v1 import common_pb2 as c
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


def plain_baseline(scene: Path, folder: Path, out: Path, tile: int = 256, batch: int = 8) -> tuple[float, float]:
    """(raster seconds, overview seconds) of the straightforward single-process script: read each window of
    the model's bands, predict it in-process, write the prediction into a tiled float32 GeoTIFF; then build
    its overviews (2x to 32x, average)."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.windows import Window

    from model_runtime.manifest import load_manifest
    from model_runtime.server import LoadedModel

    manifest = load_manifest(folder)
    model = LoadedModel(folder, manifest)
    model.load()
    output = manifest.outputs[0]
    indexes = [BANDS.index(b) + 1 for b in manifest.bands]
    started = time.perf_counter()
    with rasterio.open(scene) as src:
        profile = {
            "driver": "GTiff", "width": src.width, "height": src.height, "count": output.shape[0],
            "dtype": "float32", "crs": src.crs, "transform": src.transform, "nodata": src.nodata,
            "tiled": True, "blockxsize": tile, "blockysize": tile,
        }  # fmt: skip
        windows = [Window(x, y, tile, tile) for y in range(0, src.height, tile) for x in range(0, src.width, tile)]
        with rasterio.open(out, "w", **profile) as dst:
            for i in range(0, len(windows), batch):
                chunk = windows[i : i + batch]
                tiles = np.stack([src.read(indexes, window=w, boundless=True, fill_value=0) for w in chunk])
                inputs = tiles.astype(np.float32) / 10000 if manifest.dtype == "FP32" else tiles.astype(np.uint8)
                for window, predicted in zip(chunk, model.predict(inputs)[output.name], strict=True):
                    h, w = min(tile, src.height - int(window.row_off)), min(tile, src.width - int(window.col_off))
                    dst.write(
                        predicted[:, :h, :w].astype(np.float32), window=Window(window.col_off, window.row_off, w, h)
                    )
    raster_s = time.perf_counter() - started
    started = time.perf_counter()
    with rasterio.open(out, "r+") as dst:
        dst.build_overviews([2, 4, 8, 16, 32], Resampling.average)
    return raster_s, time.perf_counter() - started


def worker_peak_rss_kib(env: dict[str, str], run_id: str, wait_s: float = 30.0) -> int:
    """The peak memory the run's worker process recorded on the orchestrator's Dagster run as it exited."""
    from dagster import DagsterInstance
    from dagster._core.instance.ref import InstanceRef

    from orchestrator_svc.launcher import MAX_RSS_TAG
    from orchestrator_svc.runs import dagster_run_id
    from orchestrator_svc.settings import OrchestratorSettings

    home = OrchestratorSettings.from_env(env).dagster_home
    with DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
        deadline = time.monotonic() + wait_s
        while True:
            run = instance.get_run_by_id(dagster_run_id(run_id))
            if run is not None and MAX_RSS_TAG in run.tags:
                return int(run.tags[MAX_RSS_TAG])
            if time.monotonic() > deadline:
                return 0
            time.sleep(0.2)


def water_plan(client: Client, scene: Path, model_name: str) -> tuple[c.PipelineSpec, dict[str, str]]:
    """The scene registered as a dataset and the example models as models, and the agent's plan for "map surface
    water" over them with `model_name`: (the plan, model ids by name)."""
    dataset = catalog.ensure_dataset(
        client.core, catalog.scene_dataset(scene, scene.stem, BANDS, sensor="landsat-7", tags=["water"])
    )
    ids = {model.name: model.id for model in catalog.ensure_models(client.core, MODELS)}
    request = agent_pb2.PlanPipelineRequest(
        prompt="map surface water", dataset_id=dataset.id, model_id=ids.get(model_name, "")
    )
    return client.agent.PlanPipeline(request).spec, ids


def bench_runtime(runtime: str, scene: Path, runs: int, model_name: str) -> list[tuple[watch.RunReport, int]]:
    home = Path(tempfile.mkdtemp(prefix=f"bench-{runtime}-"))
    env = {**mesh_env(home, docker=runtime == "docker"), "CONSTELLATION_HEALTH_INTERVAL_S": "2"}
    env["CONSTELLATION_DATA_ROOTS"] += f",{scene.parent}"  # the generated scenes live under build/scenes
    state = mesh_process.up(env)
    reports = []
    try:
        with Client(state["processes"]["gateway"]["address"], api_key=TEST_API_KEY) as client:
            client.wait_ready()
            plan, _ = water_plan(client, scene, model_name)
            pipeline = catalog.ensure_pipeline(client.core, "bench", plan)
            for _ in range(runs):
                run = client.core.RunPipeline(core_pb2.RunPipelineRequest(pipeline_id=pipeline.id))
                report = watch.follow(client.core, run.id, spec=pipeline.spec)
                if report.state != "succeeded":
                    raise SystemExit(f"{runtime}: run {report.state}: {report.run.state_message}")
                reports.append((report, worker_peak_rss_kib(env, run.id)))
    finally:
        mesh_process.down(env)
        shutil.rmtree(home, ignore_errors=True)  # the mesh's home holds every run's outputs: GBs at 16384²
    return reports


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="2048", help="scene size in px; two, comma-separated, for the size ratios")
    parser.add_argument("--runtimes", default="local,docker")
    parser.add_argument("--runs", type=int, default=2, help="runs per runtime; the first one deploys the model")
    parser.add_argument(
        "--model", default="water-mlp", help="the example model to plan with (the demo's agent picks water-mlp)"
    )
    parser.add_argument("--scenes", type=Path, default=ROOT / "build" / "scenes", help="where scenes are made once")
    args = parser.parse_args()
    sizes = [int(s) for s in args.size.split(",") if s]
    runtimes = [r for r in args.runtimes.split(",") if r]
    if "docker" in runtimes:
        from hosting_svc.images import Engine

        if not Engine.available():
            print("no Docker engine answers: skipping the docker runtime")
            runtimes.remove("docker")
    warm: dict[tuple[str, int], tuple[float, int]] = {}  # (runtime, size) -> (best warm total s, its peak RSS KiB)
    for size in sizes:
        scene = make_scene(size, args.scenes / f"olinda-{size}.tif")
        baseline, tiles = in_process_tiles_per_s(scene, MODELS / args.model)
        with tempfile.TemporaryDirectory(prefix="bench-plain-") as scratch:
            raster_s, overviews_s = plain_baseline(scene, MODELS / args.model, Path(scratch) / "plain.tif")
        plain = raster_s + overviews_s
        print(
            f"scene {scene.name}: {size}x{size} px, {tiles} tiles of 256 px; {args.model} in-process "
            f"baseline {baseline:.0f} tiles/s; plain script {raster_s:.2f} s raster + {overviews_s:.2f} s overviews\n"
        )
        header = (
            f"{'runtime':<8} {'run':<5} {'total s':>8} "
            + " ".join(f"{s + ' s':>9}" for s in watch.STAGES)
            + f" {'infer share':>12} {'tiles/s':>8} {'÷ in-proc':>9} {'÷ plain':>8} {'exp÷inf':>8} {'peak MiB':>9}"
            + f" {'wall s':>7} {'wall÷plain':>10}"
        )
        print(header)
        for runtime in runtimes:
            for index, (report, rss_kib) in enumerate(bench_runtime(runtime, scene, args.runs, args.model)):
                stages = report.stage_seconds
                run_stage = sum(stages.values()) - stages["deploy"]
                share = stages["infer"] / run_stage if run_stage else 0.0
                rate = report.tiles / stages["infer"] if stages["infer"] else 0.0
                label = "cold" if index == 0 else "warm"
                total = sum(stages.values())
                export_ratio = stages["export"] / stages["infer"] if stages["infer"] else 0.0
                print(
                    f"{runtime:<8} {label:<5} {total:>8.2f} "
                    + " ".join(f"{stages[s]:>9.2f}" for s in watch.STAGES)
                    + f" {share:>12.0%} {rate:>8.0f} {rate / baseline:>9.2f} {total / plain:>8.2f}"
                    + f" {export_ratio:>8.2f} {rss_kib / 1024:>9.0f}"
                    + f" {report.total_seconds:>7.2f} {report.total_seconds / plain:>10.2f}"
                )
                if label == "warm" and total < warm.get((runtime, size), (math.inf, 0))[0]:
                    warm[(runtime, size)] = (total, rss_kib)
        print()
    print(
        "infer share = infer ÷ (ingest + infer + stitch + export); total = the stages' sum, deploy included; ÷ plain = "
        "total ÷ the plain script's raster + overviews (target <= 2 warm); exp÷inf = export ÷ infer (target <= 1); "
        "peak MiB = the run's worker process (VmHWM); wall = from RunPipeline to the run's end as this client saw it: "
        "the stages and what lies between them, mostly the run's worker process starting (about 2 s here, where each "
        "run follows the last at once; bench/run_start.py: 0.2 s with the spare worker ready for runs seconds apart)."
    )
    if len(sizes) == 2:
        small, large = sizes
        for runtime in runtimes:
            if (runtime, small) in warm and (runtime, large) in warm:
                (t0, m0), (t1, m1) = warm[(runtime, small)], warm[(runtime, large)]
                print(
                    f"{runtime}: best warm run {large}² ÷ {small}²: time {t1 / t0:.2f}x (target <= "
                    f"{4.4 * (large / small) ** 2 / 4:.1f}x), worker peak memory {m1 / m0:.2f}x (target <= 1.5x)"
                    if m0
                    else f"{runtime}: best warm run {large}² ÷ {small}²: time {t1 / t0:.2f}x; no peak memory recorded"
                )


if __name__ == "__main__":
    main()
