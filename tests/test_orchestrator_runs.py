"""Real runs: a 4-band GeoTIFF in S3 through a running KServe V2 endpoint, on SQLite and PostgreSQL Dagster
storage, with outputs checked against numpy; WatchRun order, resume and several watchers; cancel; retry after
the endpoint dies and comes back; a permanent endpoint failure; an orchestrator restart; the Dagster UI."""

from __future__ import annotations

import json
import os
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
import requests
from dagster._serdes import serialize_value
from sqlalchemy import make_url

from clients.roots import StorageRoots
from clients.storage import parse
from constellation.common.v1 import common_pb2 as c
from constellation.orchestrator.v1 import orchestrator_pb2 as pb
from mesh import config
from mesh.leases import Leases
from orchestrator_svc.instance import lease_engine, open_instance
from orchestrator_svc.launcher import ACTIVE, PID_TAG, log_path
from orchestrator_svc.runs import RunManager, dagster_run_id
from orchestrator_svc.settings import OrchestratorSettings
from tests.conftest import rpc_error
from tests.orchestrator_scenes import CRS, ndwi_probability
from tests.orchestrator_support import (  # noqa: F401 - fixtures
    Orchestrator,
    dagster_storage,
    ndwi_endpoint,
    orchestrator,
    orchestrator_env,
    s3_server,
    scene_512,
    slow_endpoint,
    water_request,
)
from tests.pg import free_port

E = c.RunEventType
CHAIN = ["scene", "tiles", "water", "mosaic", "polygons"]


def names(events) -> list[str]:
    return [E.Name(e.type).removeprefix("RUN_EVENT_TYPE_") for e in events]


def upload_scene(s3_server, scene: Path, bucket: str) -> str:
    client = s3_server.client()
    client.create_bucket(Bucket=bucket)
    client.upload_file(str(scene), bucket, "scenes/olinda.tif")
    return f"s3://{bucket}/scenes/olinda.tif"


def local_copy(s3_server, uri: str, folder: Path) -> Path:
    location = parse(uri)
    if location.scheme == "file":
        return Path(location.path)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{abs(hash(uri))}-{Path(location.path).name}"
    s3_server.client().download_file(location.bucket, location.path, str(target))
    return target


def wait_for_progress(orch: Orchestrator, run_id: str, block_id: str, done: int) -> list[c.RunEvent]:
    """Follow the run until `block_id` reports at least `done` units; returns the events so far."""
    seen = []
    for event in orch.stub.WatchRun(pb.WatchRunRequest(run_id=run_id), timeout=60):
        seen.append(event)
        if event.type == E.RUN_EVENT_TYPE_STEP_PROGRESS and event.block_id == block_id and event.progress.done >= done:
            return seen
        assert event.state not in (c.RUN_STATE_SUCCEEDED, c.RUN_STATE_FAILED, c.RUN_STATE_CANCELED), names(seen)
    pytest.fail("the stream ended before the progress arrived")


def assert_worker_exits(orch: Orchestrator, run_id: str) -> None:
    """The run's worker process exits (within 30 s: a loaded 2-core machine took over 5)."""
    dagster_run = orch.server.runs.instance.get_run_by_id(dagster_run_id(run_id))
    with pytest.raises(ProcessLookupError):
        for _ in range(300):
            os.kill(int(dagster_run.tags[PID_TAG]), 0)
            time.sleep(0.1)


def assert_matches_ndwi(path: Path, scene: Path) -> np.ndarray:
    expected, nodata = ndwi_probability(scene)
    with rasterio.open(scene) as src:
        transform, size = src.transform, (src.height, src.width)
    with rasterio.open(path) as out:
        assert out.crs.to_string() == CRS
        assert out.transform == transform
        assert (out.height, out.width) == size
        assert out.nodata == 0
        got = out.read(1)
    np.testing.assert_allclose(got[~nodata], expected[~nodata], atol=2e-6)
    assert np.all(got[nodata] == 0)
    assert np.array_equal(got[~nodata] > 0.5, expected[~nodata] > 0.5)
    return got


