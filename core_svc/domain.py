"""Catalog resources as plain Python: what core's domain logic works on."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from mesh.identity import Identity
from pipeline.spec import PipelineSpec

MODEL_TASKS = ("classification", "segmentation", "detection", "regression")
MODEL_STATES = ("registered", "packaging", "ready", "failed")
RUN_STATES = ("queued", "starting", "running", "succeeded", "failed", "canceling", "canceled")
TERMINAL = ("succeeded", "failed", "canceled")


@dataclass
class BoundingBox:
    min_x: float
    min_y: float
    max_x: float
    max_y: float
    crs: str = "EPSG:4326"


@dataclass
class BandAsset:
    """One band's file of a scene (common.v1.BandAsset)."""

    band: str
    uri: str
    band_index: int = 1
    resolution_m: float = 0.0
    asset_key: str = ""


@dataclass
class SceneItem:
    """One scene of a dataset registered from STAC (common.v1.SceneItem)."""

    id: str
    acquired_time: datetime | None = None
    cloud_cover: float | None = None
    bbox: BoundingBox | None = None
    crs: str = ""
    assets: list[BandAsset] = field(default_factory=list)
    uri: str = ""
    stac_href: str = ""
    collection: str = ""


@dataclass
class Dataset:
    id: str = ""
    name: str = ""
    description: str = ""
    uri: str = ""
    sensor: str = ""
    bands: list[str] = field(default_factory=list)
    resolution_m: float = 0.0
    bbox: BoundingBox | None = None
    tags: list[str] = field(default_factory=list)
    create_time: datetime | None = None
    update_time: datetime | None = None
    owner: str = ""  # the creator's subject; "" for rows from before owners (core_svc.ownership)
    items: list[SceneItem] = field(default_factory=list)  # set only by a STAC import (core_svc.stac)


@dataclass
class ModelCard:
    description: str = ""
    data_used: str = ""
    dependencies: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    license: str = ""


@dataclass
class InputSpec:
    bands: list[str] = field(default_factory=list)
    tile_size_px: int = 0
    dtype: str = ""
    value_min: float = 0.0
    value_max: float = 0.0


@dataclass
class OutputSpec:
    name: str = ""
    dtype: str = ""
    shape: list[int] = field(default_factory=list)
    description: str = ""


@dataclass
class Model:
    id: str = ""
    name: str = ""
    version: str = ""
    task: str = ""  # one of MODEL_TASKS; "" when unset
    source: str = ""
    card: ModelCard = field(default_factory=ModelCard)
    input: InputSpec = field(default_factory=InputSpec)
    outputs: list[OutputSpec] = field(default_factory=list)
    state: str = "registered"
    state_message: str = ""
    tags: list[str] = field(default_factory=list)
    create_time: datetime | None = None
    update_time: datetime | None = None
    owner: str = ""  # the creator's subject; "" for rows from before owners (core_svc.ownership)


@dataclass
class Pipeline:
    id: str = ""
    name: str = ""
    description: str = ""
    spec: PipelineSpec = field(default_factory=PipelineSpec)
    create_time: datetime | None = None
    update_time: datetime | None = None
    owner: str = ""


@dataclass
class Run:
    id: str
    pipeline_id: str
    state: str  # one of RUN_STATES
    state_message: str = ""
    outputs: list[dict] = field(default_factory=list)  # RunOutput fields by name
    spec: dict = field(default_factory=dict)  # the pipeline spec as it was when the run was queued
    launched: bool = False
    upstream_sequence: int = 0
    create_time: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    started_by: Identity | None = None  # None for runs from before users existed, or a mesh without keys
    owner: str = ""  # who started it (not necessarily the pipeline's owner)

    @property
    def ended(self) -> bool:
        return self.state in TERMINAL
