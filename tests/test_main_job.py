"""The main job end to end, through the Envoy gateway, on real processes: `make demo`'s flow on the local
runtime and on Docker, the quality of what it writes, and the ways a run can go wrong.

Each mesh is `constellation up` in a temp home with free ports (SQLite, local files, offline planner).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import rasterio
import yaml
from rasterio.warp import transform_geom
from shapely.geometry import shape

from constellation.common.v1 import common_pb2 as c
from constellation.core.v1 import core_pb2
from constellation.hosting.v1 import hosting_pb2
from constellation_sdk import Client, catalog, mesh_process, watch
from tests.conftest import mesh_env

ROOT = Path(__file__).resolve().parent.parent
SCENE = ROOT / "examples" / "data" / "L7_ETMs.tif"
NDWI = ROOT / "examples" / "models" / "ndwi-water"
E = c.RunEventType


def run_demo(env: dict[str, str], *args: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "constellation_sdk.demo", "--json", "--no-live", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    print(result.stdout[-4000:])
    assert result.returncode == 0, f"demo failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    start, end = result.stdout.index("\n{\n"), result.stdout.rindex("\n}\n")
    return {**json.loads(result.stdout[start : end + 2]), "stdout": result.stdout}


def processes_of(home: Path) -> list[str]:
    """Command lines of live processes started for the mesh in `home` (services, run workers, model replicas)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (proc / "environ").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and (str(home) in cmdline or f"CONSTELLATION_HOME={home}".encode() in environ):
            found.append(cmdline)
    return found


@pytest.fixture(scope="module")
def local_mesh(tmp_path_factory):
    """A mesh whose hosting has no Docker engine: models run as local processes."""
    home = tmp_path_factory.mktemp("local-mesh")
    env = mesh_env(home, docker=False)
    state = mesh_process.up(env)
    try:
        with Client(state["processes"]["gateway"]["address"]) as client:
            client.wait_ready()
            yield {"env": env, "client": client}
    finally:
        mesh_process.down(env)
    assert not processes_of(home), f"`constellation down` left processes behind: {processes_of(home)}"


def independent_water(path: Path, model: str) -> np.ndarray:
    """Water computed straight from the file's digital numbers, the way each model defines it: NDWI > 0 for
    ndwi-water; NDWI > 0 and MNDWI > 0 (green above nir and swir1) for water-mlp, the rule it was trained on."""
    with rasterio.open(path) as scene:
        green, nir, swir1 = (scene.read(i).astype(np.float64) for i in (2, 4, 5))
    ndwi = np.divide(green - nir, green + nir, out=np.full_like(green, -1.0), where=green + nir != 0)
    if model == "ndwi-water":
        return ndwi > 0
    assert model == "water-mlp", model
    return (ndwi > 0) & (green > swir1)


def check_outputs(summary: dict) -> None:
    files = {
        Path(o["uri"].removeprefix("file://")).suffix: Path(o["uri"].removeprefix("file://"))
        for o in summary["outputs"]
        if "profile=stac" not in o["media_type"]
    }
    assert set(files) == {".tif", ".png", ".geojson"}, summary["outputs"]
    with rasterio.open(files[".tif"]) as mask, rasterio.open(SCENE) as scene:
        assert (
            mask.crs == scene.crs
            and mask.transform == scene.transform
            and (mask.width, mask.height) == (scene.width, scene.height)
        )
        assert mask.profile.get("tiled") and mask.overviews(1) is not None
        water = mask.read(1) > 0.5
        pixel_m2 = abs(mask.transform.a * mask.transform.e)
    [model] = summary["models"]
    expected = independent_water(SCENE, model)
    iou = np.logical_and(water, expected).sum() / np.logical_or(water, expected).sum()
    assert iou >= 0.99, f"IoU of {model}'s mask with an independent computation is {iou:.4f}"
    assert summary["water_pixels"] == int(water.sum())
    polygons = json.loads(files[".geojson"].read_text())
    # GeoJSON is in WGS 84 (RFC 7946); areas are measured back in the scene's projected CRS.
    area = sum(shape(transform_geom("EPSG:4326", scene.crs, f["geometry"])).area for f in polygons["features"])
    mask_area = water.sum() * pixel_m2
    assert abs(area - mask_area) / mask_area < 0.05, f"GeoJSON {area / 1e6:.2f} km² vs mask {mask_area / 1e6:.2f} km²"
    from PIL import Image

    preview = np.asarray(Image.open(files[".png"]).convert("RGB")).astype(int)
    assert preview.shape[:2] == water.shape
    # Water is painted in the overlay colour; land shows the scene, not a flat fill.
    assert preview[water].mean(axis=0)[2] > 200 and preview[~water].std() > 10
    check_stac(summary, files[".tif"])