def test_pipeline_over_a_real_geotiff_matches_numpy_ndwi(
    tmp_path, s3_server, ndwi_endpoint, scene_512, dagster_storage
):
    env = orchestrator_env(tmp_path / "home", CONSTELLATION_DAGSTER_POSTGRES_URL=dagster_storage)
    orch = Orchestrator(env)
    try:
        bucket = f"scenes-{os.urandom(3).hex()}"
        scene_uri = upload_scene(s3_server, scene_512, bucket)
        outputs_local = tmp_path / "results"
        request = water_request(scene_uri, ndwi_endpoint.address, [f"s3://{bucket}/results", f"file://{outputs_local}"])
        started = time.monotonic()
        run = orch.stub.LaunchRun(request)
        assert time.monotonic() - started < 5, "LaunchRun returns at once"
        assert run.id.startswith("run_") and run.state in (
            c.RUN_STATE_QUEUED,
            c.RUN_STATE_STARTING,
            c.RUN_STATE_RUNNING,
        )

        # Two watchers from the start and one that leaves after three events.
        streams: dict[str, list] = {}

        def watch(name: str) -> None:
            streams[name] = list(orch.stub.WatchRun(pb.WatchRunRequest(run_id=run.id), timeout=90))

        watchers = [threading.Thread(target=watch, args=(n,)) for n in ("a", "b")]
        for t in watchers:
            t.start()
        leaving = orch.stub.WatchRun(pb.WatchRunRequest(run_id=run.id), timeout=90)
        first = [next(leaving) for _ in range(3)]
        leaving.cancel()
        for t in watchers:
            t.join(90)
        events = streams["a"]
        assert [e.SerializeToString() for e in events] == [e.SerializeToString() for e in streams["b"]]
        assert [e.SerializeToString() for e in first] == [e.SerializeToString() for e in events[:3]]

        # Order: sequence 1..N; starting, started, the chain's steps in order, outputs, then the terminal event.
        assert [e.sequence for e in events] == list(range(1, len(events) + 1))
        assert events[0].engine_event_type == "RUN_STARTING" and events[0].state == c.RUN_STATE_STARTING
        kinds = names(events)
        assert kinds[-1] == "RUN_SUCCEEDED" and events[-1].state == c.RUN_STATE_SUCCEEDED
        assert kinds.index("RUN_STARTED") < kinds.index("STEP_STARTED")
        assert all(e.source == "orchestrator" and e.time.seconds > 0 for e in events)
        step_order = [
            (e.block_id, n) for e, n in zip(events, kinds, strict=True) if n in ("STEP_STARTED", "STEP_SUCCEEDED")
        ]
        assert [b for b, n in step_order if n == "STEP_STARTED"][:5] == CHAIN
        for block in CHAIN + ["out-0", "out-1"]:
            assert step_order.index((block, "STEP_STARTED")) < step_order.index((block, "STEP_SUCCEEDED"))
        progress = [e.progress for e in events if e.type == E.RUN_EVENT_TYPE_STEP_PROGRESS]
        assert progress and all(p.unit == "tiles" and p.total == 9 for p in progress)
        assert [p.done for p in progress] == sorted(p.done for p in progress) and progress[-1].done == 9
        streamed_outputs = [o for e in events if e.type == E.RUN_EVENT_TYPE_OUTPUT for o in e.outputs]
        # Per export: COG, GeoJSON, PNG, the model's MLM item and the result's STAC item.
        assert len(streamed_outputs) == 10

        # Resume from a cursor: the rest of the same sequence; past the end: nothing.
        middle = len(events) // 2
        assert [e.SerializeToString() for e in orch.events(run.id, after=middle)] == [
            e.SerializeToString() for e in events[middle:]
        ]
        assert orch.events(run.id, after=len(events)) == []

        done = orch.stub.GetRun(pb.GetRunRequest(id=run.id))
        assert done.state == c.RUN_STATE_SUCCEEDED and done.end_time.seconds >= done.start_time.seconds > 0
        assert sorted(o.uri for o in done.outputs) == sorted(o.uri for o in streamed_outputs)
        assert [r.id for r in orch.stub.ListRuns(pb.ListRunsRequest()).runs] == [run.id]

        # The outputs, in S3 and on disk: georeferenced like the input, equal to numpy's NDWI on the same pixels.
        by_block = {(o.block_id, o.media_type.split(";")[0]): o for o in done.outputs if "stac" not in o.media_type}
        assert by_block[("out-0", "image/tiff")].uri.startswith(f"s3://{bucket}/results/{run.id}/out-0/")
        assert by_block[("out-1", "image/tiff")].uri == f"file://{outputs_local}/{run.id}/out-1/water_probability.tif"
        rasters = [
            assert_matches_ndwi(local_copy(s3_server, by_block[(b, "image/tiff")].uri, tmp_path / "dl"), scene_512)
            for b in ("out-0", "out-1")
        ]
        assert np.array_equal(rasters[0], rasters[1])
        cog = local_copy(s3_server, by_block[("out-0", "image/tiff")].uri, tmp_path / "dl")
        with rasterio.open(cog) as src:
            assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        expected, nodata = ndwi_probability(scene_512)
        water_m2 = float(((expected > 0.5) & ~nodata).sum()) * 100.0
        for block in ("out-0", "out-1"):
            geojson = json.loads(
                local_copy(s3_server, by_block[(block, "application/geo+json")].uri, tmp_path / "dl").read_text()
            )
            assert geojson["type"] == "FeatureCollection" and "crs" not in geojson  # WGS84, RFC 7946
            features = geojson["features"]
            assert len(features) == 2  # the lake and the river
            assert abs(sum(f["properties"]["area_m2"] for f in features) - water_m2) < 0.02 * water_m2
            lon, lat = features[0]["geometry"]["coordinates"][0][0]
            assert -40 < lon < -30 and -10 < lat < 0  # UTM 25S near 500000 E, 9100000 N
            png = local_copy(s3_server, by_block[(block, "image/png")].uri, tmp_path / "dl").read_bytes()
            assert png.startswith(b"\x89PNG\r\n\x1a\n")
        manifest = json.loads((outputs_local / run.id / "out-1" / "manifest.json").read_text())
        assert {o["uri"] for o in manifest["outputs"]} == {o.uri for o in done.outputs if o.block_id == "out-1"}
        if dagster_storage:  # the run worked on PostgreSQL; its password is in no file the orchestrator wrote
            password = make_url(dagster_storage).password
            assert password and (tmp_path / "home" / "dagster" / "dagster.yaml").exists()
            written = [p for p in (tmp_path / "home").rglob("*") if p.is_file() and p.suffix in (".yaml", ".log")]
            assert written and not [p for p in written if password in p.read_text(errors="replace")]
            # nor in the instance reference a run worker gets in its environment (it reads the URL from there)
            assert password not in serialize_value(orch.server.runs.instance.get_ref())
    finally:
        orch.stop()


