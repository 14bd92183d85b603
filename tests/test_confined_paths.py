"""Every path confined (issue 12): dataset URIs under the data roots, export URIs under the export roots, S3 URIs
in allowed buckets, model output names that cannot leave a folder. Core refuses at CreateDataset, UpdateDataset,
CreatePipeline and ValidatePipeline; the orchestrator again at LaunchRun; the refusal reads the same whatever is (or
is not) at the path, so it tells a client nothing about the host."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from dagster import Failure
from google.protobuf.field_mask_pb2 import FieldMask

from clients.roots import SAMPLE_DATA, StorageRoots
from constellation.common.v1 import common_pb2 as c
from constellation.core.v1 import core_pb2, core_pb2_grpc
from constellation.orchestrator.v1 import orchestrator_pb2 as pb
from core_svc.server import build as build_core
from mesh import config
from mesh.config import ConfigError
from mesh.errors import field_violations
from model_runtime.manifest import ManifestError, parse
from orchestrator_svc.ops import _scratch_file
from tests.conftest import key_channel, rpc_error, service_env
from tests.orchestrator_scenes import BANDS, write_scene
from tests.orchestrator_support import Orchestrator, orchestrator_env, water_request

# Paths outside every root, each something different on the host: a file, a folder, a device, nothing, a way up.
OUTSIDE = ["file:///etc/passwd", "file:///etc", "file:///dev/zero", "file:///no/such/scene.tif"]
HOST_WORDS = ("exist", "no such", "not found", "folder", "directory", "device", "is a file", "not a geotiff")


@pytest.fixture
def places(tmp_path) -> dict[str, Path]:
    found = {"data": tmp_path / "data", "exports": tmp_path / "exports"}
    for path in found.values():
        path.mkdir()
    return found


def roots_env(places: dict[str, Path]) -> dict[str, str]:
    return {
        "CONSTELLATION_DATA_ROOTS": str(places["data"]),
        "CONSTELLATION_EXPORT_ROOTS": str(places["exports"]),
        "CONSTELLATION_S3_BUCKETS": "scenes",
    }


@pytest.fixture
def core(tmp_path, places, monkeypatch) -> Iterator[core_pb2_grpc.CoreServiceStub]:
    for key, value in roots_env(places).items():
        monkeypatch.setenv(key, value)  # core reads its own settings from the process environment
    server = build_core(config.load("core", service_env(tmp_path, DATABASE_URL=f"sqlite:///{tmp_path / 'core.db'}")))
    server.start()
    channel = key_channel(f"127.0.0.1:{server.port}")
    yield core_pb2_grpc.CoreServiceStub(channel)
    channel.close()
    server.stop(0)


def create_dataset(core, uri: str, name: str = "scene") -> core_pb2.Dataset:
    dataset = core_pb2.Dataset(name=name, uri=uri, bands=["green", "nir"])
    return core.CreateDataset(core_pb2.CreateDatasetRequest(dataset=dataset))


def refusal(error: grpc.RpcError, field: str, uri: str) -> str:
    """The one violation's description, with the URI the client sent taken out."""
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    [violation] = field_violations(error)
    assert violation.field == field
    description = violation.description.replace(repr(uri), "URI")
    assert not any(word in description.lower() for word in HOST_WORDS), description
    return description


# --------------------------------------------------------------------------- core: datasets


def test_dataset_outside_the_data_roots_is_refused_alike_whatever_is_there(core, places):
    (places["data"] / "escape.tif").symlink_to("/etc/passwd")
    uris = [*OUTSIDE, f"file://{places['data']}/../../../etc/passwd", f"file://{places['data']}/escape.tif"]
    descriptions = {refusal(rpc_error(create_dataset, core, uri), "dataset.uri", uri) for uri in uris}
    assert len(descriptions) == 1, descriptions
    assert "CONSTELLATION_DATA_ROOTS" in descriptions.pop()
    assert not core.ListDatasets(core_pb2.ListDatasetsRequest()).datasets


def test_dataset_inside_a_data_root_or_allowed_bucket_is_accepted(core, places):
    inside = create_dataset(core, f"file://{places['data']}/sub/not-there-yet.tif")
    assert inside.uri.endswith("not-there-yet.tif")  # core does not read the scene; only its place is checked
    assert create_dataset(core, "s3://scenes/olinda.tif", "in-bucket").uri == "s3://scenes/olinda.tif"
    error = rpc_error(create_dataset, core, "s3://other-bucket/olinda.tif", "other")
    assert "CONSTELLATION_S3_BUCKETS" in refusal(error, "dataset.uri", "s3://other-bucket/olinda.tif")
    traversal = "s3://scenes/a/../b.tif"
    assert "'..'" in refusal(rpc_error(create_dataset, core, traversal, "dots"), "dataset.uri", traversal)