def check_stac(summary: dict, cog: Path) -> None:
    """The run's STAC items: valid offline, assets on the real files, lineage naming the run and pipeline, the
    model's MLM item matching its manifest; the COG passes rio-cogeo's validator."""
    from rio_cogeo.cogeo import cog_validate

    from tests.stac_schemas import assert_valid

    valid, errors, _ = cog_validate(str(cog))
    assert valid, errors
    stac = {o["name"]: Path(o["uri"].removeprefix("file://")) for o in summary["outputs"] if "stac" in o["media_type"]}
    item = json.loads(stac["item_stac"].read_text())
    assert_valid(item)
    data = {Path(o["uri"].removeprefix("file://")) for o in summary["outputs"] if "stac" not in o["media_type"]}
    assert {Path(a["href"].removeprefix("file://")) for a in item["assets"].values()} == data
    props = item["properties"]
    assert props["constellation:run_id"] == summary["run_id"] and props["constellation:pipeline_id"].startswith("pl_")
    assert props["constellation:pipeline_name"].startswith("olinda-water-")
    assert props["proj:code"] == "EPSG:31985"
    [model_name] = summary["models"]
    [model_path] = [path for name, path in stac.items() if name.startswith("model_")]
    model_item = json.loads(model_path.read_text())
    assert_valid(model_item)
    manifest = yaml.safe_load((ROOT / "examples" / "models" / model_name / "constellation.yaml").read_text())
    mlm = model_item["properties"]
    assert mlm["mlm:name"] == manifest["name"] and mlm["constellation:version"] == manifest["version"]
    assert mlm["mlm:input"][0]["bands"] == manifest["input"]["bands"]
    size = manifest["input"]["tile_size_px"]
    assert mlm["mlm:input"][0]["input"]["shape"] == [-1, len(manifest["input"]["bands"]), size, size]
    assert mlm["mlm:input"][0]["value_scaling"][0]["minimum"] == manifest["input"]["value_range"][0]
    assert mlm["mlm:input"][0]["value_scaling"][0]["maximum"] == manifest["input"]["value_range"][1]
    assert [(o["name"], o["result"]["shape"][1:]) for o in mlm["mlm:output"]] == [
        (o["name"], o["shape"]) for o in manifest["outputs"]
    ]
    assert {link["href"] for link in item["links"] if link["rel"] == "derived_from"} >= {f"file://{model_path}"}


def check_stream(client: Client, run_id: str, runtime: str, model: str) -> None:
    events = list(client.core.WatchRun(core_pb2.WatchRunRequest(run_id=run_id)))
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    sources = [e.source for e in events]
    assert {"core", "hosting", "orchestrator"} <= set(sources)
    assert sources.index("hosting") < sources.index("orchestrator"), "models are deployed before the job runs"
    deployments = [e.message for e in events if e.type == E.RUN_EVENT_TYPE_DEPLOYMENT]
    assert any("healthy" in m or "already serving" in m for m in deployments), deployments
    progress = [e for e in events if e.type == E.RUN_EVENT_TYPE_STEP_PROGRESS and e.progress.unit == "tiles"]
    assert progress and progress[-1].progress.done == progress[-1].progress.total > 0
    assert events[-1].type == E.RUN_EVENT_TYPE_RUN_SUCCEEDED and events[-1].state == c.RUN_STATE_SUCCEEDED
    status = next(m for m in client.hosting.ListModels(hosting_pb2.ListModelsRequest()).models if m.model_name == model)
    assert status.runtime == (hosting_pb2.RUNTIME_DOCKER if runtime == "docker" else hosting_pb2.RUNTIME_LOCAL)