def test_launch_is_idempotent_by_run_id(orchestrator, ndwi_endpoint, scene_512, tmp_path):
    request = water_request(
        f"file://{scene_512}", ndwi_endpoint.address, [f"file://{tmp_path}/out"], run_id="run_idem-1"
    )
    first = orchestrator.stub.LaunchRun(request)
    again = orchestrator.stub.LaunchRun(request)
    assert first.id == again.id == "run_idem-1"
    other = water_request(
        f"file://{scene_512}", ndwi_endpoint.address, [f"file://{tmp_path}/elsewhere"], run_id="run_idem-1"
    )
    assert rpc_error(orchestrator.stub.LaunchRun, other).code() == grpc.StatusCode.ALREADY_EXISTS
    assert orchestrator.wait(first.id).state == c.RUN_STATE_SUCCEEDED
    assert len(orchestrator.stub.ListRuns(pb.ListRunsRequest()).runs) == 1


def test_cancel_stops_the_run_and_publishes_nothing(orchestrator, s3_server, slow_endpoint, scene_512, tmp_path):
    bucket = f"cancel-{os.urandom(3).hex()}"
    s3_server.client().create_bucket(Bucket=bucket)
    request = water_request(
        f"file://{scene_512}",
        slow_endpoint.address,
        [f"s3://{bucket}/out", f"file://{tmp_path}/out"],
        batch_size=1,
        max_concurrency=1,
    )
    run = orchestrator.stub.LaunchRun(request)
    wait_for_progress(orchestrator, run.id, "water", 1)
    canceling = orchestrator.stub.CancelRun(pb.CancelRunRequest(id=run.id))
    assert canceling.state in (c.RUN_STATE_CANCELING, c.RUN_STATE_CANCELED)
    events = orchestrator.events(run.id)
    kinds = names(events)
    assert kinds[-1] == "RUN_CANCELED" and events[-1].state == c.RUN_STATE_CANCELED
    assert "RUN_CANCELING" in kinds and "RUN_SUCCEEDED" not in kinds
    assert not any(e.type == E.RUN_EVENT_TYPE_OUTPUT for e in events)
    final = orchestrator.stub.GetRun(pb.GetRunRequest(id=run.id))
    assert final.state == c.RUN_STATE_CANCELED and not final.outputs
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert s3_server.client().list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    assert (
        rpc_error(orchestrator.stub.CancelRun, pb.CancelRunRequest(id=run.id)).code()
        == grpc.StatusCode.FAILED_PRECONDITION
    )
    assert_worker_exits(orchestrator, run.id)


