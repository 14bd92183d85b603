"""LaunchRun refuses bad specs and unusable inputs before any work starts, naming the problem:
INVALID_ARGUMENT with BadRequest field violations for the request's form and graph, FAILED_PRECONDITION with
PreconditionFailure details for scenes and destinations that cannot be used. No run is created."""

from __future__ import annotations

import os

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from constellation.common.v1 import common_pb2 as c
from constellation.orchestrator.v1 import orchestrator_pb2 as pb
from mesh.errors import field_violations
from orchestrator_svc import settings as orchestrator_settings
from tests.conftest import rpc_error
from tests.orchestrator_scenes import write_scene
from tests.orchestrator_support import orchestrator, s3_server, scene_512, water_request  # noqa: F401 - fixtures

ENDPOINT = "127.0.0.1:9"  # never called: every request here is refused before a run starts


def refused(orchestrator, request: pb.LaunchRunRequest, code: grpc.StatusCode) -> grpc.RpcError:
    error = rpc_error(orchestrator.stub.LaunchRun, request)
    assert error.code() == code, error.details()
    assert "Traceback" not in error.details()
    assert not orchestrator.stub.ListRuns(pb.ListRunsRequest()).runs, "no run may be created"
    return error


def preconditions(error: grpc.RpcError) -> list[tuple[str, str]]:
    status = rpc_status.from_call(error)
    found = []
    for detail in status.details:
        if detail.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
            failure = error_details_pb2.PreconditionFailure()
            detail.Unpack(failure)
            found += [(v.subject, v.description) for v in failure.violations]
    return found


@pytest.fixture
def valid(scene_512, tmp_path) -> pb.LaunchRunRequest:
    return water_request(f"file://{scene_512}", ENDPOINT, [f"file://{tmp_path}/out"])


def test_unknown_block_type_is_invalid(orchestrator, valid):
    valid.spec.blocks.add(id="mystery", label="a block type from a newer client")
    valid.spec.edges.add(source_block_id="mosaic", target_block_id="mystery")
    error = refused(orchestrator, valid, grpc.StatusCode.INVALID_ARGUMENT)
    violations = {v.field: v.description for v in field_violations(error)}
    assert "spec.blocks[6].config" in violations and "has no config" in violations["spec.blocks[6].config"]


def test_missing_dataset_is_invalid(orchestrator, valid):
    del valid.datasets["scene-1"]
    error = refused(orchestrator, valid, grpc.StatusCode.INVALID_ARGUMENT)
    [violation] = field_violations(error)
    assert violation.field == "spec.blocks[0].dataset.dataset_id" and "'scene-1'" in violation.description


def test_missing_model_is_invalid(orchestrator, valid):
    valid.spec.blocks[2].model.model_id = "unknown-model"
    error = refused(orchestrator, valid, grpc.StatusCode.INVALID_ARGUMENT)
    assert any(
        v.field == "spec.blocks[2].model.model_id" and "unknown-model" in v.description for v in field_violations(error)
    )


def test_incompatible_edge_is_invalid_and_says_what_fits(orchestrator, valid):
    valid.spec.edges[1].target_block_id = "mosaic"  # tiles -> stitch skips the model
    error = refused(orchestrator, valid, grpc.StatusCode.INVALID_ARGUMENT)
    descriptions = [v.description for v in field_violations(error) if v.field == "spec.edges[1]"]
    assert descriptions and "put a model block between them" in descriptions[0]


def test_bad_uris_and_endpoints_are_invalid(orchestrator, valid):
    valid.datasets["scene-1"].uri = "http://example.invalid/scene.tif"
    valid.models["ndwi"].endpoints[:] = ["no-port-here"]
    valid.spec.blocks[5].export.uri = "ftp://somewhere/out"
    error = refused(orchestrator, valid, grpc.StatusCode.INVALID_ARGUMENT)
    fields = {v.field for v in field_violations(error)}
    assert {'datasets["scene-1"].uri', 'models["ndwi"].endpoints[0]', "spec.blocks[5].export.uri"} <= fields


