"""Two branches of one pipeline against each branch alone, through a whole mesh, on the demo's scene.

    .venv/bin/python bench/branches.py [--size 8192] [--runs 3] [--scenes DIR]

A fresh mesh (temp home, free ports, SQLite, local runtime), the scripts/make_scenes.py mosaic of `--size`² px
registered as a dataset, and the agent's plan for "map surface water" with water-mlp (dataset -> tiles ->
water-mlp -> stitch -> vectorize -> export). Four pipelines over that dataset:
  model          the agent's plan
  index          dataset -> NDWI band math (index block) -> export (COG and preview)
  model+index    the agent's plan and the index branch from the same dataset block
  model+ndwi     the agent's plan and a second model branch from the same dataset block: tiles -> ndwi-water ->
                 stitch -> export (COG and preview)
Each runs once to deploy its models, then `--runs` times, interleaved. The figure is the median wall time of a
run, from RunPipeline to its end as the client waited for it, and its ratio to the slower of its branches run
alone (target <= 1.2); `ndwi` (ndwi-water's branch alone) is run for that ratio too. Each branch after the
dataset is its own chain of steps; the run's worker runs the two chains' steps at once, in threads
(orchestrator_svc.executor), on the cores the model endpoints use too, so the ratio says what a second branch
costs on top. CONSTELLATION_ORCHESTRATOR_MAX_PARALLEL_BRANCHES=1 in the environment runs them one after the
other instead (as before the threaded executor).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run_stages import water_plan
from constellation.common.v1 import common_pb2 as c
from constellation.core.v1 import core_pb2
from constellation_sdk import Client, catalog, mesh_process, watch
from scripts.make_scenes import make_scene
from tests.conftest import TEST_API_KEY, mesh_env


def with_branch(plan: c.PipelineSpec, branch: list[c.Block], export_uri: str) -> c.PipelineSpec:
    """`plan` and a chain of `branch` blocks fed by its dataset block, ending in an export (COG and preview)."""
    dataset = next(b.id for b in plan.blocks if b.HasField("dataset"))
    spec = c.PipelineSpec()
    spec.CopyFrom(plan)
    export = c.Block(
        id=f"{branch[-1].id}-out",
        export=c.ExportBlock(uri=export_uri, formats=[c.EXPORT_FORMAT_COG, c.EXPORT_FORMAT_PNG_PREVIEW]),
    )
    chain = [*branch, export]
    spec.blocks.extend(chain)
    ids = [dataset, *(b.id for b in chain)]
    spec.edges.extend(c.Edge(source_block_id=a, target_block_id=b) for a, b in zip(ids, ids[1:], strict=False))
    return spec


def alone(spec: c.PipelineSpec, keep_dataset_and: str) -> c.PipelineSpec:
    """The dataset block and the blocks whose id starts with `keep_dataset_and` (one branch of `spec`)."""
    keep = {b.id for b in spec.blocks if b.HasField("dataset") or b.id.startswith(keep_dataset_and)}
    return c.PipelineSpec(
        blocks=[b for b in spec.blocks if b.id in keep],
        edges=[e for e in spec.edges if e.source_block_id in keep and e.target_block_id in keep],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--scenes", type=Path, default=ROOT / "build" / "scenes", help="where scenes are made once")
    args = parser.parse_args()
    scene = make_scene(args.size, args.scenes.resolve() / f"olinda-{args.size}.tif")
    home = Path(tempfile.mkdtemp(prefix="bench-branches-"))
    env = {**mesh_env(home), "CONSTELLATION_HEALTH_INTERVAL_S": "2"}
    env["CONSTELLATION_DATA_ROOTS"] += f",{scene.parent}"
    out = f"file://{home}/outputs/branches"
    state = mesh_process.up(env)
    times: dict[str, list[float]] = {}
    try:
        with Client(state["processes"]["gateway"]["address"], api_key=TEST_API_KEY) as client:
            client.wait_ready()
            plan, ids = water_plan(client, scene, "water-mlp")
            tiles = next(b for b in plan.blocks if b.HasField("tile"))
            index = [c.Block(id="zindex", index=c.IndexBlock(preset=c.SPECTRAL_INDEX_NDWI))]
            ndwi = [
                c.Block(
                    id="zndwi-tiles",
                    tile=c.TileBlock(
                        tile_size_px=256, overlap_px=tiles.tile.overlap_px, normalization=c.NORMALIZATION_REFLECTANCE
                    ),
                ),
                c.Block(id="zndwi-model", model=c.ModelBlock(model_id=ids["ndwi-water"])),
                c.Block(id="zndwi-mosaic", stitch=c.StitchBlock(blend=c.BLEND_MODE_MEAN)),
            ]
            both_index, both_ndwi = with_branch(plan, index, out), with_branch(plan, ndwi, out)
            specs = {
                "model": plan,
                "index": alone(both_index, "zindex"),
                "ndwi": alone(both_ndwi, "zndwi"),
                "model+index": both_index,
                "model+ndwi": both_ndwi,
            }
            pipelines = {
                name: catalog.ensure_pipeline(client.core, f"branches-{name}", spec) for name, spec in specs.items()
            }

            def run(name: str) -> float:
                started = client.core.RunPipeline(core_pb2.RunPipelineRequest(pipeline_id=pipelines[name].id))
                report = watch.follow(client.core, started.id, spec=pipelines[name].spec)
                if report.state != "succeeded":
                    raise SystemExit(f"{name}: run {report.state}: {report.run.state_message}")
                return report.total_seconds

            for name in pipelines:  # deploys the models; GDAL and the page cache warm up
                run(name)
            for _ in range(args.runs):
                for name in pipelines:
                    times.setdefault(name, []).append(run(name))
    finally:
        mesh_process.down(env)
        shutil.rmtree(home, ignore_errors=True)
    median = {name: statistics.median(t) for name, t in times.items()}
    print(
        f"scene {args.size}² px, water-mlp plan, {args.runs} warm runs each, {os.cpu_count()} cores, "
        f"load {os.getloadavg()}"
    )
    print(f"{'pipeline':12} {'median s':>9}  runs (s)")
    for name, values in times.items():
        print(f"{name:12} {median[name]:9.2f}  {', '.join(f'{t:.2f}' for t in values)}")
    for both, other in (("model+index", "index"), ("model+ndwi", "ndwi")):
        slower = max(median["model"], median[other])
        print(f"{both} ÷ slower branch alone: {median[both] / slower:.2f} (target <= 1.2)")


if __name__ == "__main__":
    main()