def with_second_branch(request: pb.LaunchRunRequest, export_uri: str) -> pb.LaunchRunRequest:
    """`request`'s pipeline and a second model branch from its scene block: tiles-b -> water-b (the same model)
    -> mosaic-b -> out-b."""
    branch = [
        c.Block(
            id="tiles-b", tile=c.TileBlock(tile_size_px=256, overlap_px=32, normalization=c.NORMALIZATION_REFLECTANCE)
        ),
        c.Block(id="water-b", model=c.ModelBlock(model_id="ndwi", batch_size=1, max_concurrency=1)),
        c.Block(id="mosaic-b", stitch=c.StitchBlock(blend=c.BLEND_MODE_MEAN)),
        c.Block(id="out-b", export=c.ExportBlock(uri=export_uri, formats=[c.EXPORT_FORMAT_COG])),
    ]  # fmt: skip
    request.spec.blocks.extend(branch)
    ids = ["scene", *(b.id for b in branch)]
    request.spec.edges.extend(c.Edge(source_block_id=a, target_block_id=b) for a, b in zip(ids, ids[1:], strict=False))
    return request


def step_spans(events: list[c.RunEvent], *blocks: str) -> dict[str, tuple[float, float]]:
    """Each block's step: (time it started, time it ended), from the run's events."""
    ends = (E.RUN_EVENT_TYPE_STEP_SUCCEEDED, E.RUN_EVENT_TYPE_STEP_FAILED)
    started = {e.block_id: e.time.ToNanoseconds() / 1e9 for e in events if e.type == E.RUN_EVENT_TYPE_STEP_STARTED}
    ended = {e.block_id: e.time.ToNanoseconds() / 1e9 for e in events if e.type in ends}
    return {block: (started[block], ended[block]) for block in blocks}


def test_independent_branches_run_at_the_same_time(orchestrator, slow_endpoint, scene_512, tmp_path):
    """Two model branches from one scene (orchestrator_svc.executor): their model steps overlap in time (one after
    the other each takes 9 requests of 0.4 s), and both write the same raster as one branch alone does."""
    request = water_request(
        f"file://{scene_512}", slow_endpoint.address, [f"file://{tmp_path}/a"], batch_size=1, max_concurrency=1
    )
    run = orchestrator.stub.LaunchRun(with_second_branch(request, f"file://{tmp_path}/b"))
    events = orchestrator.events(run.id)
    assert events[-1].type == E.RUN_EVENT_TYPE_RUN_SUCCEEDED, [e.message for e in events[-5:]]
    spans = step_spans(events, "water", "water-b")
    (a_start, a_end), (b_start, b_end) = spans["water"], spans["water-b"]
    assert a_start < b_end and b_start < a_end, f"the model steps ran one after the other: {spans}"
    assert min(a_end - a_start, b_end - b_start) > 3.0  # each waited for its 9 requests
    final = orchestrator.stub.GetRun(pb.GetRunRequest(id=run.id))
    cogs = {
        o.block_id: Path(o.uri.removeprefix("file://"))
        for o in final.outputs
        if o.uri.endswith("/water_probability.tif")
    }
    assert set(cogs) == {"out-0", "out-b"}, [o.uri for o in final.outputs]
    with rasterio.open(cogs["out-0"]) as a, rasterio.open(cogs["out-b"]) as b:
        first, second = a.read(1), b.read(1)
    assert first.shape == (512, 512) and np.array_equal(first, second)
    assert_matches_ndwi(cogs["out-b"], scene_512)


