"""The agent's view of core's catalog: every dataset and model, read over gRPC and cached briefly."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import grpc

from constellation.common.v1 import common_pb2
from constellation.core.v1 import core_pb2, core_pb2_grpc
from mesh.errors import Unavailable
from mesh.services import insecure_channel


@dataclass(frozen=True)
class DatasetEntry:
    id: str
    name: str
    description: str
    sensor: str
    bands: tuple[str, ...]
    resolution_m: float
    bbox: tuple[float, float, float, float] | None  # lon/lat when the dataset's bbox is EPSG:4326
    tags: tuple[str, ...]

    @property
    def text(self) -> str:
        return " ".join([self.name, self.description, self.sensor, *self.bands, *self.tags])


@dataclass(frozen=True)
class ModelEntry:
    id: str
    name: str
    version: str
    task: str
    description: str
    bands: tuple[str, ...]
    tile_size_px: int
    metrics: dict = field(default_factory=dict)
    tags: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        return " ".join([self.name, self.task, self.description, *self.bands, *self.tags])

    def metric(self, *names: str) -> float | None:
        return next((float(self.metrics[n]) for n in names if n in self.metrics), None)


@dataclass(frozen=True)
class Snapshot:
    datasets: tuple[DatasetEntry, ...]
    models: tuple[ModelEntry, ...]


def dataset_entry(d: core_pb2.Dataset) -> DatasetEntry:
    box = None
    if d.HasField("bbox") and d.bbox.crs in ("", "EPSG:4326"):
        box = (d.bbox.min_x, d.bbox.min_y, d.bbox.max_x, d.bbox.max_y)
    return DatasetEntry(d.id, d.name, d.description, d.sensor, tuple(d.bands), d.resolution_m, box, tuple(d.tags))


def model_entry(m: core_pb2.Model) -> ModelEntry:
    task = common_pb2.ModelTask.Name(m.task).removeprefix("MODEL_TASK_").lower() if m.task else ""
    return ModelEntry(m.id, m.name, m.version, task, m.card.description, tuple(m.input.bands), m.input.tile_size_px, dict(m.card.metrics), tuple(m.tags))


class CoreCatalog:
    """Reads core's catalog (all pages) and validates specs; a snapshot is reused for `ttl_s`."""

    def __init__(self, address: str, ttl_s: float = 2.0) -> None:
        self.core = core_pb2_grpc.CoreServiceStub(insecure_channel(address))
        self.ttl_s = ttl_s
        self._snapshot: Snapshot | None = None
        self._taken = 0.0
        self._lock = threading.Lock()

    def _all(self, call, request_type, field: str) -> list:  # type: ignore[no-untyped-def]
        items, token = [], ""
        while True:
            page = call(request_type(page_size=1000, page_token=token), timeout=10)
            items += list(getattr(page, field))
            token = page.next_page_token
            if not token:
                return items

    def snapshot(self) -> Snapshot:
        with self._lock:
            if self._snapshot is None or time.monotonic() - self._taken > self.ttl_s:
                try:
                    datasets = self._all(self.core.ListDatasets, core_pb2.ListDatasetsRequest, "datasets")
                    models = self._all(self.core.ListModels, core_pb2.ListModelsRequest, "models")
                except grpc.RpcError as error:
                    raise Unavailable(f"the catalog (core) did not answer: {error.details()}") from None
                self._snapshot = Snapshot(tuple(map(dataset_entry, datasets)), tuple(map(model_entry, models)))
                self._taken = time.monotonic()
            return self._snapshot

    def validate(self, spec: common_pb2.PipelineSpec) -> core_pb2.ValidatePipelineResponse:
        try:
            return self.core.ValidatePipeline(core_pb2.ValidatePipelineRequest(spec=spec), timeout=10)
        except grpc.RpcError as error:
            raise Unavailable(f"core could not validate the plan: {error.details()}") from None

    def check(self) -> None:
        self.core.ListDatasets(core_pb2.ListDatasetsRequest(page_size=1), timeout=2)
