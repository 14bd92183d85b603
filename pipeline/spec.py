"""A pipeline spec as plain Python, and the small views of catalog resources validation reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.kinds import KINDS, BlockConfig


@dataclass
class Block:
    id: str
    kind: str  # a key of pipeline.kinds.KINDS; "" when no config is set
    config: dict = field(default_factory=dict)  # proto field names, enum values by full name (proto JSON form)
    label: str = ""

    @property
    def settings(self) -> Any:
        """The typed config (pipeline.kinds.<Kind>Config). Only for a block of a known kind."""
        config_type: type[BlockConfig] = KINDS[self.kind].config
        return config_type.from_dict(self.config)


@dataclass
class Edge:
    source: str
    target: str


@dataclass
class PipelineSpec:
    blocks: list[Block] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)

    def inputs(self) -> dict[str, list[str]]:
        """Block id -> the ids of the blocks feeding it, in edge order."""
        found: dict[str, list[str]] = {b.id: [] for b in self.blocks}
        for edge in self.edges:
            found.setdefault(edge.target, []).append(edge.source)
        return found

    def outputs(self) -> dict[str, list[str]]:
        """Block id -> the ids of the blocks it feeds, in edge order."""
        found: dict[str, list[str]] = {b.id: [] for b in self.blocks}
        for edge in self.edges:
            found.setdefault(edge.source, []).append(edge.target)
        return found

    def to_json(self) -> dict:
        return {
            "blocks": [{"id": b.id, "kind": b.kind, "config": b.config, "label": b.label} for b in self.blocks],
            "edges": [{"source": e.source, "target": e.target} for e in self.edges],
        }

    @classmethod
    def from_json(cls, data: dict) -> PipelineSpec:
        return cls(blocks=[Block(**b) for b in data["blocks"]], edges=[Edge(**e) for e in data["edges"]])


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a pipeline spec; `field` is relative to the spec."""

    field: str
    description: str
    block_id: str = ""
    edge_index: int = -1


@dataclass(frozen=True)
class DatasetView:
    """What validation needs to know of a catalog dataset."""

    id: str
    name: str
    bands: tuple[str, ...]  # in file order


@dataclass(frozen=True)
class OutputView:
    name: str
    dtype: str  # Open Inference Protocol datatype, upper case
    shape: tuple[int, ...]  # without the batch dimension; -1 variable


@dataclass(frozen=True)
class ModelView:
    """What validation needs to know of a catalog model."""

    id: str
    name: str
    bands: tuple[str, ...]  # the bands it reads, in order
    tile_size_px: int = 0  # 0: any size
    outputs: tuple[OutputView, ...] = ()