def test_cancel_stops_every_branch_that_runs(orchestrator, slow_endpoint, scene_512, tmp_path):
    """A cancel reaches the steps running on the worker's threads as it reaches one on its main thread: both
    model steps fail as interrupted, the run is CANCELED without outputs, and the worker exits."""
    request = water_request(
        f"file://{scene_512}", slow_endpoint.address, [f"file://{tmp_path}/a"], batch_size=1, max_concurrency=1
    )
    run = orchestrator.stub.LaunchRun(with_second_branch(request, f"file://{tmp_path}/b"))
    wait_for_progress(orchestrator, run.id, "water", 1)
    wait_for_progress(orchestrator, run.id, "water-b", 1)
    orchestrator.stub.CancelRun(pb.CancelRunRequest(id=run.id))
    events = orchestrator.events(run.id)
    assert names(events)[-1] == "RUN_CANCELED" and "RUN_SUCCEEDED" not in names(events)
    failed = {e.block_id for e in events if e.type == E.RUN_EVENT_TYPE_STEP_FAILED}
    succeeded = {e.block_id for e in events if e.type == E.RUN_EVENT_TYPE_STEP_SUCCEEDED}
    assert {"water", "water-b"} <= failed and not {"water", "water-b", "mosaic", "mosaic-b"} & succeeded
    assert not any(e.type == E.RUN_EVENT_TYPE_OUTPUT for e in events)
    assert not [p for folder in ("a", "b") for p in (tmp_path / folder).rglob("*") if p.is_file()]
    assert_worker_exits(orchestrator, run.id)


def test_model_step_waits_then_retries_when_the_endpoint_dies_and_comes_back(
    orchestrator, slow_endpoint, scene_512, tmp_path
):
    request = water_request(
        f"file://{scene_512}", slow_endpoint.address, [f"file://{tmp_path}/disturbed"], batch_size=1, max_concurrency=1
    )
    run = orchestrator.stub.LaunchRun(request)
    wait_for_progress(orchestrator, run.id, "water", 2)
    slow_endpoint.kill()
    time.sleep(3.0)  # longer than the step waits for the endpoint inside it (INFER_WAIT_S, 2 s here)
    slow_endpoint.start()
    assert orchestrator.wait(run.id).state == c.RUN_STATE_SUCCEEDED
    events = orchestrator.events(run.id)
    water = [(n, e.message) for e, n in zip(events, names(events), strict=True) if e.block_id == "water"]
    kinds = [n for n, _ in water]
    assert "STEP_RETRY" in kinds, kinds
    retry = kinds.index("STEP_RETRY")
    assert any("UNAVAILABLE" in m and "retrying in" in m for _, m in water[:retry]), "the step waited first"
    assert "UNAVAILABLE" in water[retry][1] or "DEADLINE" in water[retry][1], water[retry][1]
    assert "STEP_STARTED" in kinds[retry:] and kinds[-1] == "STEP_SUCCEEDED"
    assert any(m.startswith("resuming:") for _, m in water[retry:]), (
        "the retry resumes from the tiles already predicted"
    )

    undisturbed = orchestrator.stub.LaunchRun(
        water_request(
            f"file://{scene_512}",
            slow_endpoint.address,
            [f"file://{tmp_path}/undisturbed"],
            batch_size=3,
            max_concurrency=2,
        )
    )
    assert orchestrator.wait(undisturbed.id).state == c.RUN_STATE_SUCCEEDED
    with rasterio.open(tmp_path / "disturbed" / run.id / "out-0" / "water_probability.tif") as a:
        with rasterio.open(tmp_path / "undisturbed" / undisturbed.id / "out-0" / "water_probability.tif") as b:
            assert np.array_equal(a.read(), b.read()) and a.transform == b.transform and a.crs == b.crs
    assert (tmp_path / "disturbed" / run.id / "out-0" / "water_probability_polygons.geojson").read_text() == (
        tmp_path / "undisturbed" / undisturbed.id / "out-0" / "water_probability_polygons.geojson"
    ).read_text()

    first = orchestrator.stub.ListRuns(pb.ListRunsRequest(page_size=1))
    second = orchestrator.stub.ListRuns(pb.ListRunsRequest(page_size=1, page_token=first.next_page_token))
    assert [r.id for r in first.runs] == [undisturbed.id] and [r.id for r in second.runs] == [run.id]  # newest first


