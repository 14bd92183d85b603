"""The index block (band math without a model): its math against numpy, its validation at the pipeline package, the
orchestrator and core, a real orchestrator run dataset -> index -> vectorize -> export, and a run through core that
never calls hosting."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent import futures
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import numpy as np
import pytest
import rasterio

from constellation.common.v1 import common_pb2 as c
from constellation.core.v1 import core_pb2, core_pb2_grpc
from constellation.orchestrator.v1 import orchestrator_pb2 as pb
from core_svc.server import build as build_core
from mesh import config
from mesh.errors import field_violations
from orchestrator_svc import blocks
from pipeline.convert import spec_from_proto
from pipeline.spec import DatasetView
from pipeline.validation import validate_spec
from tests.conftest import key_channel, rpc_error, service_env
from tests.orchestrator_scenes import BANDS, CRS, NODATA, write_scene
from tests.orchestrator_support import Orchestrator, orchestrator, orchestrator_env, s3_server  # noqa: F401 - fixtures
from tests.stac_schemas import assert_valid


def numpy_index(scene: Path, first: str, second: str) -> tuple[np.ndarray, np.ndarray]:
    """(first - second) / (first + second) from the file's digital numbers in float64, and where it is nodata."""
    with rasterio.open(scene) as src:
        a = src.read(BANDS.index(first) + 1).astype(np.float64)
        b = src.read(BANDS.index(second) + 1).astype(np.float64)
    nodata = (a == NODATA) | (b == NODATA) | (a + b == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a - b) / (a + b), nodata


def index_spec(
    dataset_id: str = "scene-1",
    *,
    index: c.IndexBlock | None = None,
    export_uri: str = "file:///tmp/out",
    vectorize: bool = True,
    dataset_bands: list[str] | None = None,
) -> c.PipelineSpec:
    """dataset -> index -> (vectorize) -> export."""
    blocks_ = [
        c.Block(id="scene", dataset=c.DatasetBlock(dataset_id=dataset_id, bands=dataset_bands or [])),
        c.Block(id="ndwi", index=index or c.IndexBlock(preset=c.SPECTRAL_INDEX_NDWI)),
        c.Block(id="out", export=c.ExportBlock(uri=export_uri)),
    ]
    edges = [("scene", "ndwi"), ("ndwi", "out")]
    if vectorize:
        blocks_.insert(2, c.Block(id="water", vectorize=c.VectorizeBlock(threshold=0.0, min_area_m2=0)))
        edges += [("ndwi", "water"), ("water", "out")]
    return c.PipelineSpec(blocks=blocks_, edges=[c.Edge(source_block_id=a, target_block_id=b) for a, b in edges])


@pytest.fixture(scope="module")
def scene_300(tmp_path_factory) -> Path:
    """300x300 px, [blue, green, red, nir] uint16 in EPSG:32725 with a lake, a river and a nodata corner."""
    return write_scene(tmp_path_factory.mktemp("scenes") / "scene-300.tif", 300)


# --------------------------------------------------------------------------- the math


def test_normalized_difference_values_mark_nodata_and_zero_sums_nan():
    first = np.array([[3, 0, 5, 2]], dtype=np.uint16)
    second = np.array([[1, 0, 5, 7]], dtype=np.uint16)
    invalid = np.array([[False, False, False, True]])
    got = blocks.normalized_difference_values(first, second, invalid)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got[0, :1], np.float32([0.5]))
    assert np.isnan(got[0, 1]) and got[0, 2] == 0 and np.isnan(got[0, 3])


@pytest.mark.parametrize("first, second", [("green", "nir"), ("nir", "red"), ("blue", "green")])
def test_index_raster_matches_numpy_window_by_window(tmp_path, scene_300, first, second):
    scene = blocks.inspect_scene(str(scene_300), BANDS)
    raster = blocks.normalized_difference(scene, first, second, tmp_path / "index.tif", "nd", strip_pixels=300 * 37)
    expected, nodata = numpy_index(scene_300, first, second)
    with rasterio.open(raster.path) as out, rasterio.open(scene_300) as src:
        assert (out.count, out.dtypes[0], out.crs, out.transform) == (1, "float32", src.crs, src.transform)
        assert np.isnan(out.nodata)
        got = out.read(1)
    np.testing.assert_allclose(got[~nodata], expected[~nodata], rtol=0, atol=1e-6)
    assert nodata.any() and np.isnan(got[nodata]).all()


# --------------------------------------------------------------------------- validation


