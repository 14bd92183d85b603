"""The agent's domain: catalog entries as it ranks them, what a prompt asks for, and what it answers.

Plain dataclasses; the servicer converts them to and from protobuf. The one
exception is the pipeline spec, which planners build as the contract's own
`common.v1.PipelineSpec` message: it is handed to core's ValidatePipeline and
back to the client unchanged, so a mirror type would only add a conversion.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime

from constellation.common.v1 import common_pb2

Box = tuple[float, float, float, float]  # min_x, min_y, max_x, max_y in EPSG:4326
TASKS = ("classification", "segmentation", "detection", "regression")
PLANNERS = ("offline", "gemini")
MAX_PROMPT_CHARS = 4000
DEFAULT_RESULTS = 5
MAX_RESULTS = 50


@dataclass(frozen=True)
class Scene:
    """One STAC item of a dataset, as the agent weighs it: when, and how cloudy."""

    id: str
    acquired: datetime
    cloud_cover: float | None = None


@dataclass(frozen=True)
class Dataset:
    id: str
    name: str
    description: str = ""
    sensor: str = ""
    bands: tuple[str, ...] = ()
    resolution_m: float = 0.0
    bbox: Box | None = None
    tags: tuple[str, ...] = ()
    uri: str = ""
    scenes: tuple[Scene, ...] = ()  # from STAC (core's Dataset.items); empty for a plain raster


@dataclass(frozen=True)
class Model:
    id: str
    name: str
    version: str = ""
    task: str = ""
    description: str = ""
    data_used: str = ""
    bands: tuple[str, ...] = ()
    tile_size_px: int = 0
    value_min: float = 0.0
    value_max: float = 0.0
    metrics: tuple[tuple[str, float], ...] = ()
    tags: tuple[str, ...] = ()

    def metric(self, name: str) -> float | None:
        return dict(self.metrics).get(name)


@dataclass(frozen=True)
class Catalog:
    """A snapshot of core's catalog: what one answer is computed from."""

    datasets: tuple[Dataset, ...]
    models: tuple[Model, ...]


@dataclass
class Constraints:
    """Hard limits: structured ones from the request, or ones the prompt names outright."""

    sensors: list[str] = field(default_factory=list)
    bands: list[str] = field(default_factory=list)
    task: str = ""
    region: Box | None = None
    region_name: str = ""
    max_resolution_m: float = 0.0
    max_latency_ms: float = 0.0
    min_accuracy: float = 0.0
    # "sar" or "optical" when the prompt insists on one.
    modality: str = ""
    # Acquisition dates the scenes must fall in (first day, last day), from "in June 2024" or a request.
    date_range: tuple[date, date] | None = None
    # A month of any year (1-12) when the prompt names one without a year ("in June"); 0 otherwise.
    month: int = 0


@dataclass
class Intent:
    """What a prompt asks for: hard constraints, soft preferences, and the words to match catalog text with."""

    prompt: str
    constraints: Constraints = field(default_factory=Constraints)
    # A task the wording suggests ("count" -> detection); a preference, not a limit.
    preferred_task: str = ""
    # "sar" when the prompt hints at clouds or night, without insisting.
    preferred_modality: str = ""
    # Query terms (stemmed) with weights, for the dataset text index.
    terms: dict[str, float] = field(default_factory=dict)
    # The same without the words already read as constraints (place, sensor,
    # bands, radar/optical): they say which data, not what a model should do.
    model_terms: dict[str, float] = field(default_factory=dict)
    # Stem -> the word as written, for reasons.
    shown: dict[str, str] = field(default_factory=dict)
    # "the least cloudy", "clearest", "cloud-free": prefer the scene with the least eo:cloud_cover.
    least_cloudy: bool = False
    wants_vectors: bool | None = None
    wants_preview: bool = True
    # What was understood, in words, for the summary.
    notes: list[str] = field(default_factory=list)


@dataclass
class Candidate:
    id: str
    name: str
    score: float
    reasons: list[str] = field(default_factory=list)
    shortfalls: list[str] = field(default_factory=list)


@dataclass
class Recommendation:
    datasets: list[Candidate]
    models: list[Candidate]
    satisfied: bool
    summary: str
    planner: str = "offline"
    # The pair a plan should use (ids), when a compatible one exists.
    best_pair: tuple[str, str] | None = None


@dataclass
class Query:
    prompt: str
    constraints: Constraints = field(default_factory=Constraints)
    max_results: int = DEFAULT_RESULTS
    planner: str = ""  # "", "offline" or "gemini"
    dataset_id: str = ""
    model_id: str = ""


@dataclass
class BlockReason:
    block_id: str
    reason: str


@dataclass
class Plan:
    spec: common_pb2.PipelineSpec
    rationale: list[BlockReason]
    recommendation: Recommendation
    planner: str = "offline"


def scenes_in_range(dataset: Dataset, constraints: Constraints) -> list[Scene]:
    """The dataset's scenes acquired within the constraints' dates (all of them without dates)."""
    window, month = constraints.date_range, constraints.month
    return [
        s
        for s in dataset.scenes
        if (window is None or window[0] <= s.acquired.date() <= window[1]) and (not month or s.acquired.month == month)
    ]


def least_cloud(scenes: list[Scene]) -> float | None:
    covers = [s.cloud_cover for s in scenes if s.cloud_cover is not None]
    return min(covers) if covers else None