def test_demo_maps_water_on_the_local_runtime(local_mesh):
    """The agent's own pick for the Olinda scene: the six-band learned model, trained on Landsat 7."""
    summary = run_demo(local_mesh["env"])
    assert summary["state"] == "succeeded" and summary["tiles"] > 0
    assert summary["models"] == ["water-mlp"]
    assert "km² of water" in summary["stdout"] and "time per stage: deploy" in summary["stdout"]
    check_outputs(summary)
    check_stream(local_mesh["client"], summary["run_id"], "local", "water-mlp")
    # Running it again reuses the deployment and the stored pipeline.
    again = run_demo(local_mesh["env"])
    assert again["state"] == "succeeded" and again["run_id"] != summary["run_id"]
    assert again["stage_seconds"]["deploy"] < summary["stage_seconds"]["deploy"]


@pytest.fixture
def recorded_home(tmp_path, monkeypatch):
    """A mesh home whose state names one part, `core`: a live `sleep` process (so the demo sees it running) at the
    address of a real health server the test sets, and records of `up` and `down` instead of a mesh."""
    from concurrent import futures

    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    from constellation_sdk import demo

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    part = subprocess.Popen(["sleep", "120"])
    paths = mesh_process.MeshPaths(tmp_path)
    paths.state.parent.mkdir(parents=True, exist_ok=True)

    def write_state(pid: int, tls_dir: str = "") -> dict:
        state = {
            "home": str(tmp_path),
            "tls_dir": tls_dir,
            "processes": {"core": {"pid": pid, "address": f"127.0.0.1:{port}"}},
        }
        paths.state.write_text(json.dumps(state))
        return state

    calls: list[tuple] = []
    monkeypatch.setenv("CONSTELLATION_HOME", str(tmp_path))
    monkeypatch.setattr(mesh_process, "up", lambda **kwargs: calls.append(("up", kwargs)) or {"started": True})
    real_down = mesh_process.down
    monkeypatch.setattr(mesh_process, "down", lambda: calls.append(("down",)) or real_down())
    status = health_pb2.HealthCheckResponse
    yield {"demo": demo, "servicer": health_servicer, "status": status, "part": part, "paths": paths,
           "write_state": write_state, "calls": calls}  # fmt: skip
    part.kill()
    part.wait()
    server.stop(0)


def test_the_demo_waits_for_a_running_mesh_that_missed_a_probe_instead_of_replacing_it(recorded_home):
    """A busy part may answer NOT_SERVING for a moment (its own check of a dependency timed out): the demo waits
    for it and keeps the mesh, whose restart would drop its TLS (the demo's restart had done so in CI)."""
    h = recorded_home
    state = h["write_state"](h["part"].pid)
    h["servicer"].set("", h["status"].NOT_SERVING)
    threading.Timer(1.5, h["servicer"].set, ("", h["status"].SERVING)).start()
    started = time.monotonic()
    assert h["demo"].start_mesh(wait_s=30) == state
    assert time.monotonic() - started >= 1.5
    assert h["calls"] == [] and h["part"].poll() is None and h["paths"].state.exists()


def test_the_demo_names_a_running_part_that_stays_unhealthy_and_leaves_the_mesh_alone(recorded_home):
    h = recorded_home
    h["write_state"](h["part"].pid)
    h["servicer"].set("", h["status"].NOT_SERVING)
    with pytest.raises(SystemExit) as stopped:
        h["demo"].start_mesh(wait_s=1)
    message = str(stopped.value)
    assert "core did not answer SERVING within 1 s" in message and "constellation down" in message
    assert h["calls"] == [] and h["part"].poll() is None


def test_the_demo_restarts_a_mesh_with_a_dead_part_keeping_its_tls(recorded_home):
    h = recorded_home
    h["part"].kill()
    h["part"].wait()
    h["write_state"](h["part"].pid, tls_dir="/some/certs")
    assert h["demo"].start_mesh(wait_s=30) == {"started": True}
    assert h["calls"] == [("down",), ("up", {"tls": True})]
    assert not h["paths"].state.exists()  # down cleared the stale state


