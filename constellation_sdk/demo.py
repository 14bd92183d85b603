"""`make demo`: map surface water in a real Landsat 7 scene, from a plain-language goal, through the gateway.

1. starts the mesh on embedded defaults unless one is running (SQLite, local files, offline planner;
   hosting uses Docker when an engine answers, local processes otherwise);
2. registers the Olinda scene and every model folder under examples/models;
3. asks the agent to plan "map surface water in the Olinda scene" and stores the plan as a pipeline;
4. runs it: core deploys the model, the orchestrator tiles, infers, stitches, vectorizes and exports,
   and the run's events stream here live;
5. prints the output files and a summary: tiles, water area, time per stage.

Running it again reuses what is registered and deployed. `--json` prints the summary as JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import grpc

from constellation.agent.v1 import agent_pb2
from constellation.core.v1 import core_pb2
from constellation_sdk import Client, catalog, mesh_process, outputs, watch

ROOT = Path(__file__).resolve().parent.parent
SCENE = ROOT / "examples" / "data" / "L7_ETMs.tif"
MODELS = ROOT / "examples" / "models"
PROMPT = "map surface water in the Olinda scene"


def start_mesh(wait_s: float = 30.0) -> dict:
    """The running local mesh's state, after starting one if none runs.

    A mesh whose processes all run is kept, and the demo waits up to `wait_s` for every part to answer SERVING: on
    a busy machine a part may miss one health probe (its own check of a dependency timed out), and replacing the
    mesh for that would stop the user's mesh and drop its TLS. A mesh with a part that has died is restarted, with
    TLS when it had TLS."""
    paths = mesh_process.MeshPaths(mesh_process.config.home_dir())
    state = mesh_process.read_state(paths)
    report = mesh_process.status() if state else {}
    deadline = time.monotonic() + wait_s
    while report and all(part["running"] for part in report.values()):
        waiting = [name for name, part in report.items() if not part["serving"]]
        if state and not waiting:
            return state
        if time.monotonic() > deadline:
            raise SystemExit(
                f"the mesh in {paths.home} runs, but {', '.join(waiting)} did not answer SERVING within "
                f"{wait_s:.0f} s: see `constellation status` and the logs in {paths.logs}, or restart it with "
                "`constellation down`"
            )
        time.sleep(0.5)
        report = mesh_process.status()
    tls = bool(state and state.get("tls_dir"))
    if state:
        mesh_process.down()
    print(f"starting the mesh on embedded defaults{' with TLS' if tls else ''} (state in {paths.home})...", flush=True)
    try:
        return mesh_process.up(tls=tls)
    except (RuntimeError, ValueError) as error:  # ValueError: settings that do not fit
        raise SystemExit(str(error)) from None


def register(client: Client, scene: Path) -> dict[str, str]:
    """Registers the scene and the example models; model ids by name."""
    dataset = catalog.scene_dataset(
        scene, "olinda-landsat7", ["blue", "green", "red", "nir", "swir1", "swir2"], sensor="landsat-7",
        description="Landsat 7 ETM+ over Olinda, Brazil: coast, ocean and rivers", tags=["coast", "water", "sample"],
    )  # fmt: skip
    dataset = catalog.ensure_dataset(client.core, dataset)
    print(
        f"dataset  {dataset.id}  {dataset.name}: {dataset.sensor}, {len(dataset.bands)} bands, "
        f"{dataset.resolution_m:g} m"
    )
    models = catalog.ensure_models(client.core, MODELS)
    for model in models:
        print(f"model    {model.id}  {model.name}:{model.version} reads {', '.join(model.input.bands)}")
    return {model.name: model.id for model in models}


def plan(client: Client, prompt: str, model_id: str = "") -> core_pb2.Pipeline:
    print(f'\nasking the agent: "{prompt}"' + (" (model fixed by --model)" if model_id else ""))
    answer = client.agent.PlanPipeline(agent_pb2.PlanPipelineRequest(prompt=prompt, model_id=model_id))
    for kind, candidates in (("dataset", answer.recommendation.datasets), ("model", answer.recommendation.models)):
        for rank, candidate in enumerate(candidates[:3], 1):
            print(
                f"  {kind} #{rank} {candidate.name:<22} score {candidate.score:.2f}  {'; '.join(candidate.reasons[:2])}"
            )
    for reason in answer.rationale:
        print(f"  plan: [{reason.block_id}] {reason.reason}")
    check = client.core.ValidatePipeline(core_pb2.ValidatePipelineRequest(spec=answer.spec))
    if not check.valid:
        problems = "; ".join(f"{p.field}: {p.description}" for p in check.problems)
        raise SystemExit(f"the agent's plan does not validate: {problems}")
    digest = hashlib.sha256(answer.spec.SerializeToString(deterministic=True)).hexdigest()[:8]
    pipeline = catalog.ensure_pipeline(client.core, f"olinda-water-{digest}", answer.spec, description=prompt)
    print(f"pipeline {pipeline.id}  {pipeline.name}: {' -> '.join(check.topological_order)}")
    return pipeline


def summarize(report: watch.RunReport, pipeline: core_pb2.Pipeline, client: Client) -> dict:
    summary = report.as_dict()
    model_ids = [b.model.model_id for b in pipeline.spec.blocks if b.WhichOneof("config") == "model"]
    summary["models"] = [client.core.GetModel(core_pb2.GetModelRequest(id=i)).name for i in model_ids]
    mask = next((o for o in report.run.outputs if o.media_type.startswith("image/tiff")), None)
    path = outputs.local_path(mask.uri) if mask else None
    if path is not None and path.exists():
        summary["water_km2"], summary["water_pixels"] = outputs.mask_area_km2(path)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument(
        "--scene", type=Path, default=SCENE, help="a 6-band Landsat 7 GeoTIFF (default: the Olinda sample)"
    )
    parser.add_argument(
        "--model", default="", help="use this example model (e.g. ndwi-water) instead of the agent's pick"
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON at the end")
    parser.add_argument(
        "--live",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars (default: when stdout is a terminal)",
    )
    args = parser.parse_args(argv)
    state = start_mesh()
    gateway, tls_dir = state["processes"]["gateway"]["address"], mesh_process.tls_dir_of(state)
    print(f"gateway  {gateway}")
    for line in mesh_process.announce_credentials(state):
        print(line)
    with Client(gateway, tls_dir=tls_dir) as client:
        client.wait_ready()
        try:
            models = register(client, args.scene)
            if args.model and args.model not in models:
                raise SystemExit(f"--model {args.model}: not one of the example models ({', '.join(models)})")
            pipeline = plan(client, args.prompt, models.get(args.model, ""))
            run = client.core.RunPipeline(core_pb2.RunPipelineRequest(pipeline_id=pipeline.id))
        except grpc.RpcError as error:
            raise SystemExit(f"{error.code().name}: {error.details()}") from None
        print(f"\nrun      {run.id}  (watch again: constellation runs watch {run.id})")
        blocks = [(b.id, b.WhichOneof("config") or "") for b in pipeline.spec.blocks]
        with watch.make_view(blocks, args.live) as view:
            report = watch.follow(client.core, run.id, view.event, pipeline.spec)
        summary = summarize(report, pipeline, client)
    print(
        f"\nrun {report.state}"
        + (f" ({report.failure_source}): {report.run.state_message}" if report.state != "succeeded" else "")
    )
    for output in report.run.outputs:
        print(f"  {output.name:<28} {output.uri}")
    if report.state == "succeeded":
        water = (
            f"{summary['water_km2']:.2f} km² of water ({summary['water_pixels']} px)"
            if "water_km2" in summary
            else "no local mask to measure"
        )
        print(f"\n{report.tiles} tiles, {water}")
        print(
            "time per stage: "
            + ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in report.stage_seconds.items())
        )
    if args.json:
        print(json.dumps(summary, indent=2))
    print("\nstop the mesh: make down")
    return 0 if report.state == "succeeded" else 1


if __name__ == "__main__":
    os.environ.setdefault("CONSTELLATION_LOG_FORMAT", "json")
    sys.exit(main())