def test_a_permanent_endpoint_failure_fails_the_run_with_its_message(orchestrator, ndwi_endpoint, scene_512, tmp_path):
    request = water_request(f"file://{scene_512}", ndwi_endpoint.address, [f"file://{tmp_path}/out"])
    request.models["ndwi"].model_name = "ndwi-elsewhere"
    run = orchestrator.stub.LaunchRun(request)
    final = orchestrator.wait(run.id)
    assert final.state == c.RUN_STATE_FAILED
    assert "block 'water' failed" in final.state_message and "no model named 'ndwi-elsewhere'" in final.state_message
    events = orchestrator.events(run.id)
    kinds = names(events)
    assert "STEP_RETRY" not in kinds and kinds[-1] == "RUN_FAILED"
    failed = next(e for e in events if e.type == E.RUN_EVENT_TYPE_STEP_FAILED)
    assert failed.block_id == "water" and "NOT_FOUND" in failed.message and "Traceback" not in failed.message
    assert not (tmp_path / "out").exists()


def test_restart_resumes_live_runs_and_reexecutes_orphans(tmp_path, s3_server, slow_endpoint, scene_512):
    orch = Orchestrator(orchestrator_env(tmp_path / "home"))
    try:
        # A run whose worker outlives the orchestrator: the new one adopts it and it finishes.
        live = orch.stub.LaunchRun(
            water_request(
                f"file://{scene_512}", slow_endpoint.address, [f"file://{tmp_path}/a"], batch_size=1, max_concurrency=1
            )
        )
        wait_for_progress(orch, live.id, "water", 1)
        orch.restart()
        assert orch.wait(live.id).state == c.RUN_STATE_SUCCEEDED
        assert names(orch.events(live.id))[-1] == "RUN_SUCCEEDED"

        # A run whose worker dies while no orchestrator runs: the next one re-executes it from its unfinished steps.
        orphan = orch.stub.LaunchRun(
            water_request(
                f"file://{scene_512}", slow_endpoint.address, [f"file://{tmp_path}/b"], batch_size=1, max_concurrency=1
            )
        )
        wait_for_progress(orch, orphan.id, "water", 1)
        pid = int(orch.server.runs.instance.get_run_by_id(dagster_run_id(orphan.id)).tags[PID_TAG])
        orch.stop()
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
        orch.start()
        assert orch.wait(orphan.id).state == c.RUN_STATE_SUCCEEDED
        events = orch.events(orphan.id)
        assert names(events)[-1] == "RUN_SUCCEEDED" and [e.sequence for e in events] == list(range(1, len(events) + 1))
        assert "RUN_FAILED" not in names(events)
        assert orch.stub.GetRun(pb.GetRunRequest(id=live.id)).state == c.RUN_STATE_SUCCEEDED
    finally:
        orch.stop()


class Crash(Exception):
    """The orchestrator process dying at that line (nothing after it runs)."""


@pytest.mark.slow
@pytest.mark.parametrize("dies_before", ["create_run_for_job", "settle", "launch_run"])
def test_an_owner_that_dies_re_executing_a_run_leaves_it_to_the_next(
    tmp_path, s3_server, slow_endpoint, scene_512, dies_before, monkeypatch
):
    """Re-executing a run is four writes (name the next attempt, create it, settle the failed one, launch the
    new); an owner that dies between any two leaves the run to the next owner, which finishes the re-execution:
    the run succeeds with one gap-free event stream, no run is left active forever."""
    orch = Orchestrator(orchestrator_env(tmp_path / "home"))
    try:
        run = orch.stub.LaunchRun(
            water_request(
                f"file://{scene_512}",
                slow_endpoint.address,
                [f"file://{tmp_path}/out"],
                batch_size=1,
                max_concurrency=1,
            )
        )
        wait_for_progress(orch, run.id, "water", 1)
        pid = int(orch.server.runs.instance.get_run_by_id(dagster_run_id(run.id)).tags[PID_TAG])
        orch.stop()  # gives the run's lease up
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)

        # Another orchestrator takes the run and dies part-way through re-executing it.
        settings = OrchestratorSettings.from_env(orch.env)
        leases = Leases(lease_engine(settings), config.load("orchestrator", orch.env).lease_ttl_s, "dying")
        dying = RunManager(
            open_instance(settings), settings, StorageRoots.from_env(orch.env), leases=leases, lease_renew_s=60
        )
        try:
            target = dying.launcher if dies_before == "settle" else dying.instance
            monkeypatch.setattr(target, dies_before, lambda *a, **k: (_ for _ in ()).throw(Crash(dies_before)))
            with pytest.raises(Crash):
                dying.reconcile()
            chain = dying._chain(dying._run(run.id))
            assert any(a.status in ACTIVE for a in chain), "the run is left active for the next owner"
        finally:
            monkeypatch.undo()
            dying.close()  # its lease goes (a dead process's would expire)
            dying.instance.dispose()

        orch.start()
        assert orch.wait(run.id, timeout_s=120).state == c.RUN_STATE_SUCCEEDED
        events = orch.events(run.id)
        assert names(events)[-1] == "RUN_SUCCEEDED" and [e.sequence for e in events] == list(range(1, len(events) + 1))
        assert "RUN_FAILED" not in names(events)
        attempts = orch.server.runs._chain(orch.server.runs._run(run.id))
        assert len(attempts) == 2 and all(a.status not in ACTIVE for a in attempts), [a.status for a in attempts]
        assert (tmp_path / "out" / run.id / "out-0" / "water_probability.tif").exists()
    finally:
        orch.stop()