def test_demo_maps_water_on_the_docker_runtime_with_ndwi(tmp_path):
    """The demo with the model fixed to NDWI, whose mask must equal an independent NDWI of the same pixels."""
    from tests.hosting_support import require_docker

    require_docker()
    env = mesh_env(tmp_path / "home", docker=True)
    try:
        summary = run_demo(env, "--model", "ndwi-water")
        assert summary["models"] == ["ndwi-water"]
        check_outputs(summary)
        state = mesh_process.read_state(mesh_process.MeshPaths(tmp_path / "home"))
        with Client(state["processes"]["gateway"]["address"]) as client:
            check_stream(client, summary["run_id"], "docker", "ndwi-water")
    finally:
        mesh_process.down(env)


# --------------------------------------------------------------------------- when things go wrong


def model_variant(tmp_path: Path, name: str, model_code: str, tile_size: int = 256) -> Path:
    """A copy of ndwi-water under another name, with its model.py replaced."""
    folder = tmp_path / name
    shutil.copytree(NDWI, folder)
    manifest = yaml.safe_load((folder / "constellation.yaml").read_text())
    manifest["name"] = name
    manifest["input"]["tile_size_px"] = tile_size
    manifest["outputs"][0]["shape"] = [1, tile_size, tile_size]
    manifest.pop("example_input", None)
    (folder / "constellation.yaml").write_text(yaml.safe_dump(manifest))
    (folder / "model.py").write_text(model_code)
    return folder


SLOW_MODEL = """
import os, time
import grpc
import numpy as np

class NdwiWater:
    def load(self):
        pass

    def predict(self, batch):
        time.sleep(0.4)
        green, nir = batch[:, 0:1], batch[:, 1:2]
        total = green + nir
        ndwi = np.divide(green - nir, total, out=np.zeros_like(total), where=total != 0)
        return (1.0 / (1.0 + np.exp(-10 * ndwi))).astype(np.float32)
"""


def water_pipeline(mesh: dict, name: str, folder: Path, tile: int = 256) -> core_pb2.Pipeline:
    client = mesh["client"]
    dataset = catalog.ensure_dataset(
        client.core,
        catalog.scene_dataset(SCENE, "olinda", ["blue", "green", "red", "nir", "swir1", "swir2"], sensor="landsat-7"),
    )
    model = catalog.ensure_model(client.core, catalog.model_from_folder(folder))
    out = f"file://{mesh['env']['CONSTELLATION_HOME']}"
    blocks = [
        c.Block(id="scene", dataset=c.DatasetBlock(dataset_id=dataset.id, bands=["green", "nir"])),
        c.Block(id="tiles", tile=c.TileBlock(tile_size_px=tile, normalization=c.NORMALIZATION_REFLECTANCE)),
        c.Block(id="water", model=c.ModelBlock(model_id=model.id, batch_size=1, max_concurrency=1)),
        c.Block(id="mosaic", stitch=c.StitchBlock(blend=c.BLEND_MODE_MEAN)),
        c.Block(id="export", export=c.ExportBlock(uri=out + "/outputs", formats=[c.EXPORT_FORMAT_COG])),
    ]
    edges = [
        c.Edge(source_block_id=a, target_block_id=b)
        for a, b in [("scene", "tiles"), ("tiles", "water"), ("water", "mosaic"), ("mosaic", "export")]
    ]
    return catalog.ensure_pipeline(client.core, name, c.PipelineSpec(blocks=blocks, edges=edges))


def follow_in_background(client: Client, run_id: str, spec: c.PipelineSpec) -> tuple[threading.Thread, dict, list]:
    seen: list[c.RunEvent] = []
    result: dict = {}
    thread = threading.Thread(
        target=lambda: result.update(report=watch.follow(client.core, run_id, seen.append, spec)), daemon=True
    )
    thread.start()
    return thread, result, seen