def test_update_dataset_cannot_move_it_outside_the_data_roots(core, places):
    created = create_dataset(core, f"file://{places['data']}/scene.tif")
    patch = core_pb2.Dataset(id=created.id, uri="file:///etc/shadow")
    update = core_pb2.UpdateDatasetRequest(dataset=patch, update_mask=FieldMask(paths=["uri"]))
    refusal(rpc_error(core.UpdateDataset, update), "dataset.uri", "file:///etc/shadow")
    assert core.GetDataset(core_pb2.GetDatasetRequest(id=created.id)).uri == created.uri


# --------------------------------------------------------------------------- core: pipelines


def index_spec(dataset_id: str, export_uri: str) -> c.PipelineSpec:
    blocks = [
        c.Block(id="scene", dataset=c.DatasetBlock(dataset_id=dataset_id)),
        c.Block(id="ndwi", index=c.IndexBlock(preset=c.SPECTRAL_INDEX_NDWI)),
        c.Block(id="out", export=c.ExportBlock(uri=export_uri, formats=[c.EXPORT_FORMAT_COG])),
    ]
    edges = [
        c.Edge(source_block_id="scene", target_block_id="ndwi"),
        c.Edge(source_block_id="ndwi", target_block_id="out"),
    ]
    return c.PipelineSpec(blocks=blocks, edges=edges)


def test_export_outside_the_export_roots_is_refused_by_validate_and_create(core, places):
    dataset = create_dataset(core, f"file://{places['data']}/scene.tif")
    field = "blocks[2].export.uri"
    for uri in ("file:///etc/cron.d", "file:///root", f"file://{places['data']}", "s3://other-bucket/out"):
        check = core.ValidatePipeline(core_pb2.ValidatePipelineRequest(spec=index_spec(dataset.id, uri)))
        assert not check.valid and [p.field for p in check.problems] == [field], uri
        pipeline = core_pb2.Pipeline(name="escape", spec=index_spec(dataset.id, uri))
        error = rpc_error(core.CreatePipeline, core_pb2.CreatePipelineRequest(pipeline=pipeline))
        refusal(error, f"pipeline.spec.{field}", uri)
    for uri in (f"file://{places['exports']}/water", "s3://scenes/results/"):
        check = core.ValidatePipeline(core_pb2.ValidatePipelineRequest(spec=index_spec(dataset.id, uri)))
        assert check.valid, [(p.field, p.description) for p in check.problems]


# --------------------------------------------------------------------------- model output names


@pytest.mark.parametrize("name", ["../../escape", "a/b", "..", "x..y", "/abs", ".hidden", "a" * 65])
def test_model_output_named_like_a_path_is_refused_at_registration(core, name):
    model = core_pb2.Model(
        name="pathy",
        version="1.0.0",
        task=c.MODEL_TASK_SEGMENTATION,
        source="/models/pathy",
        input=c.ModelInputSpec(bands=["green", "nir"], tile_size_px=256, dtype="FP32", value_max=1),
        outputs=[c.ModelOutputSpec(name=name, dtype="FP32", shape=[1, 256, 256])],
    )
    error = rpc_error(core.RegisterModel, core_pb2.RegisterModelRequest(model=model))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in field_violations(error)] == ["model.outputs[0].name"]


def test_manifest_refuses_an_output_named_like_a_path(tmp_path):
    (tmp_path / "model.py").write_text("class M: ...\n")
    manifest = {
        "name": "pathy",
        "version": "1.0.0",
        "task": "segmentation",
        "entrypoint": "model:M",
        "input": {"bands": ["green", "nir"], "dtype": "FP32"},
        "outputs": [{"name": "../../../tmp/escape", "dtype": "FP32", "shape": [1, 8, 8]}],
    }
    with pytest.raises(ManifestError) as raised:
        parse(manifest, tmp_path)
    assert [p.field for p in raised.value.problems] == ["outputs[0].name"]


def test_orchestrator_builds_no_scratch_path_that_leaves_its_folder(tmp_path):
    folder = tmp_path / "run" / "mosaic"
    folder.mkdir(parents=True)
    assert _scratch_file(folder, "water_probability.tif") == folder / "water_probability.tif"
    for name in ("../../escape.tif", "../mosaic2/x.tif", "sub/x.tif", "", "/etc/x.tif"):
        with pytest.raises(Failure):
            _scratch_file(folder, name)


# --------------------------------------------------------------------------- the orchestrator checks again


@pytest.fixture
def orchestrator(tmp_path, places) -> Iterator[Orchestrator]:
    orch = Orchestrator(orchestrator_env(tmp_path / "home", **roots_env(places)))
    yield orch
    orch.stop()


def launch_index(orchestrator, scene_uri: str, export_uri: str, run_id: str = "") -> pb.Run:
    request = pb.LaunchRunRequest(
        run_id=run_id,
        spec=index_spec("scene-1", export_uri),
        datasets={"scene-1": pb.ResolvedDataset(uri=scene_uri, bands=BANDS)},
    )
    return orchestrator.stub.LaunchRun(request)


