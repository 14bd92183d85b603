"""Pipeline graphs: ValidatePipeline finds every problem and places it; CreatePipeline refuses invalid specs."""

from __future__ import annotations

import grpc
import pytest

from constellation.common.v1 import common_pb2
from constellation.core.v1 import core_pb2
from mesh.errors import field_violations
from tests.catalog_data import add_dataset, register, water_spec
from tests.conftest import rpc_error


@pytest.fixture
def refs(core):
    return add_dataset(core).id, register(core).id


def validate(core, spec):
    return core.ValidatePipeline(core_pb2.ValidatePipelineRequest(spec=spec))


def test_valid_pipeline_round_trips_and_orders_its_blocks(core, refs):
    spec = water_spec(*refs)
    answer = validate(core, spec)
    assert answer.valid and not answer.problems
    order = list(answer.topological_order)
    for edge in spec.edges:
        assert order.index(edge.source_block_id) < order.index(edge.target_block_id)

    pipeline = core.CreatePipeline(core_pb2.CreatePipelineRequest(pipeline=core_pb2.Pipeline(name="water", spec=spec)))
    assert pipeline.id.startswith("pl_")
    assert core.GetPipeline(core_pb2.GetPipelineRequest(id=pipeline.id)).spec == spec
    assert [p.name for p in core.ListPipelines(core_pb2.ListPipelinesRequest()).pipelines] == ["water"]
    again = rpc_error(
        core.CreatePipeline, core_pb2.CreatePipelineRequest(pipeline=core_pb2.Pipeline(name="water", spec=spec))
    )
    assert again.code() == grpc.StatusCode.ALREADY_EXISTS


def problems_of(core, spec) -> list[common_pb2.PipelineProblem]:
    answer = validate(core, spec)
    assert not answer.valid and not answer.topological_order
    return list(answer.problems)


def test_cycle_is_reported(core, refs):
    spec = water_spec(*refs)
    spec.edges.append(common_pb2.Edge(source_block_id="mosaic", target_block_id="tiles"))
    problems = problems_of(core, spec)
    assert any("cycle" in p.description for p in problems), problems


def test_dangling_edge_names_the_edge_field(core, refs):
    spec = water_spec(*refs)
    spec.edges.append(common_pb2.Edge(source_block_id="mosaic", target_block_id="ghost"))
    [problem] = problems_of(core, spec)
    assert problem.field == "edges[6].target_block_id" and problem.edge_index == 6 and "ghost" in problem.description


def test_incompatible_edge_says_what_to_insert(core, refs):
    dataset_id, model_id = refs
    spec = common_pb2.PipelineSpec(
        blocks=[
            common_pb2.Block(id="scene", dataset=common_pb2.DatasetBlock(dataset_id=dataset_id)),
            common_pb2.Block(id="water", model=common_pb2.ModelBlock(model_id=model_id)),
            common_pb2.Block(id="out", export=common_pb2.ExportBlock(uri="file:///tmp/out")),
        ],
        edges=[
            common_pb2.Edge(source_block_id="scene", target_block_id="water"),
            common_pb2.Edge(source_block_id="water", target_block_id="out"),
        ],
    )
    problems = problems_of(core, spec)
    first = next(p for p in problems if p.edge_index == 0)
    assert first.block_id == "water" and "put a tile block between them" in first.description
    second = next(p for p in problems if p.edge_index == 1)
    assert "put a stitch block between them" in second.description


def test_missing_references_and_bad_settings_are_placed_on_their_blocks(core, refs):
    spec = water_spec("ds_missing", "mdl_missing", export_uri="ftp://nowhere")
    spec.blocks[1].tile.overlap_px = 200
    problems = {p.field: p for p in problems_of(core, spec)}
    assert problems["blocks[0].dataset.dataset_id"].block_id == "scene"
    assert problems["blocks[2].model.model_id"].block_id == "water"
    assert problems["blocks[1].tile.overlap_px"].block_id == "tiles"
    assert problems["blocks[5].export.uri"].block_id == "out"


def test_model_must_receive_its_bands_and_tile_size(core, refs):
    dataset_id, _ = refs
    swir_model = register(
        core,
        name="swir-only",
        input=common_pb2.ModelInputSpec(bands=["swir1", "swir2"], tile_size_px=128, dtype="FP32"),
    )
    spec = water_spec(dataset_id, swir_model.id)
    problems = problems_of(core, spec)
    band_problem = next(p for p in problems if p.block_id == "water")
    assert "missing swir1, swir2" in band_problem.description
    size_problem = next(p for p in problems if p.block_id == "tiles")
    assert "128px" in size_problem.description and size_problem.field == "blocks[1].tile.tile_size_px"


def test_wiring_problems(core, refs):
    spec = water_spec(*refs)
    del spec.edges[4:]  # mosaic -> out, polygons -> out gone: polygons feeds nothing, out has no input
    spec.blocks.add(id="loose")  # no config
    spec.blocks.add(id="scene", tile=common_pb2.TileBlock())  # duplicate id
    problems = problems_of(core, spec)
    descriptions = " | ".join(p.description for p in problems)
    assert "'polygons' is not used" in descriptions
    assert "export block 'out' has no input" in descriptions
    assert "'loose' has no config" in descriptions
    assert "'scene' is used twice" in descriptions