def wait_until(predicate, timeout_s: float = 120, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_a_model_that_fails_to_deploy_fails_the_run_with_hostings_reason(local_mesh, tmp_path):
    client = local_mesh["client"]
    broken = model_variant(tmp_path, "broken-water", "raise ImportError('weights file missing: water.bin')\n")
    pipeline = water_pipeline(local_mesh, "broken", broken)
    run = client.core.RunPipeline(core_pb2.RunPipelineRequest(pipeline_id=pipeline.id))
    thread, result, seen = follow_in_background(client, run.id, pipeline.spec)
    thread.join(timeout=180)
    assert not thread.is_alive(), "the stream never ended"
    report = result["report"]
    assert report.state == "failed" and report.failure_source == "hosting"
    assert (
        "broken-water:1.0.0 failed to package" in report.run.state_message and "water.bin" in report.run.state_message
    )
    assert seen[-1].type == E.RUN_EVENT_TYPE_RUN_FAILED and not any(e.source == "orchestrator" for e in seen)
    model = client.core.ListModels(core_pb2.ListModelsRequest(filter='name = "broken-water"')).models[0]
    assert model.state == core_pb2.MODEL_STATE_FAILED and "water.bin" in model.state_message


def _replica_pid(address: str) -> int:
    port = address.rsplit(":", 1)[1]
    out = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True).stdout
    return int(out.split("pid=")[1].split(",")[0])


@pytest.fixture(scope="module")
def slow_models(tmp_path_factory) -> Path:
    """Where the slow model variants live; tests that share a name share one packaging and deployment."""
    return tmp_path_factory.mktemp("slow-models")


def slow_model(folder: Path, name: str) -> Path:
    """A slow copy of NDWI (64 px tiles, 0.4 s a tile) named `name`, made once per folder."""
    return folder / name if (folder / name).exists() else model_variant(folder, name, SLOW_MODEL, tile_size=64)


def slow_run_in_inference(mesh: dict, folder: Path, model_name: str):
    """A run of slow_model(`model_name`), followed in the background, once its model step has answered a
    tile; with the hosted model's status."""
    client = mesh["client"]
    pipeline = water_pipeline(mesh, f"run-{model_name}", slow_model(folder, model_name), tile=64)
    run = client.core.RunPipeline(core_pb2.RunPipelineRequest(pipeline_id=pipeline.id))
    thread, result, seen = follow_in_background(client, run.id, pipeline.spec)
    wait_until(
        lambda: any(e.type == E.RUN_EVENT_TYPE_STEP_PROGRESS and e.progress.done > 0 for e in seen),
        what="inference to start",
    )
    status = next(
        m for m in client.hosting.ListModels(hosting_pb2.ListModelsRequest()).models if m.model_name == model_name
    )
    return run, thread, result, seen, status


def test_a_killed_endpoint_is_restarted_and_the_run_finishes_with_both_on_the_stream(local_mesh, slow_models):
    _, thread, result, seen, status = slow_run_in_inference(local_mesh, slow_models, "slow-water")
    os.kill(_replica_pid(status.endpoints[0].address), signal.SIGKILL)
    thread.join(timeout=240)
    assert not thread.is_alive(), "the stream never ended"
    report = result["report"]
    messages = [(e.source, e.message) for e in seen]
    assert any(s == "hosting" and "exited; restarted" in m for s, m in messages), messages[-30:]
    waited = any("retrying in" in e.message for e in seen)  # the model step waited for the replica
    assert waited or any(e.type == E.RUN_EVENT_TYPE_STEP_RETRY for e in seen) or report.state == "failed", messages[
        -30:
    ]
    assert report.state in ("succeeded", "failed")
    if report.state == "failed":
        assert report.failure_source == "orchestrator" and "slow-water:1.0.0" in report.run.state_message


def test_an_endpoint_deleted_mid_run_fails_the_run_with_a_clear_message(local_mesh, slow_models):
    client = local_mesh["client"]
    _, thread, result, seen, status = slow_run_in_inference(local_mesh, slow_models, "doomed-water")
    client.hosting.DeleteModel(hosting_pb2.DeleteModelRequest(model_id=status.model_id))
    thread.join(timeout=300)
    assert not thread.is_alive(), "the stream never ended"
    report = result["report"]
    assert report.state == "failed", report.as_dict()
    assert report.failure_source == "orchestrator" and "doomed-water:1.0.0" in report.run.state_message, (
        report.as_dict()
    )
    assert any(e.source == "hosting" and "deleted" in e.message for e in seen)
    print("failure message:", report.run.state_message)


