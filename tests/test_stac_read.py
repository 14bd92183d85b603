"""Reading STAC items: one COG per band at mixed resolutions brought onto one grid (orchestrator_svc.stacks), and a
dataset of several items run once per item with a time-series summary (orchestrator_svc.series), through a real
orchestrator. Expected values come from numpy over the stacked GeoTIFF of the same pixels."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling
from rasterio.warp import reproject
from rasterio.windows import Window

from constellation.common.v1 import common_pb2 as c
from constellation.orchestrator.v1 import orchestrator_pb2 as pb
from mesh.errors import field_violations
from orchestrator_svc import blocks, stacks
from tests.conftest import rpc_error
from tests.multi_asset_scenes import write_multi_asset_scene
from tests.orchestrator_scenes import BANDS, NODATA
from tests.orchestrator_support import Orchestrator, orchestrator, orchestrator_env, s3_server  # noqa: F401 - fixtures

SIZE = 300


def ndwi(stacked: Path) -> tuple[np.ndarray, np.ndarray]:
    """NDWI from the stacked file's digital numbers in float64, and where it is nodata."""
    with rasterio.open(stacked) as src:
        green = src.read(BANDS.index("green") + 1).astype(np.float64)
        nir = src.read(BANDS.index("nir") + 1).astype(np.float64)
    invalid = (green == NODATA) | (nir == NODATA)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (green - nir) / (green + nir), invalid


def band_files(item: c.SceneItem) -> list[stacks.BandFile]:
    return [stacks.BandFile(a.band, a.uri.removeprefix("file://"), a.band_index) for a in item.assets]


def spec(*, summary: bool = False, export_uri: str, resolution_m: float = 0.0) -> c.PipelineSpec:
    """dataset -> ndwi -> export, and with `summary`: ndwi -> summary -> its own export."""
    blocks_ = [
        c.Block(id="scene", dataset=c.DatasetBlock(dataset_id="s2", resolution_m=resolution_m)),
        c.Block(id="ndwi", index=c.IndexBlock(preset=c.SPECTRAL_INDEX_NDWI)),
        c.Block(id="out", export=c.ExportBlock(uri=export_uri, formats=[c.EXPORT_FORMAT_COG])),
    ]
    edges = [("scene", "ndwi"), ("ndwi", "out")]
    if summary:
        blocks_ += [
            c.Block(id="water", summary=c.SummaryBlock(threshold=0.0, mosaic=True)),
            c.Block(id="series", export=c.ExportBlock(uri=export_uri)),
        ]
        edges += [("ndwi", "water"), ("water", "series")]
    return c.PipelineSpec(blocks=blocks_, edges=[c.Edge(source_block_id=a, target_block_id=b) for a, b in edges])


@pytest.fixture(scope="module")
def item_a(tmp_path_factory):
    """A 300 px item: blue and green at 10 m, red and nir at 20 m."""
    return write_multi_asset_scene(tmp_path_factory.mktemp("items"), "S2A_T25MBU_20240601", SIZE)


# --------------------------------------------------------------------------- one grid


def test_bands_at_half_resolution_come_back_on_the_finest_grid(tmp_path, item_a):
    plan = stacks.plan_stack(band_files(item_a.item), ("green", "nir"))
    scene = stacks.write_vrt(plan, tmp_path / "scene.vrt")
    with rasterio.open(item_a.stacked) as stacked:
        assert (scene.width, scene.height, scene.crs_wkt) == (SIZE, SIZE, stacked.crs.to_wkt())
        assert scene.transform == tuple(stacked.transform)[:6] and scene.nodata == NODATA
        expected = stacked.read()
    with rasterio.open(scene.path) as vrt:
        whole = vrt.read()
        # Read window by window (as the blocks do), the same pixels come back as in one read.
        window = vrt.read(window=Window(37, 101, 64, 45))
    np.testing.assert_array_equal(window, whole[:, 101:146, 37:101])
    for k, band in enumerate(BANDS):
        valid = expected[k] != NODATA
        error = np.abs(whole[k].astype(np.float64) - expected[k])[valid]
        if band in ("blue", "green"):  # full resolution: copied
            assert error.max() == 0, band
        else:  # 20 m, interpolated: within the scene's pixel noise (±50 DN) of the 10 m pixels but at water edges
            assert error.mean() < 0.05 * expected[k][valid].mean(), band
    assert [stacks.resampling_for(b, 20, 10) for b in ("nir", "scl")] == ["bilinear", "nearest"]
    assert stacks.resampling_for("nir", 10, 20) == "average"