def problems(spec: c.PipelineSpec, bands: tuple[str, ...] = tuple(BANDS)) -> dict[str, str]:
    found, order = validate_spec(spec_from_proto(spec), lambda i: DatasetView(i, "olinda", bands), lambda i: None)
    assert bool(order) == (not found)
    return {p.field: p.description for p in found}


def test_an_index_pipeline_needs_no_tile_model_or_stitch():
    assert problems(index_spec()) == {}
    assert problems(index_spec(index=c.IndexBlock(first_band="nir", second_band="red"), vectorize=False)) == {}


def test_the_bands_an_index_needs_must_be_in_the_scene():
    found = problems(index_spec(), bands=("blue", "green", "red"))
    assert found == {
        "blocks[1].index.preset": "ndwi = (green - nir) / (green + nir) needs band(s) nir, but dataset block 'scene' "
        "provides blue, green, red"
    }
    selected = problems(index_spec(index=c.IndexBlock(preset=c.SPECTRAL_INDEX_MNDWI), dataset_bands=["green", "nir"]))
    assert "needs band(s) swir1" in selected["blocks[1].index.preset"]
    named = problems(index_spec(index=c.IndexBlock(first_band="swir2", second_band="nir")))
    assert named == {
        "blocks[1].index.first_band": "band 'swir2' is not in the scene: dataset block 'scene' provides "
        "blue, green, red, nir"
    }


def test_index_band_names_are_checked():
    found = problems(index_spec(index=c.IndexBlock(first_band="nir")))
    assert found == {"blocks[1].index.second_band": "is required without a preset: a band name such as green or nir"}
    assert (
        "unknown band 'nir2'"
        in problems(index_spec(index=c.IndexBlock(first_band="nir2", second_band="red")))["blocks[1].index.first_band"]
    )
    assert (
        "same band"
        in problems(index_spec(index=c.IndexBlock(first_band="red", second_band="red")))["blocks[1].index.second_band"]
    )


def test_an_index_feeds_vectorize_and_export_but_not_a_model():
    spec = index_spec()
    spec.blocks.append(c.Block(id="m", model=c.ModelBlock(model_id="x")))
    spec.edges.append(c.Edge(source_block_id="ndwi", target_block_id="m"))
    found = problems(spec)
    assert "index block 'ndwi' produces raster, but model block 'm' takes tiles" in found["edges[4]"]


def test_a_scene_wired_straight_to_vectorize_is_told_to_add_an_index():
    spec = index_spec()
    spec.edges.append(c.Edge(source_block_id="scene", target_block_id="water"))
    found = problems(spec)
    assert found["edges[4]"].endswith("takes raster; put an index block between them")


def test_export_formats_name_both_raster_producers():
    spec = index_spec(vectorize=False)
    spec.blocks[2].export.formats.append(c.EXPORT_FORMAT_GEOJSON)
    from pipeline.validation import check_runnable

    found = check_runnable(spec_from_proto(spec), ["scene", "ndwi", "out"], lambda i: None)
    assert [p.description for p in found] == ["geojson needs a vectorize block's output; connect one to 'out'"]


# --------------------------------------------------------------------------- the orchestrator


