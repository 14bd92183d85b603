"""PipelineSpec and Problem <-> their constellation.common.v1 messages."""

from __future__ import annotations

from google.protobuf import json_format

from constellation.common.v1 import common_pb2
from pipeline.spec import Block, Edge, PipelineSpec, Problem


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


def problem_to_proto(problem: Problem) -> common_pb2.PipelineProblem:
    return common_pb2.PipelineProblem(
        field=problem.field, block_id=problem.block_id, edge_index=problem.edge_index, description=problem.description
    )
