"""Recommendations and plans: the offline planner, and the spec every planner's choice becomes."""

from __future__ import annotations

from dataclasses import dataclass, field

from agent_svc.catalog import DatasetEntry, ModelEntry, Snapshot
from agent_svc.prompt import Intent
from agent_svc.ranking import BM25, Ranked, best_pair, rank_datasets, rank_models
from constellation.common.v1 import common_pb2
from mesh.errors import FailedPrecondition, InvalidArgument


@dataclass
class Recommendation:
    datasets: list[Ranked]
    models: list[Ranked]
    satisfied: bool
    summary: str
    planner: str = "offline"


@dataclass
class Plan:
    spec: common_pb2.PipelineSpec
    rationale: list[tuple[str, str]]
    recommendation: Recommendation
    planner: str = "offline"
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Choice:
    """What a planner decides; `build_spec` turns it into a pipeline."""

    dataset: DatasetEntry
    model: ModelEntry
    tile_size_px: int = 0
    overlap_px: int = 16
    vectorize: bool = True
    threshold: float = 0.5
    reasons: tuple[tuple[str, str], ...] = ()


class Index:
    """BM25 over one snapshot's catalog text, built once per snapshot."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.datasets = BM25([d.text for d in snapshot.datasets])
        self.models = BM25([m.text for m in snapshot.models])


def recommend(intent: Intent, index: Index, max_results: int = 5) -> Recommendation:
    snapshot = index.snapshot
    datasets = rank_datasets(intent, snapshot, index.datasets.scores(intent.text))
    fitting = [d for d in datasets if d.fits] or datasets[:1]
    usable = set().union(*(set(d.entry.bands) for d in fitting)) if fitting else set()  # type: ignore[union-attr]
    models = rank_models(intent, snapshot, usable, index.models.scores(intent.text))
    pair = best_pair(datasets, models)
    if pair:  # the best runnable pair leads both lists
        datasets = [pair[0], *[d for d in datasets if d is not pair[0]]]
        models = [pair[1], *[m for m in models if m is not pair[1]]]
    satisfied = bool(pair and pair[0].fits and pair[1].fits)
    if not snapshot.datasets or not snapshot.models:
        summary = "The catalog has no " + ("datasets" if not snapshot.datasets else "models") + " yet; register some first."
    elif satisfied:
        summary = f"For {intent.describe()}: {pair[0].entry.name} with {pair[1].entry.name} meets every constraint."  # type: ignore[index]
    else:
        nearest = f" The nearest option is {pair[0].entry.name} with {pair[1].entry.name}; it misses: {'; '.join(pair[0].shortfalls + pair[1].shortfalls)}." if pair else ""  # type: ignore[index]
        summary = f"Nothing in the catalog meets every constraint ({intent.describe()}).{nearest}"
    return Recommendation(datasets[:max_results], models[:max_results], satisfied, summary)


def choose(intent: Intent, recommendation: Recommendation, snapshot: Snapshot, dataset_id: str = "", model_id: str = "") -> Choice:
    """The offline planner's choice: the recommended pair, or the pinned entries."""
    datasets = {d.id: d for d in snapshot.datasets}
    models = {m.id: m for m in snapshot.models}
    if dataset_id and dataset_id not in datasets:
        raise InvalidArgument.field("dataset_id", f"no dataset has id {dataset_id!r}")
    if model_id and model_id not in models:
        raise InvalidArgument.field("model_id", f"no model has id {model_id!r}")
    dataset = datasets.get(dataset_id) or next((r.entry for r in recommendation.datasets if not model_id or set(models[model_id].bands) <= set(r.entry.bands)), None)  # type: ignore[union-attr]
    if dataset is None:
        raise FailedPrecondition("the catalog has no dataset to plan with; register one first")
    model = models.get(model_id) or next((r.entry for r in recommendation.models if set(r.entry.bands) <= set(dataset.bands)), None)  # type: ignore[union-attr]
    if model is None:
        raise FailedPrecondition(f"no model in the catalog can read the bands of {dataset.name} ({', '.join(dataset.bands)})")
    if not set(model.bands) <= set(dataset.bands):
        raise FailedPrecondition(f"model {model.name} reads {', '.join(model.bands)}, which {dataset.name} does not have")
    reasons = {r.entry.id: r.reasons for r in recommendation.datasets + recommendation.models}
    return Choice(
        dataset=dataset,
        model=model,
        tile_size_px=model.tile_size_px,
        vectorize=model.task == "segmentation",
        reasons=(
            ("scene", "pinned by the request" if dataset_id else "; ".join(reasons.get(dataset.id, [])) or "best match in the catalog"),
            ("model", "pinned by the request" if model_id else "; ".join(reasons.get(model.id, [])) or "best match in the catalog"),
        ),
    )


def build_spec(choice: Choice, export_uri: str) -> tuple[common_pb2.PipelineSpec, list[tuple[str, str]]]:
    model, dataset = choice.model, choice.dataset
    tile = choice.tile_size_px or model.tile_size_px or 256
    overlap = min(choice.overlap_px, max(tile // 4 - 1, 0))
    blocks = [
        common_pb2.Block(id="scene", label=dataset.name, dataset=common_pb2.DatasetBlock(dataset_id=dataset.id, bands=list(model.bands))),
        common_pb2.Block(id="tiles", tile=common_pb2.TileBlock(tile_size_px=tile, overlap_px=overlap, normalization=common_pb2.NORMALIZATION_REFLECTANCE)),
        common_pb2.Block(id="model", label=f"{model.name}:{model.version}", model=common_pb2.ModelBlock(model_id=model.id, batch_size=8, max_concurrency=2)),
        common_pb2.Block(id="mosaic", stitch=common_pb2.StitchBlock(blend=common_pb2.BLEND_MODE_MEAN)),
        common_pb2.Block(id="export", export=common_pb2.ExportBlock(uri=export_uri)),
    ]
    edges = [("scene", "tiles"), ("tiles", "model"), ("model", "mosaic"), ("mosaic", "export")]
    rationale = [
        *choice.reasons,
        ("tiles", f"{tile} px tiles, the model's input size, with {overlap} px overlap so seams blend"),
        ("mosaic", "stitch predictions back onto the scene's grid (CRS and transform kept), averaging overlaps"),
    ]
    if choice.vectorize:
        blocks.insert(4, common_pb2.Block(id="polygons", vectorize=common_pb2.VectorizeBlock(threshold=choice.threshold, simplify_tolerance_m=max(dataset.resolution_m, 1.0), crs="EPSG:4326")))
        edges += [("mosaic", "polygons"), ("polygons", "export")]
        rationale.append(("polygons", f"polygons where the score exceeds {choice.threshold:g}, in WGS84 for any GIS"))
    rationale.append(("export", f"a Cloud-Optimized GeoTIFF{', GeoJSON' if choice.vectorize else ''} and a PNG preview under {export_uri}"))
    spec = common_pb2.PipelineSpec(blocks=blocks, edges=[common_pb2.Edge(source_block_id=s, target_block_id=t) for s, t in edges])
    return spec, rationale