def test_cancel_reaches_the_orchestrator_and_ends_the_stream(local_mesh, slow_models):
    client = local_mesh["client"]
    run, thread, result, seen, _ = slow_run_in_inference(local_mesh, slow_models, "slow-water")
    canceled = client.core.CancelRun(core_pb2.CancelRunRequest(id=run.id))
    assert canceled.state == c.RUN_STATE_CANCELING
    thread.join(timeout=120)
    assert not thread.is_alive(), "the stream never ended"
    assert result["report"].state == "canceled"
    assert (
        any(e.type == E.RUN_EVENT_TYPE_RUN_CANCELING for e in seen) and seen[-1].type == E.RUN_EVENT_TYPE_RUN_CANCELED
    )
    assert not any(e.type == E.RUN_EVENT_TYPE_STEP_SUCCEEDED and e.block_id == "water" for e in seen), (
        "the model step was not stopped"
    )
    listed = client.core.ListRuns(core_pb2.ListRunsRequest(filter='state = "canceled"')).runs
    assert run.id in [r.id for r in listed]


# --------------------------------------------------------------------------- the same job by hand, with the CLI


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(Path(sys.executable).parent / "constellation"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_cli_does_each_step_by_hand_with_json(local_mesh, tmp_path):
    env = local_mesh["env"]
    added = cli(
        env,
        "datasets",
        "add",
        "olinda-cli",
        str(SCENE),
        "--bands",
        "blue,green,red,nir,swir1,swir2",
        "--sensor",
        "landsat-7",
        "--json",
    )
    assert added.returncode == 0, added.stderr
    dataset = json.loads(added.stdout)
    assert dataset["name"] == "olinda-cli" and dataset["resolution_m"] == pytest.approx(28.5)
    again = cli(env, "datasets", "add", "olinda-cli", str(SCENE), "--bands", "blue,green,red,nir,swir1,swir2")
    assert again.returncode == 1 and "ALREADY_EXISTS" in again.stderr and "olinda-cli" in again.stderr
    wrong = cli(env, "datasets", "add", "olinda-3", str(SCENE), "--bands", "green,nir")
    assert wrong.returncode == 2 and "6 band(s)" in wrong.stderr
    registered = cli(
        env, "models", "register", str(model_variant(tmp_path, "cli-water", (NDWI / "model.py").read_text())), "--json"
    )
    assert registered.returncode == 0, registered.stderr
    deployed = cli(env, "models", "deploy", "cli-water", "--runtime", "local", "--json")
    assert deployed.returncode == 0, deployed.stderr
    assert json.loads(deployed.stdout)["state"] == "DEPLOYMENT_STATE_HEALTHY"
    listed = json.loads(cli(env, "models", "list", "--json").stdout)
    assert next(m for m in listed if m["name"] == "cli-water")["deployment"] == "healthy"
    planned = cli(env, "plan", "map surface water with cli-water in olinda-cli", "--save", "cli-plan", "--json")
    assert planned.returncode == 0, planned.stderr
    pipeline_id = json.loads(planned.stdout)["pipeline_id"]
    ran = cli(env, "run", pipeline_id, "--json")
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr
    lines = ran.stdout.strip().splitlines()
    report = json.loads(lines[-1])
    assert report["state"] == "succeeded" and len(lines) > 10  # one JSON event per line, then the report
    fetched = cli(env, "runs", "outputs", report["run_id"], "--dest", str(tmp_path / "out"), "--json")
    assert fetched.returncode == 0, fetched.stderr
    # The raster, preview and polygons, and their STAC Items (item.json, model-<id>.json).
    assert {Path(r["path"]).suffix for r in json.loads(fetched.stdout)} == {".tif", ".png", ".geojson", ".json"}
    assert all(Path(r["path"]).is_file() for r in json.loads(fetched.stdout))
    done = cli(env, "runs", "cancel", report["run_id"])
    assert done.returncode == 1 and "FAILED_PRECONDITION" in done.stderr and "already ended" in done.stderr
    missing = cli(env, "runs", "watch", "run_nope")
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr


def test_the_readme_sdk_example_runs_as_written(local_mesh, capsys):
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("The same flow with the SDK:") :]
    code = section[section.index("```python\n") + 10 : section.index("\n```", section.index("```python\n"))]
    gateway = mesh_process.read_state(mesh_process.MeshPaths(Path(local_mesh["env"]["CONSTELLATION_HOME"])))[
        "processes"
    ]["gateway"]["address"]
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        exec(compile(code.replace('Client("localhost:8080")', f'Client("{gateway}")'), "README.md", "exec"), {})
    finally:
        os.chdir(cwd)
    assert "succeeded {" in capsys.readouterr().out


