"""Core's catalog as the agent sees it: snapshots for ranking, look-ups for Gemini's tools, and validation.

The agent owns no catalog. It reads core over gRPC at `peers["core"]`: every
dataset and model, paged 1,000 at a time, into a snapshot that is reused for
`ttl_s` seconds together with its ranking index (building the index is the
expensive part, so a burst of prompts shares one). ValidatePipeline is always
asked live: core is the judge of a valid spec.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agent_svc.domain import Catalog, Dataset, Model, Scene
from agent_svc.embeddings import Embedder
from agent_svc.ranking import RankIndex
from clients.paging import pages
from constellation.common.v1 import common_pb2
from constellation.core.v1 import core_pb2, core_pb2_grpc
from mesh.errors import FailedPrecondition, Unavailable
from mesh.services import peer_channel, with_service_key
from mesh.tls import TlsFiles

log = logging.getLogger("agent.catalog")
T = TypeVar("T")
PAGE_SIZE = 1000
TASK_NAMES = {
    common_pb2.MODEL_TASK_CLASSIFICATION: "classification",
    common_pb2.MODEL_TASK_SEGMENTATION: "segmentation",
    common_pb2.MODEL_TASK_DETECTION: "detection",
    common_pb2.MODEL_TASK_REGRESSION: "regression",
}
DOWN = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def dataset_from_proto(d: core_pb2.Dataset) -> Dataset:
    box = d.bbox if d.HasField("bbox") else None
    if box is None or box.crs not in ("", "EPSG:4326") or not (box.min_x < box.max_x and box.min_y < box.max_y):
        box = None  # absent, or not a usable lon/lat box
    return Dataset(
        id=d.id,
        name=d.name,
        description=d.description,
        sensor=d.sensor,
        bands=tuple(d.bands),
        resolution_m=d.resolution_m,
        bbox=(box.min_x, box.min_y, box.max_x, box.max_y) if box is not None else None,
        tags=tuple(d.tags),
        uri=d.uri,
        scenes=tuple(
            Scene(
                item.id,
                item.acquired_time.ToDatetime(tzinfo=UTC),
                item.cloud_cover if item.HasField("cloud_cover") else None,
            )
            for item in d.items
            if item.HasField("acquired_time")
        ),
    )


def model_from_proto(m: core_pb2.Model) -> Model:
    return Model(
        id=m.id,
        name=m.name,
        version=m.version,
        task=TASK_NAMES.get(m.task, ""),
        description=m.card.description,
        data_used=m.card.data_used,
        bands=tuple(m.input.bands),
        tile_size_px=m.input.tile_size_px,
        value_min=m.input.value_min,
        value_max=m.input.value_max,
        metrics=tuple(sorted(m.card.metrics.items())),
        tags=tuple(m.tags),
    )


@dataclass(frozen=True)
class Snapshot:
    catalog: Catalog
    index: RankIndex
    fetched_at: float


@dataclass(frozen=True)
class Validation:
    valid: bool
    problems: list[str]


class CoreCatalog:
    def __init__(
        self,
        address: str,
        ttl_s: float = 5.0,
        timeout_s: float = 10.0,
        embedder: Embedder | None = None,
        service_key: str = "",
        tls: TlsFiles | None = None,
    ) -> None:
        self.address = address
        self.embedder = embedder
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self._channel = peer_channel(address, tls)  # mTLS as the agent when the mesh has certificates
        # The service key, and the user whose Recommend or PlanPipeline is being served (core checks their role).
        channel = with_service_key(self._channel, service_key)
        self._core = core_pb2_grpc.CoreServiceStub(channel)
        self._health = health_pb2_grpc.HealthStub(channel)
        self._lock = threading.Lock()
        self._snapshot: Snapshot | None = None

    def close(self) -> None:
        self._channel.close()

    def _call(self, what: str, call: Callable[[], T], lookup: bool = False) -> T:
        """Core down -> Unavailable; core refusing -> FailedPrecondition, or LookupFailed for a tool call."""
        try:
            return call()
        except grpc.RpcError as error:
            code = error.code()
            if code in DOWN:
                raise Unavailable(
                    f"core at {self.address} does not answer ({what}: {code.name}); try again shortly"
                ) from None
            if lookup:
                raise LookupFailed(f"{code.name}: {error.details()}") from None
            raise FailedPrecondition(f"core refused {what}: {code.name}: {error.details()}") from None

    def check(self) -> None:
        """Health check: raises when core does not answer SERVING."""
        answer = self._health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
        if answer.status != health_pb2.HealthCheckResponse.SERVING:
            raise RuntimeError(f"core at {self.address} is not serving")

    def snapshot(self, refresh: bool = False) -> Snapshot:
        with self._lock:
            current = self._snapshot
            if current is not None and not refresh and time.monotonic() - current.fetched_at < self.ttl_s:
                return current
            datasets = self._list_all("ListDatasets", self._core.ListDatasets, core_pb2.ListDatasetsRequest, "datasets")
            models = self._list_all("ListModels", self._core.ListModels, core_pb2.ListModelsRequest, "models")
            catalog = Catalog(
                tuple(dataset_from_proto(d) for d in datasets), tuple(model_from_proto(m) for m in models)
            )
            if current is not None and current.catalog == catalog:
                index = current.index  # nothing changed: keep the index, skip the rebuild
            else:
                index = RankIndex(catalog, self.embedder)
            self._snapshot = Snapshot(catalog, index, time.monotonic())
            log.info("catalog snapshot", extra={"datasets": len(catalog.datasets), "models": len(catalog.models)})
            return self._snapshot

    def _list_all(self, what: str, method: Callable[..., Any], request_type: Callable[..., Any], field: str) -> list:
        """Every item of core's List RPC `method`, page by page."""

        def fetch(token: str) -> Any:
            request = request_type(page_size=PAGE_SIZE, page_token=token)
            return self._call(what, lambda: method(request, timeout=self.timeout_s))

        return [item for page in pages(fetch) for item in getattr(page, field)]

    def validate(self, spec: common_pb2.PipelineSpec) -> Validation:
        answer = self._call(
            "ValidatePipeline",
            lambda: self._core.ValidatePipeline(core_pb2.ValidatePipelineRequest(spec=spec), timeout=self.timeout_s),
        )
        return Validation(
            answer.valid, [f"{p.field}: {p.description}" if p.field else p.description for p in answer.problems]
        )

    # Look-ups for Gemini's function calls. They go to core each time, so the
    # model sees what core holds now; a NOT_FOUND or a bad filter comes back
    # as a message the model can act on, not an error of the RPC.

    def find_datasets(self, filter_text: str, limit: int = 20) -> list[core_pb2.Dataset]:
        return list(
            self._lookup(
                "ListDatasets",
                lambda: self._core.ListDatasets(
                    core_pb2.ListDatasetsRequest(page_size=limit, filter=filter_text), timeout=self.timeout_s
                ),
            ).datasets
        )

    def find_models(self, filter_text: str, limit: int = 20) -> list[core_pb2.Model]:
        return list(
            self._lookup(
                "ListModels",
                lambda: self._core.ListModels(
                    core_pb2.ListModelsRequest(page_size=limit, filter=filter_text), timeout=self.timeout_s
                ),
            ).models
        )

    def get_dataset(self, dataset_id: str) -> core_pb2.Dataset:
        return self._lookup(
            "GetDataset",
            lambda: self._core.GetDataset(core_pb2.GetDatasetRequest(id=dataset_id), timeout=self.timeout_s),
        )

    def get_model(self, model_id: str) -> core_pb2.Model:
        return self._lookup(
            "GetModel", lambda: self._core.GetModel(core_pb2.GetModelRequest(id=model_id), timeout=self.timeout_s)
        )

    def _lookup(self, what: str, call: Callable[[], T]) -> T:
        return self._call(what, call, lookup=True)


class LookupFailed(Exception):
    """A tool call core refused (unknown id, bad filter): told to the model, not to the client."""