def test_a_chosen_resolution_sets_the_grid(item_a):
    plan = stacks.plan_stack(band_files(item_a.item), (), resolution_m=20.0)
    assert (plan.width, plan.height, plan.resolution) == (SIZE // 2, SIZE // 2, 20.0)


def test_band_files_in_different_crss_are_refused(tmp_path, item_a):
    from rasterio.shutil import copy

    nir = next(f for f in band_files(item_a.item) if f.band == "nir")
    moved = tmp_path / "nir-32724.tif"
    copy(nir.path, moved, driver="GTiff")
    with rasterio.open(moved, "r+") as dst:
        dst.crs = "EPSG:32724"
    files = [f if f.band != "nir" else stacks.BandFile("nir", str(moved)) for f in band_files(item_a.item)]
    with pytest.raises(blocks.RasterError, match=r"different CRSs \(blue: EPSG:32725, nir: EPSG:32724\)"):
        stacks.plan_stack(files)


# --------------------------------------------------------------------------- through the orchestrator


def test_a_multi_asset_item_gives_the_stacked_scenes_result(orchestrator, tmp_path, item_a):
    out = tmp_path / "results"
    request = pb.LaunchRunRequest(
        spec=spec(export_uri=f"file://{out}"),
        datasets={"s2": pb.ResolvedDataset(uri="https://stac.example/items/a", bands=BANDS, items=[item_a.item])},
    )
    run = orchestrator.wait(orchestrator.stub.LaunchRun(request).id)
    assert run.state == c.RUN_STATE_SUCCEEDED, run.state_message
    [output] = [o for o in run.outputs if "profile=stac" not in o.media_type]  # beside each export's STAC Items
    path = Path(output.uri.removeprefix("file://"))
    assert path == out / run.id / "out" / "S2A_T25MBU_20240601" / "ndwi_S2A_T25MBU_20240601.tif"
    expected, invalid = ndwi(item_a.stacked)
    with rasterio.open(path) as cog, rasterio.open(item_a.stacked) as stacked:
        assert cog.transform == stacked.transform and cog.crs == stacked.crs
        got = cog.read(1)
    assert np.isnan(got[invalid]).all()
    valid = ~invalid
    # Against the 10 m stack: nir at 20 m blurs the water's edges by about one 10 m pixel, elsewhere it is within
    # the scene's noise.
    assert np.median(np.abs(got[valid] - expected[valid])) < 0.005
    agree = ((got > 0) == (expected > 0))[valid].mean()
    assert agree > 0.98, f"water agrees with the stack on {agree:.3%} of pixels"
    water, expected_water = (got[valid] > 0).sum(), (expected[valid] > 0).sum()
    assert abs(water - expected_water) < 0.06 * expected_water
    # Against an independent resampling: GDAL's warper (not a VRT) upsampling the 20 m nir bilinearly.
    nir_20m = next(a.uri.removeprefix("file://") for a in item_a.item.assets if a.band == "nir")
    nir = np.zeros((SIZE, SIZE), np.float64)
    with rasterio.open(nir_20m) as src, rasterio.open(item_a.stacked) as stacked:
        green = stacked.read(BANDS.index("green") + 1).astype(np.float64)
        reproject(rasterio.band(src, 1), nir, dst_transform=stacked.transform, dst_crs=stacked.crs,
                  resampling=Resampling.bilinear, src_nodata=NODATA, dst_nodata=NODATA)  # fmt: skip
    with np.errstate(invalid="ignore", divide="ignore"):
        warped = (green - nir) / (green + nir)
    np.testing.assert_allclose(got[valid], warped[valid], atol=2e-3)
    assert ((got > 0) == (warped > 0))[valid].mean() > 0.999


@pytest.fixture
def one_at_a_time(tmp_path) -> Iterator[Orchestrator]:
    """Items one after another in the run's worker (in-process: no step process to start)."""
    orch = Orchestrator(orchestrator_env(tmp_path / "home", CONSTELLATION_ORCHESTRATOR_MAX_PARALLEL_ITEMS="1"))
    yield orch
    orch.stop()


def test_three_dates_give_per_item_outputs_and_a_series(one_at_a_time, tmp_path):
    run_three_dates(one_at_a_time, tmp_path)


@pytest.mark.slow
def test_items_run_in_parallel_processes(orchestrator, tmp_path):
    """The default (2 at once, Dagster's multiprocess executor): the same outputs, with two items' steps at once."""
    events = run_three_dates(orchestrator, tmp_path)
    # At some moment two step processes were alive at once. A step counts from the executor starting its process
    # (STEP_WORKER_STARTING) to its end: counting from STEP_STARTED instead depended on load (a short step could end
    # before the other step's process had booted).
    running, most, processes = 0, 0, 0
    for event in events:
        if event.engine_event_type == "STEP_WORKER_STARTING":
            processes += 1
            running += 1
            most = max(most, running)
        elif event.type in (c.RUN_EVENT_TYPE_STEP_SUCCEEDED, c.RUN_EVENT_TYPE_STEP_FAILED):
            running -= 1
    assert processes > 1, "no step ran in a process of its own"
    assert most >= 2, [(e.block_id, e.engine_event_type) for e in events if e.engine_event_type.startswith("STEP")]


def run_three_dates(orchestrator: Orchestrator, tmp_path: Path) -> list[c.RunEvent]:
    """Three dates with a growing flood through dataset -> ndwi -> export and ndwi -> summary -> export; checks the
    outputs against numpy and returns the run's events."""
    floods = {"S2B_T25MBU_20240611": 0, "S2A_T25MBU_20240621": 60, "S2B_T25MBU_20240701": 120}
    scenes = [
        write_multi_asset_scene(
            tmp_path / "items", item_id, SIZE, half=("blue", "red"), flood_rows=rows,
            acquired=datetime(2024, 6, 11 + 10 * k, 10, 30, tzinfo=UTC) if k < 2 else datetime(2024, 7, 1, tzinfo=UTC),
        )
        for k, (item_id, rows) in enumerate(floods.items())
    ]  # fmt: skip
    out = tmp_path / "results"
    request = pb.LaunchRunRequest(
        spec=spec(summary=True, export_uri=f"file://{out}"),
        # Given out of date order: the series is in acquisition order.
        datasets={"s2": pb.ResolvedDataset(uri="file:///search", bands=BANDS, items=[s.item for s in scenes[::-1]])},
    )
    run = orchestrator.wait(orchestrator.stub.LaunchRun(request).id, timeout_s=240)
    assert run.state == c.RUN_STATE_SUCCEEDED, run.state_message
    by_name = {(o.name, o.media_type.split(";")[0]): Path(o.uri.removeprefix("file://")) for o in run.outputs}
    expected_rows = []
    for scene in scenes:
        item_id = scene.item.id
        cog = by_name[(f"ndwi_{item_id}", "image/tiff")]
        assert cog == out / run.id / "out" / item_id / f"ndwi_{item_id}.tif"
        values, invalid = ndwi(scene.stacked)  # green and nir at full resolution: the same numbers
        with rasterio.open(cog) as src:
            np.testing.assert_allclose(src.read(1)[~invalid], values[~invalid], atol=1e-6)
        water = int(((values > 0) & ~invalid).sum())
        expected_rows.append((item_id, water * 100 / 1e6, int((~invalid).sum()) * 100 / 1e6))
    assert expected_rows[0][1] < expected_rows[1][1] < expected_rows[2][1]  # the flood grows

    document = json.loads(by_name[("water", "application/json")].read_text())
    got = [(r["item_id"], r["area_km2"], r["valid_km2"]) for r in document["series"]]
    assert [g[0] for g in got] == [e[0] for e in expected_rows]
    np.testing.assert_allclose([g[1:] for g in got], [e[1:] for e in expected_rows], atol=1e-6)
    assert [r["acquired"][:10] for r in document["series"]] == ["2024-06-11", "2024-06-21", "2024-07-01"]
    with open(by_name[("water", "text/csv")], newline="") as table:
        rows = list(csv.DictReader(table))
    assert [(r["item_id"], float(r["area_km2"])) for r in rows] == [(e[0], round(e[1], 6)) for e in expected_rows]

    mosaic = by_name[("water_mosaic", "image/tiff")]
    with rasterio.open(mosaic) as src, rasterio.open(by_name[(f"ndwi_{scenes[-1].item.id}", "image/tiff")]) as last:
        # The scenes share a footprint: the latest one wins everywhere it is valid.
        np.testing.assert_array_equal(src.read(1), last.read(1))

    events = orchestrator.events(run.id)
    said = [e.message for e in events if e.block_id == "scene"]
    assert any("item 2 of 3" in m for m in said), said
    steps = [e.block_id for e in events if e.type == c.RUN_EVENT_TYPE_STEP_SUCCEEDED]
    assert sorted(steps) == sorted(["scene", "ndwi", "out"] * 3 + ["water", "series"])
    return events


def test_band_files_outside_the_roots_are_refused_before_reading(orchestrator, tmp_path, item_a):
    item = c.SceneItem()
    item.CopyFrom(item_a.item)
    item.assets[1].uri = "file:///etc/passwd"
    request = pb.LaunchRunRequest(
        spec=spec(export_uri=f"file://{tmp_path}/out"),
        datasets={"s2": pb.ResolvedDataset(uri="https://stac.example/items/a", bands=BANDS, items=[item])},
    )
    error = rpc_error(orchestrator.stub.LaunchRun, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    [violation] = field_violations(error)
    assert violation.field == 'datasets["s2"].items[0].assets[1].uri'
    assert "'file:///etc/passwd'" in violation.description


def test_an_item_missing_a_band_file_is_refused(orchestrator, tmp_path, item_a):
    item = c.SceneItem()
    item.CopyFrom(item_a.item)
    del item.assets[3]
    request = pb.LaunchRunRequest(
        spec=spec(export_uri=f"file://{tmp_path}/out"),
        datasets={"s2": pb.ResolvedDataset(uri="https://stac.example/items/a", bands=BANDS, items=[item])},
    )
    error = rpc_error(orchestrator.stub.LaunchRun, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert {(v.field, v.description) for v in field_violations(error)} == {
        ('datasets["s2"].items[0].assets', "has no file for band(s) nir")
    }


def test_band_files_in_two_crss_fail_the_launch_naming_the_item(orchestrator, tmp_path, item_a):
    from rasterio.shutil import copy

    item = c.SceneItem()
    item.CopyFrom(item_a.item)
    moved = tmp_path / "nir-32724.tif"
    copy(item.assets[3].uri.removeprefix("file://"), moved, driver="GTiff")
    with rasterio.open(moved, "r+") as dst:
        dst.crs = "EPSG:32724"
    item.assets[3].uri = f"file://{moved}"
    request = pb.LaunchRunRequest(
        spec=spec(export_uri=f"file://{tmp_path}/out"),
        datasets={"s2": pb.ResolvedDataset(uri="https://stac.example/items/a", bands=BANDS, items=[item])},
    )
    error = rpc_error(orchestrator.stub.LaunchRun, request)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == (
        "datasets[\"s2\"].items[0]: item 'S2A_T25MBU_20240601' has band files in different CRSs "
        "(blue: EPSG:32725, nir: EPSG:32724); reproject them to one CRS first"
    )


# --------------------------------------------------------------------------- the summary block's rules


def summary_problems(spec_: c.PipelineSpec) -> dict[str, str]:
    from pipeline.convert import spec_from_proto
    from pipeline.spec import DatasetView
    from pipeline.validation import check_runnable, validate_spec

    parsed = spec_from_proto(spec_)
    found, order = validate_spec(parsed, lambda i: DatasetView(i, "s2", tuple(BANDS)), lambda i: None)
    found += check_runnable(parsed, order, lambda i: None) if order else []
    return {p.field: p.description for p in found}


def test_a_summary_needs_an_export_of_its_own_and_csv_needs_a_summary():
    assert summary_problems(spec(summary=True, export_uri="file:///tmp/out")) == {}
    shared = spec(summary=True, export_uri="file:///tmp/out")
    shared.edges.append(c.Edge(source_block_id="water", target_block_id="out"))
    assert summary_problems(shared) == {
        "blocks[2]": "export block 'out' takes a summary's table; give the other inputs an export block of their own"
    }
    assert summary_problems(spec(export_uri="file:///tmp/out", resolution_m=-10)) == {
        "blocks[0].dataset.resolution_m": "must be between 0 (the finest band's) and 100000 metres"
    }
    csv_without = spec(export_uri="file:///tmp/out")
    csv_without.blocks[2].export.formats.append(c.EXPORT_FORMAT_CSV)
    assert summary_problems(csv_without) == {
        "blocks[2].export.formats[1]": "csv needs a summary block's output; connect one to 'out'"
    }


def test_an_item_on_s3_is_read_and_its_outputs_written_to_s3(orchestrator, s3_server, tmp_path, item_a):
    """Band files in a bucket: checked at launch through GDAL's /vsis3/, fetched by the dataset block."""
    client = s3_server.client()
    client.create_bucket(Bucket="stac-items")
    item = c.SceneItem()
    item.CopyFrom(item_a.item)
    for asset in item.assets:
        key = f"{item.id}/{asset.band}.tif"
        client.upload_file(asset.uri.removeprefix("file://"), "stac-items", key)
        asset.uri = f"s3://stac-items/{key}"
    request = pb.LaunchRunRequest(
        spec=spec(export_uri="s3://stac-items/results"),
        datasets={"s2": pb.ResolvedDataset(uri="https://stac.example/items/a", bands=BANDS, items=[item])},
    )
    run = orchestrator.wait(orchestrator.stub.LaunchRun(request).id)
    assert run.state == c.RUN_STATE_SUCCEEDED, run.state_message
    [output] = [o for o in run.outputs if "profile=stac" not in o.media_type]  # beside each export's STAC Items
    assert output.uri == f"s3://stac-items/results/{run.id}/out/{item.id}/ndwi_{item.id}.tif"
    local = tmp_path / "ndwi.tif"
    client.download_file("stac-items", output.uri.removeprefix("s3://stac-items/"), str(local))
    expected, invalid = ndwi(item_a.stacked)
    with rasterio.open(local) as cog:
        got = cog.read(1)
    assert ((got > 0) == (expected > 0))[~invalid].mean() > 0.98


def test_the_plan_runs_per_item_blocks_once_per_item_and_wires_the_rest_once():
    """scene (2 items) -> ndwi -> out, with out also taking polygons from a dataset without items (runs once)."""
    from orchestrator_svc import specs

    request = pb.LaunchRunRequest(
        spec=spec(summary=True, export_uri="file:///tmp/out"),
        datasets={
            "s2": pb.ResolvedDataset(
                uri="file:///search",
                bands=BANDS,
                items=[c.SceneItem(id=f"S2/{d}", uri=f"file:///tmp/{d}.tif") for d in ("a", "b")],
            ),
            "plain": pb.ResolvedDataset(uri="file:///tmp/plain.tif", bands=BANDS),
        },
    )
    request.spec.blocks.extend(
        [
            c.Block(id="plain", dataset=c.DatasetBlock(dataset_id="plain")),
            c.Block(id="nd-plain", index=c.IndexBlock(preset=c.SPECTRAL_INDEX_NDWI)),
            c.Block(id="lakes", vectorize=c.VectorizeBlock()),
        ]
    )
    for a, b in (("plain", "nd-plain"), ("nd-plain", "lakes"), ("lakes", "out")):
        request.spec.edges.add(source_block_id=a, target_block_id=b)
    plan = specs.build_plan(
        request, default_batch_size=8, default_max_concurrency=2, infer_timeout_s=1, infer_wait_s=1, roots=None
    )
    ops = {b.op_name: b for b in plan.blocks}
    assert plan.items == 2
    assert {n for n in ops if n.startswith(("scene", "ndwi", "out"))} == {
        "scene__1", "scene__2", "ndwi__1", "ndwi__2", "out__1", "out__2"
    }  # fmt: skip
    assert ops["out__2"].inputs == {"raster": ("ndwi__2",), "vectors": ("lakes",)}
    assert ops["out__2"].config["item"] == "S2_b" and ops["ndwi__2"].config["name"] == "ndwi_S2_b"
    assert ops["water"].inputs == {"raster": ("ndwi__1", "ndwi__2")} and not ops["water"].item
    assert (ops["plain"].item, ops["lakes"].inputs) == ("", {"raster": ("nd_plain",)})