def test_dagster_ui_serves_the_same_instance(orchestrator, ndwi_endpoint, scene_512, tmp_path):
    run = orchestrator.stub.LaunchRun(
        water_request(f"file://{scene_512}", ndwi_endpoint.address, [f"file://{tmp_path}/out"])
    )
    assert orchestrator.wait(run.id).state == c.RUN_STATE_SUCCEEDED
    port = free_port()
    ui = subprocess.Popen(
        [sys.executable, "-m", "orchestrator_svc.ui", "--host", "127.0.0.1", "--port", str(port)],
        env=orchestrator.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 90
        query = "{ runsOrError { ... on Runs { results { runId status tags { key value } } } } }"
        while True:
            try:
                answer = requests.post(f"http://127.0.0.1:{port}/graphql", json={"query": query}, timeout=5)
                if answer.ok:
                    break
            except requests.RequestException:
                pass
            assert ui.poll() is None, ui.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the Dagster UI did not answer"
            time.sleep(0.5)
        runs = answer.json()["data"]["runsOrError"]["results"]
        [found] = [r for r in runs if r["runId"] == dagster_run_id(run.id)]
        assert found["status"] == "SUCCESS"
        assert {"key": "constellation/run_id", "value": run.id} in found["tags"]
    finally:
        ui.terminate()
        ui.wait(20)


def test_a_spare_worker_takes_the_next_run_and_another_waits_after_it(orchestrator, ndwi_endpoint, scene_512, tmp_path):
    """The orchestrator keeps a worker that has imported what a run needs waiting for the next run: the run's
    worker is that process, started before the run was, with its output in the run's log; the next spare starts
    once the run's worker exits, and stopping the orchestrator stops it. A run launched while no spare is
    alive gets a worker of its own."""
    launcher = orchestrator.server.runs.launcher
    spare = launcher._spare
    assert spare is not None and spare.poll() is None
    run = orchestrator.stub.LaunchRun(
        water_request(f"file://{scene_512}", ndwi_endpoint.address, [f"file://{tmp_path}/out-{time.monotonic_ns()}"])
    )
    assert orchestrator.wait(run.id).state == c.RUN_STATE_SUCCEEDED
    dagster_run = orchestrator.server.runs.instance.get_run_by_id(dagster_run_id(run.id))
    assert int(dagster_run.tags[PID_TAG]) == spare.pid
    assert spare.wait(30) == 0
    logged = log_path(launcher.work_dir, dagster_run.run_id).read_text()
    assert f"run {dagster_run.run_id} finished" in logged and '"success": true' in logged

    deadline = time.monotonic() + 30
    while (launcher._spare is None or launcher._spare is spare) and time.monotonic() < deadline:
        time.sleep(0.1)
    after = launcher._spare
    assert after is not None and after.poll() is None, "a new spare once the run's worker exited"

    after.kill()  # a spare that died: the next run starts a worker of its own
    after.wait()
    run = orchestrator.stub.LaunchRun(
        water_request(f"file://{scene_512}", ndwi_endpoint.address, [f"file://{tmp_path}/out-{time.monotonic_ns()}"])
    )
    assert orchestrator.wait(run.id).state == c.RUN_STATE_SUCCEEDED
    assert int(orchestrator.server.runs.instance.get_run_by_id(dagster_run_id(run.id)).tags[PID_TAG]) != after.pid

    deadline = time.monotonic() + 30
    while (launcher._spare is None or launcher._spare is after) and time.monotonic() < deadline:
        time.sleep(0.1)
    last = launcher._spare
    assert last is not None and last.poll() is None
    orchestrator.stop()
    assert last.wait(10) != 0, "the orchestrator stopped its spare"