def test_orchestrator_refuses_an_index_over_missing_bands(orchestrator, tmp_path, scene_300):
    request = pb.LaunchRunRequest(
        spec=index_spec(index=c.IndexBlock(preset=c.SPECTRAL_INDEX_NBR), export_uri=f"file://{tmp_path}/out"),
        datasets={"scene-1": pb.ResolvedDataset(uri=f"file://{scene_300}", bands=BANDS)},
    )
    error = rpc_error(orchestrator.stub.LaunchRun, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    [violation] = field_violations(error)
    assert violation.field == "spec.blocks[1].index.preset" and "needs band(s) swir2" in violation.description


def test_orchestrator_runs_dataset_index_vectorize_export(orchestrator, tmp_path, scene_300):
    out = tmp_path / "results"
    request = pb.LaunchRunRequest(
        spec=index_spec(export_uri=f"file://{out}"),
        datasets={"scene-1": pb.ResolvedDataset(uri=f"file://{scene_300}", bands=BANDS)},
    )
    run = orchestrator.wait(orchestrator.stub.LaunchRun(request).id)
    assert run.state == c.RUN_STATE_SUCCEEDED, run.state_message
    files = {
        o.media_type.split(";")[0]: Path(o.uri.removeprefix("file://"))
        for o in run.outputs
        if "profile=stac" not in o.media_type
    }
    assert files["image/tiff"] == out / run.id / "out" / "ndwi.tif"

    expected, nodata = numpy_index(scene_300, "green", "nir")
    with rasterio.open(files["image/tiff"]) as cog, rasterio.open(scene_300) as src:
        assert cog.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert cog.crs.to_string() == CRS and cog.transform == src.transform and cog.dtypes[0] == "float32"
        got = cog.read(1)
    np.testing.assert_allclose(got[~nodata], expected[~nodata], rtol=0, atol=1e-6)
    assert np.isnan(got[nodata]).all()

    geojson = json.loads(files["application/geo+json"].read_text())
    assert len(geojson["features"]) == 2  # the lake and the river: NDWI > 0
    water_m2 = float(((expected > 0) & ~nodata).sum()) * 100.0
    assert abs(sum(f["properties"]["area_m2"] for f in geojson["features"]) - water_m2) < 0.01 * water_m2
    assert files["image/png"].read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


# --------------------------------------------------------------------------- core, without hosting


class RecordingHosting:
    """A gRPC server where hosting would be that answers nothing and records every method called on it."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        calls = self.calls

        class Handler(grpc.GenericRpcHandler):
            def service(self, handler_call_details):
                calls.append(handler_call_details.method)
                return None  # UNIMPLEMENTED

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), handlers=[Handler()])
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()


@pytest.fixture
def core_without_hosting(tmp_path, orchestrator) -> Iterator[tuple[core_pb2_grpc.CoreServiceStub, RecordingHosting]]:
    hosting = RecordingHosting()
    env = service_env(
        tmp_path,
        DATABASE_URL=f"sqlite:///{tmp_path / 'core.db'}",
        CONSTELLATION_HOSTING_ADDR=f"127.0.0.1:{hosting.port}",
        CONSTELLATION_ORCHESTRATOR_ADDR=f"127.0.0.1:{orchestrator.server.port}",
    )
    server = build_core(config.load("core", env))
    server.start()
    channel = key_channel(f"127.0.0.1:{server.port}")
    try:
        yield core_pb2_grpc.CoreServiceStub(channel), hosting
    finally:
        channel.close()
        server.stop(0)
        hosting.server.stop(0)


def test_core_runs_an_index_pipeline_without_calling_hosting(core_without_hosting, tmp_path, scene_300):
    core, hosting = core_without_hosting
    dataset = core.CreateDataset(
        core_pb2.CreateDatasetRequest(
            dataset=core_pb2.Dataset(name="olinda", uri=f"file://{scene_300}", bands=BANDS, resolution_m=10)
        )
    )
    missing = index_spec(dataset.id, index=c.IndexBlock(preset=c.SPECTRAL_INDEX_MNDWI))
    create = core_pb2.CreatePipelineRequest(pipeline=core_pb2.Pipeline(name="x", spec=missing))
    error = rpc_error(core.CreatePipeline, create)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in field_violations(error)] == ["pipeline.spec.blocks[1].index.preset"]

    spec = index_spec(dataset.id, export_uri=f"file://{tmp_path}/results")
    pipeline = core.CreatePipeline(core_pb2.CreatePipelineRequest(pipeline=core_pb2.Pipeline(name="ndwi", spec=spec)))
    run = core.RunPipeline(core_pb2.RunPipelineRequest(pipeline_id=pipeline.id))
    deadline = time.monotonic() + 90
    while (run := core.GetRun(core_pb2.GetRunRequest(id=run.id))).state not in (
        c.RUN_STATE_SUCCEEDED,
        c.RUN_STATE_FAILED,
        c.RUN_STATE_CANCELED,
    ):
        assert time.monotonic() < deadline, "the run did not finish"
        time.sleep(0.1)
    assert run.state == c.RUN_STATE_SUCCEEDED, run.state_message
    assert {Path(o.uri).name for o in run.outputs} == {
        "ndwi.tif", "ndwi_preview.png", "ndwi_polygons.geojson", "item.json"
    }  # fmt: skip
    item = json.loads(
        Path(next(o.uri for o in run.outputs if o.uri.endswith("item.json")).removeprefix("file://")).read_text()
    )
    assert_valid(item)
    props = item["properties"]
    assert props["constellation:run_id"] == run.id and props["constellation:pipeline_id"] == pipeline.id
    assert props["constellation:pipeline_name"] == "ndwi" and "'ndwi'" in props["processing:lineage"]
    assert {link["href"] for link in item["links"] if link["rel"] == "derived_from"} == {f"file://{scene_300}"}
    # No acquisition time is known for a plain GeoTIFF dataset: the item is dated by the run.
    assert abs(datetime.fromisoformat(props["datetime"]) - run.create_time.ToDatetime(UTC)) < timedelta(minutes=5)
    assert [m for m in hosting.calls if "HostingService" in m] == []