def test_empty_spec(core):
    [problem] = problems_of(core, common_pb2.PipelineSpec())
    assert problem.field == "blocks"


def test_create_pipeline_rejects_invalid_specs_with_field_paths(core, refs):
    spec = water_spec(refs[0], "mdl_missing")
    error = rpc_error(
        core.CreatePipeline, core_pb2.CreatePipelineRequest(pipeline=core_pb2.Pipeline(name="broken", spec=spec))
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "pipeline.spec.blocks[2].model.model_id" in [v.field for v in field_violations(error)]
    assert core.ListPipelines(core_pb2.ListPipelinesRequest()).pipelines == []


def test_datasets_and_models_in_use_cannot_be_deleted(core, refs):
    dataset_id, model_id = refs
    pipeline = core.CreatePipeline(
        core_pb2.CreatePipelineRequest(pipeline=core_pb2.Pipeline(name="water", spec=water_spec(*refs)))
    )
    for call, request in [
        (core.DeleteDataset, core_pb2.DeleteDatasetRequest(id=dataset_id)),
        (core.DeleteModel, core_pb2.DeleteModelRequest(id=model_id)),
    ]:
        error = rpc_error(call, request)
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "water" in error.details()
    core.DeletePipeline(core_pb2.DeletePipelineRequest(id=pipeline.id))
    core.DeleteDataset(core_pb2.DeleteDatasetRequest(id=dataset_id))
    core.DeleteModel(core_pb2.DeleteModelRequest(id=model_id))


def test_run_rpcs_validate_their_requests(core):
    cases = [
        (core.RunPipeline, core_pb2.RunPipelineRequest(), grpc.StatusCode.INVALID_ARGUMENT, "pipeline_id"),
        (core.RunPipeline, core_pb2.RunPipelineRequest(pipeline_id="pl_nope"), grpc.StatusCode.NOT_FOUND, "pl_nope"),
        (core.GetRun, core_pb2.GetRunRequest(id="run_nope"), grpc.StatusCode.NOT_FOUND, "run_nope"),
        (core.CancelRun, core_pb2.CancelRunRequest(id="run_nope"), grpc.StatusCode.NOT_FOUND, "run_nope"),
        (
            core.ListRuns,
            core_pb2.ListRunsRequest(filter='state = "sleeping"'),
            grpc.StatusCode.INVALID_ARGUMENT,
            "sleeping",
        ),
        (core.ListRuns, core_pb2.ListRunsRequest(filter='colour = "red"'), grpc.StatusCode.INVALID_ARGUMENT, "colour"),
    ]
    for call, request, code, mentioned in cases:
        error = rpc_error(call, request)
        assert error.code() == code and mentioned in error.details(), (request, error.details())
    for request, code in [
        (core_pb2.WatchRunRequest(run_id="run_nope"), grpc.StatusCode.NOT_FOUND),
        (core_pb2.WatchRunRequest(), grpc.StatusCode.INVALID_ARGUMENT),
        (core_pb2.WatchRunRequest(run_id="run_x", after_sequence=-1), grpc.StatusCode.INVALID_ARGUMENT),
    ]:
        assert rpc_error(lambda r=request: list(core.WatchRun(r))).code() == code


def test_a_run_whose_hosting_is_unreachable_fails_on_its_stream(core, refs):
    """The core fixture's peers point at closed ports: the run ends FAILED, saying so, instead of hanging."""
    pipeline = core.CreatePipeline(
        core_pb2.CreatePipelineRequest(pipeline=core_pb2.Pipeline(name="unreachable", spec=water_spec(*refs)))
    )
    run = core.RunPipeline(core_pb2.RunPipelineRequest(pipeline_id=pipeline.id))
    assert run.state == common_pb2.RUN_STATE_QUEUED and run.pipeline_id == pipeline.id
    events = list(core.WatchRun(core_pb2.WatchRunRequest(run_id=run.id), timeout=60))
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert (
        events[0].type == common_pb2.RUN_EVENT_TYPE_RUN_QUEUED
        and events[-1].type == common_pb2.RUN_EVENT_TYPE_RUN_FAILED
    )
    assert events[-1].source == "hosting" and "hosting is unreachable" in events[-1].message
    final = core.GetRun(core_pb2.GetRunRequest(id=run.id))
    assert final.state == common_pb2.RUN_STATE_FAILED and final.state_message.startswith(
        "hosting: hosting is unreachable"
    )
    assert final.end_time.seconds > 0
    # Replaying from the middle gives the rest, and nothing more.
    assert [e.sequence for e in core.WatchRun(core_pb2.WatchRunRequest(run_id=run.id, after_sequence=1))] == [
        e.sequence for e in events[1:]
    ]
    listed = core.ListRuns(core_pb2.ListRunsRequest(filter=f'pipeline_id = "{pipeline.id}" AND state = "failed"')).runs
    assert [r.id for r in listed] == [run.id]
    error = rpc_error(core.CancelRun, core_pb2.CancelRunRequest(id=run.id))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "already ended" in error.details()