def test_launch_refuses_scenes_outside_the_data_roots_alike(orchestrator, places):
    export = f"file://{places['exports']}"
    (places["data"] / "escape.tif").symlink_to("/etc/passwd")
    descriptions = set()
    for uri in [*OUTSIDE, f"file://{places['data']}/escape.tif", "s3://other-bucket/scene.tif"]:
        error = rpc_error(launch_index, orchestrator, uri, export)
        descriptions.add(refusal(error, 'datasets["scene-1"].uri', uri))
    assert len(descriptions) == 2, descriptions  # one for folders, one for buckets
    assert not orchestrator.stub.ListRuns(pb.ListRunsRequest()).runs


def test_launch_refuses_exports_outside_the_export_roots(orchestrator, places):
    scene = write_scene(places["data"] / "scene.tif", 64)
    for uri in ("file:///etc/cron.d", f"file://{places['exports']}/../elsewhere", "s3://other-bucket/out"):
        error = rpc_error(launch_index, orchestrator, f"file://{scene}", uri)
        refusal(error, "spec.blocks[2].export.uri", uri)
    assert not orchestrator.stub.ListRuns(pb.ListRunsRequest()).runs


def test_launch_refuses_a_model_output_named_like_a_path(orchestrator, places):
    scene = write_scene(places["data"] / "scene.tif", 64)
    request = water_request(f"file://{scene}", "127.0.0.1:9", [f"file://{places['exports']}"])
    request.models["ndwi"].outputs[0].name = "../../../escape"
    error = rpc_error(orchestrator.stub.LaunchRun, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in field_violations(error)] == ['models["ndwi"].outputs[0].name']


def test_a_run_inside_the_roots_exports_under_them(orchestrator, places):
    scene = write_scene(places["data"] / "scene.tif", 64)
    run = launch_index(orchestrator, f"file://{scene}", f"file://{places['exports']}", run_id="inside")
    done = orchestrator.wait(run.id)
    assert done.state == c.RUN_STATE_SUCCEEDED, done.state_message
    written = sorted(p.name for p in (places["exports"] / "inside" / "out").iterdir())
    assert written == ["item.json", "manifest.json", "ndwi.tif"]  # the COG, its STAC item, the manifest


def test_an_export_through_a_link_under_the_export_root_writes_nothing_outside(orchestrator, places, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (places["exports"] / "linked").symlink_to(elsewhere)  # the run's folder under the prefix leads out of the root
    scene = write_scene(places["data"] / "scene.tif", 64)
    run = launch_index(orchestrator, f"file://{scene}", f"file://{places['exports']}", run_id="linked")
    done = orchestrator.wait(run.id)
    assert done.state == c.RUN_STATE_FAILED and "CONSTELLATION_EXPORT_ROOTS" in done.state_message, done.state_message
    assert not list(elsewhere.rglob("*"))


def test_a_scene_swapped_for_a_link_after_launch_is_not_read(orchestrator, places):
    scene = write_scene(places["data"] / "scene.tif", 64)
    run = launch_index(orchestrator, f"file://{scene}", f"file://{places['exports']}", run_id="swapped")
    scene.unlink()  # the worker starts in a process of its own, well after LaunchRun answers
    scene.symlink_to("/etc/passwd")
    done = orchestrator.wait(run.id)
    assert done.state == c.RUN_STATE_FAILED and "CONSTELLATION_DATA_ROOTS" in done.state_message, done.state_message
    assert not any(word in done.state_message.lower() for word in HOST_WORDS), done.state_message


# --------------------------------------------------------------------------- the settings


def test_default_roots_are_the_home_and_the_sample_scenes(tmp_path):
    roots = StorageRoots.from_env({"CONSTELLATION_HOME": str(tmp_path)})
    assert roots.data_roots == (tmp_path / "data", SAMPLE_DATA)
    assert roots.export_roots == (tmp_path / "outputs",)
    # `make demo`'s scene and the agent's default export destination are allowed as they are.
    assert roots.refusal((SAMPLE_DATA / "L7_ETMs.tif").as_uri(), "data") is None
    assert roots.refusal(f"file://{tmp_path / 'outputs'}", "export") is None
    assert roots.refusal("file:///etc/passwd", "data") is not None
    assert roots.refusal("s3://any-bucket/scene.tif", "data") is not None  # no bucket unless listed
    assert StorageRoots.from_env({"CONSTELLATION_S3_BUCKETS": "*"}).refusal("s3://any/key.tif", "export") is None


def test_a_relative_root_stops_the_service():
    with pytest.raises(ConfigError, match="CONSTELLATION_DATA_ROOTS"):
        StorageRoots.from_env({"CONSTELLATION_DATA_ROOTS": "data"})
    with pytest.raises(ConfigError, match="CONSTELLATION_EXPORT_ROOTS"):
        StorageRoots.from_env({"CONSTELLATION_EXPORT_ROOTS": "/ok,relative"})


def test_paths_that_cannot_be_resolved_are_refused():
    roots = StorageRoots.from_env({"CONSTELLATION_DATA_ROOTS": "/"})
    assert roots.refusal("file:///data/scene\x00.tif", "data") is not None