def test_a_restarted_core_resumes_the_run_and_its_stream(local_mesh, slow_models):
    """Core stops mid-run (SIGTERM, as in an upgrade); a new core picks the run up where the stream left off."""
    client, env = local_mesh["client"], local_mesh["env"]
    pipeline = water_pipeline(local_mesh, "run-slow-water", slow_model(slow_models, "slow-water"), tile=64)
    run = client.core.RunPipeline(core_pb2.RunPipelineRequest(pipeline_id=pipeline.id))
    seen: list[c.RunEvent] = []
    for event in client.core.WatchRun(core_pb2.WatchRunRequest(run_id=run.id)):
        seen.append(event)
        if event.type == E.RUN_EVENT_TYPE_STEP_PROGRESS and event.progress.done > 0:
            break
    paths = mesh_process.MeshPaths(Path(env["CONSTELLATION_HOME"]))
    state = mesh_process.read_state(paths)
    assert mesh_process._stop_pid(state["processes"]["core"]["pid"], 15.0)
    with open(paths.logs / "core.log", "ab") as log:
        core = subprocess.Popen(
            [sys.executable, "-m", "core_svc"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    state["processes"]["core"]["pid"] = core.pid
    paths.state.write_text(json.dumps(state))  # so the fixture's `down` stops the new core
    wait_until(lambda: Client(state["processes"]["core"]["address"]).serving(), 60, "the new core")
    report = watch.follow(client.core, run.id, spec=pipeline.spec)  # through the gateway, from the start
    assert report.state == "succeeded", report.as_dict()
    events = list(client.core.WatchRun(core_pb2.WatchRunRequest(run_id=run.id)))
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert events[: len(seen)] == seen, "what was streamed before the restart is replayed unchanged"
    steps = [e.block_id for e in events if e.type == E.RUN_EVENT_TYPE_STEP_SUCCEEDED]
    assert sorted(steps) == sorted({b.id for b in pipeline.spec.blocks}), (
        "every step once: no orchestrator event lost or doubled"
    )


def test_the_demo_runs_on_a_mesh_with_api_keys(tmp_path):
    """With CONSTELLATION_API_KEYS set, every hop needs a key: the user's to the gateway, and the services'
    own to each other (agent -> core, core -> hosting and orchestrator)."""
    env = {**mesh_env(tmp_path / "home", docker=False), "CONSTELLATION_API_KEYS": "admin-key,reader-key:reader"}
    try:
        summary = run_demo({**env, "CONSTELLATION_API_KEY": "admin-key"})
        assert summary["state"] == "succeeded" and summary["water_pixels"] > 0
        gateway = mesh_process.read_state(mesh_process.MeshPaths(tmp_path / "home"))["processes"]["gateway"]["address"]
        with Client(gateway, api_key="reader-key") as reader:
            assert reader.core.GetRun(core_pb2.GetRunRequest(id=summary["run_id"])).state == c.RUN_STATE_SUCCEEDED
            pipeline_id = reader.core.GetRun(core_pb2.GetRunRequest(id=summary["run_id"])).pipeline_id
            with pytest.raises(grpc.RpcError) as denied:
                reader.core.RunPipeline(core_pb2.RunPipelineRequest(pipeline_id=pipeline_id))
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        mesh_process.down(env)