@pytest.mark.parametrize("endpoint", ["10.0.0.5:8001", "example.org:443", "[::ffff:7f00:1]:8001", "169.254.169.254:80"])
def test_model_endpoints_only_on_the_allowed_hosts(orchestrator, valid, endpoint):
    """Issue 12: LaunchRun sent tensors to any host:port. Only CONSTELLATION_ORCHESTRATOR_MODEL_HOSTS (default the
    loopback, where hosting's replicas listen) may serve a model."""
    valid.models["ndwi"].endpoints[:] = [ENDPOINT, endpoint]
    error = refused(orchestrator, valid, grpc.StatusCode.INVALID_ARGUMENT)
    [violation] = field_violations(error)
    assert violation.field == 'models["ndwi"].endpoints[1]', violation
    assert "CONSTELLATION_ORCHESTRATOR_MODEL_HOSTS" in violation.description


def test_model_hosts_may_name_a_domain_suffix():
    settings = orchestrator_settings.load({"CONSTELLATION_ORCHESTRATOR_MODEL_HOSTS": "127.0.0.1,.svc"})
    assert settings.model_host_allowed("ndwi-water-predictor.models.svc")
    assert settings.model_host_allowed("127.0.0.1") and not settings.model_host_allowed("localhost")
    assert not settings.model_host_allowed("svc") and not settings.model_host_allowed("evil.svc.example.org")


def test_uris_urllib_cannot_split_are_invalid(orchestrator, valid):
    """Found by tests/test_fuzz_rpcs.py: urllib raises ValueError on an unclosed IPv6 bracket (was INTERNAL)."""
    valid.datasets["scene-1"].uri = "s3://[bucket/scene.tif"
    valid.spec.blocks[5].export.uri = "file://[::1/out"
    error = refused(orchestrator, valid, grpc.StatusCode.INVALID_ARGUMENT)
    assert {'datasets["scene-1"].uri', "spec.blocks[5].export.uri"} <= {v.field for v in field_violations(error)}


@pytest.mark.parametrize("crs", ["EPSG:43I6", "EPSG:\x00326", "EPSG:"])
def test_an_output_crs_rasterio_cannot_parse_is_invalid(orchestrator, valid, crs):
    """Found by tests/test_fuzz_rpcs.py: rasterio reads "EPSG:<code>" with int(), a ValueError (was INTERNAL)."""
    valid.spec.blocks[4].vectorize.crs = crs
    error = refused(orchestrator, valid, grpc.StatusCode.INVALID_ARGUMENT)
    [violation] = field_violations(error)
    assert violation.field == "spec.blocks[4].vectorize.crs" and "PROJ knows" in violation.description


def test_model_output_stitch_cannot_place_is_invalid(orchestrator, valid):
    valid.models["ndwi"].outputs[0].shape[:] = [10]  # a classifier's scores per tile
    error = refused(orchestrator, valid, grpc.StatusCode.INVALID_ARGUMENT)
    [violation] = field_violations(error)
    assert violation.field == "spec.blocks[2].model.model_id" and "per-pixel output" in violation.description


def test_export_format_without_its_input_is_invalid(orchestrator, valid):
    del valid.spec.edges[-1]  # polygons no longer feed the export
    del valid.spec.blocks[4]
    del valid.spec.edges[3]
    valid.spec.blocks[4].export.formats.append(c.EXPORT_FORMAT_GEOJSON)
    error = refused(orchestrator, valid, grpc.StatusCode.INVALID_ARGUMENT)
    [violation] = field_violations(error)
    assert violation.field == "spec.blocks[4].export.formats[0]" and "vectorize" in violation.description


def test_missing_scene_file_is_a_failed_precondition(orchestrator, valid, tmp_path):
    valid.datasets["scene-1"].uri = f"file://{tmp_path}/nowhere.tif"
    error = refused(orchestrator, valid, grpc.StatusCode.FAILED_PRECONDITION)
    assert preconditions(error) == [('datasets["scene-1"].uri', f"file://{tmp_path}/nowhere.tif: no such object")]


