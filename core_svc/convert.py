"""Protobuf <-> domain for core's resources. The only module here that knows both."""

from __future__ import annotations

from google.protobuf import json_format

from constellation.common.v1 import common_pb2
from constellation.core.v1 import core_pb2
from core_svc.domain import (
    Block,
    BoundingBox,
    Dataset,
    Edge,
    InputSpec,
    Model,
    ModelCard,
    OutputSpec,
    Pipeline,
    PipelineSpec,
    Problem,
    Run,
)
from mesh.timestamps import to_timestamp



def _enum_suffix(enum_type, value: int, prefix: str) -> str:  # type: ignore[no-untyped-def]
    """MODEL_TASK_SEGMENTATION -> "segmentation"; the zero value -> ""."""
    return "" if value == 0 else enum_type.Name(value).removeprefix(prefix).lower()


def _enum_value(enum_type, name: str, prefix: str) -> int:  # type: ignore[no-untyped-def]
    return enum_type.Value(prefix + name.upper()) if name else 0


def dataset_from_proto(message: core_pb2.Dataset) -> Dataset:
    box = message.bbox
    return Dataset(
        id=message.id,
        name=message.name,
        description=message.description,
        uri=message.uri,
        sensor=message.sensor,
        bands=list(message.bands),
        resolution_m=message.resolution_m,
        bbox=BoundingBox(box.min_x, box.min_y, box.max_x, box.max_y, box.crs or "EPSG:4326") if message.HasField("bbox") else None,
        tags=list(message.tags),
    )


def dataset_to_proto(dataset: Dataset) -> core_pb2.Dataset:
    box = dataset.bbox
    return core_pb2.Dataset(
        id=dataset.id,
        name=dataset.name,
        description=dataset.description,
        uri=dataset.uri,
        sensor=dataset.sensor,
        bands=dataset.bands,
        resolution_m=dataset.resolution_m,
        bbox=common_pb2.BoundingBox(min_x=box.min_x, min_y=box.min_y, max_x=box.max_x, max_y=box.max_y, crs=box.crs) if box else None,
        tags=dataset.tags,
        create_time=to_timestamp(dataset.create_time),
        update_time=to_timestamp(dataset.update_time),
    )


def model_from_proto(message: core_pb2.Model) -> Model:
    card, spec = message.card, message.input
    return Model(
        id=message.id,
        name=message.name,
        version=message.version,
        task=_enum_suffix(common_pb2.ModelTask, message.task, "MODEL_TASK_"),
        source=message.source,
        card=ModelCard(card.description, card.data_used, list(card.dependencies), dict(card.metrics), card.license),
        input=InputSpec([b.lower() for b in spec.bands], spec.tile_size_px, spec.dtype.upper(), spec.value_min, spec.value_max),
        outputs=[OutputSpec(o.name, o.dtype.upper(), list(o.shape), o.description) for o in message.outputs],
        tags=list(message.tags),
    )


def model_to_proto(model: Model) -> core_pb2.Model:
    return core_pb2.Model(
        id=model.id,
        name=model.name,
        version=model.version,
        task=_enum_value(common_pb2.ModelTask, model.task, "MODEL_TASK_"),
        source=model.source,
        card=common_pb2.ModelCard(
            description=model.card.description,
            data_used=model.card.data_used,
            dependencies=model.card.dependencies,
            metrics=model.card.metrics,
            license=model.card.license,
        ),
        input=common_pb2.ModelInputSpec(
            bands=model.input.bands,
            tile_size_px=model.input.tile_size_px,
            dtype=model.input.dtype,
            value_min=model.input.value_min,
            value_max=model.input.value_max,
        ),
        outputs=[common_pb2.ModelOutputSpec(name=o.name, dtype=o.dtype, shape=o.shape, description=o.description) for o in model.outputs],
        state=_enum_value(core_pb2.ModelState, model.state, "MODEL_STATE_"),
        state_message=model.state_message,
        tags=model.tags,
        create_time=to_timestamp(model.create_time),
        update_time=to_timestamp(model.update_time),
    )


def spec_from_proto(message: common_pb2.PipelineSpec) -> PipelineSpec:
    blocks = []
    for block in message.blocks:
        kind = block.WhichOneof("config") or ""
        config = (
            json_format.MessageToDict(
                getattr(block, kind), preserving_proto_field_name=True, always_print_fields_with_no_presence=True
            )
            if kind
            else {}
        )
        blocks.append(Block(id=block.id, kind=kind, config=config, label=block.label))
    return PipelineSpec(blocks=blocks, edges=[Edge(e.source_block_id, e.target_block_id) for e in message.edges])


def spec_to_proto(spec: PipelineSpec) -> common_pb2.PipelineSpec:
    message = common_pb2.PipelineSpec()
    for block in spec.blocks:
        added = message.blocks.add(id=block.id, label=block.label)
        if block.kind:
            json_format.ParseDict(block.config, getattr(added, block.kind))
    message.edges.extend(common_pb2.Edge(source_block_id=e.source, target_block_id=e.target) for e in spec.edges)
    return message


def pipeline_from_proto(message: core_pb2.Pipeline) -> Pipeline:
    return Pipeline(id=message.id, name=message.name, description=message.description, spec=spec_from_proto(message.spec))


def pipeline_to_proto(pipeline: Pipeline) -> core_pb2.Pipeline:
    return core_pb2.Pipeline(
        id=pipeline.id,
        name=pipeline.name,
        description=pipeline.description,
        spec=spec_to_proto(pipeline.spec),
        create_time=to_timestamp(pipeline.create_time),
        update_time=to_timestamp(pipeline.update_time),
    )


def problem_to_proto(problem: Problem) -> common_pb2.PipelineProblem:
    return common_pb2.PipelineProblem(
        field=problem.field, block_id=problem.block_id, edge_index=problem.edge_index, description=problem.description
    )


def run_state_to_proto(state: str) -> int:
    return _enum_value(common_pb2.RunState, state, "RUN_STATE_")


def run_to_proto(run: Run) -> core_pb2.Run:
    return core_pb2.Run(
        id=run.id,
        pipeline_id=run.pipeline_id,
        state=run_state_to_proto(run.state),  # type: ignore[arg-type]
        state_message=run.state_message,
        outputs=[common_pb2.RunOutput(**o) for o in run.outputs],
        create_time=to_timestamp(run.create_time),
        start_time=to_timestamp(run.start_time),
        end_time=to_timestamp(run.end_time),
    )
