"""The pipeline spec: its block kinds, their wiring rules, validation and proto conversion.

Common ground for core (which stores and validates specs), the orchestrator
(which runs them) and the agent (which plans them). It imports only generated
code, the bootstrap (mesh.errors, mesh.enums) and clients.storage; never a
service.

    kinds       the table of block kinds: ports, produced data, typed configs
    spec        PipelineSpec, Block, Edge, Problem; the dataset/model views validation reads
    rules       band names, storage URIs
    validation  validate_spec (graph, wiring, configs), check_runnable (before a run)
    convert     spec <-> constellation.common.v1.PipelineSpec
"""

from pipeline.kinds import BLOCK_KINDS, KINDS
from pipeline.spec import Block, DatasetView, Edge, ModelView, OutputView, PipelineSpec, Problem

__all__ = ["BLOCK_KINDS", "KINDS", "Block", "DatasetView", "Edge", "ModelView", "OutputView", "PipelineSpec", "Problem"]