def test_unreadable_raster_is_a_failed_precondition(orchestrator, valid, tmp_path):
    junk = tmp_path / "junk.tif"
    junk.write_bytes(b"this is not a GeoTIFF\n" * 100)
    valid.datasets["scene-1"].uri = f"file://{junk}"
    error = refused(orchestrator, valid, grpc.StatusCode.FAILED_PRECONDITION)
    [(subject, description)] = preconditions(error)
    assert subject == 'datasets["scene-1"].uri' and "cannot be read as a raster" in description


def test_band_count_mismatch_is_a_failed_precondition(orchestrator, valid):
    valid.datasets["scene-1"].bands[:] = ["blue", "green", "nir"]
    error = refused(orchestrator, valid, grpc.StatusCode.FAILED_PRECONDITION)
    [(_, description)] = preconditions(error)
    assert "has 4 band(s) but the dataset lists 3" in description


def test_missing_s3_object_and_bucket_are_failed_preconditions(orchestrator, valid, s3_server):
    bucket = f"empty-{os.urandom(3).hex()}"
    s3_server.client().create_bucket(Bucket=bucket)
    valid.datasets["scene-1"].uri = f"s3://{bucket}/missing.tif"
    valid.spec.blocks[5].export.uri = "s3://no-such-bucket-here/out"
    error = refused(orchestrator, valid, grpc.StatusCode.FAILED_PRECONDITION)
    problems = dict(preconditions(error))
    assert problems['datasets["scene-1"].uri'] == f"s3://{bucket}/missing.tif: no such object"
    assert "does not exist" in problems["spec.blocks[5].export.uri"]


def test_s3_scene_that_is_not_a_raster_is_a_failed_precondition(orchestrator, valid, s3_server, tmp_path):
    bucket = f"junk-{os.urandom(3).hex()}"
    client = s3_server.client()
    client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=bucket, Key="scene.tif", Body=b"not a tiff" * 1000)
    valid.datasets["scene-1"].uri = f"s3://{bucket}/scene.tif"
    error = refused(orchestrator, valid, grpc.StatusCode.FAILED_PRECONDITION)
    [(_, description)] = preconditions(error)
    assert "cannot be read as a raster" in description


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_raster_without_georeferencing_is_a_failed_precondition(orchestrator, valid, tmp_path):
    import numpy as np
    import rasterio

    plain = tmp_path / "plain.tif"
    with rasterio.open(plain, "w", driver="GTiff", width=64, height=64, count=4, dtype="uint16") as dst:
        dst.write(np.ones((4, 64, 64), dtype="uint16"))
    valid.datasets["scene-1"].uri = f"file://{plain}"
    error = refused(orchestrator, valid, grpc.StatusCode.FAILED_PRECONDITION)
    [(_, description)] = preconditions(error)
    assert "coordinate reference system" in description


def test_bad_run_ids_page_tokens_and_unknown_runs(orchestrator, valid, tmp_path):
    valid.run_id = "not a valid id!"
    assert rpc_error(orchestrator.stub.LaunchRun, valid).code() == grpc.StatusCode.INVALID_ARGUMENT
    assert rpc_error(orchestrator.stub.GetRun, pb.GetRunRequest(id="run_nope")).code() == grpc.StatusCode.NOT_FOUND
    assert (
        rpc_error(orchestrator.stub.CancelRun, pb.CancelRunRequest(id="run_nope")).code() == grpc.StatusCode.NOT_FOUND
    )
    watch = orchestrator.stub.WatchRun(pb.WatchRunRequest(run_id="run_nope"))
    with pytest.raises(grpc.RpcError) as raised:
        list(watch)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    bad_token = rpc_error(orchestrator.stub.ListRuns, pb.ListRunsRequest(page_token="run_nope"))
    assert bad_token.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_small_scene_still_validates(orchestrator, tmp_path):
    """A scene smaller than one tile is fine at launch (it is zero-padded to the model's tile size)."""
    scene = write_scene(tmp_path / "small.tif", 100)
    request = water_request(f"file://{scene}", ENDPOINT, [f"file://{tmp_path}/out"], overlap_px=0)
    request.spec.blocks[2].model.model_id = "missing"  # refused later, after the scene passed
    error = refused(orchestrator, request, grpc.StatusCode.INVALID_ARGUMENT)
    assert all("scene" not in v.field for v in field_violations(error))
