"""A run's results as STAC: one Item per output scene (and a Collection over them when there are several), and one
MLM Item per model the results came from, written next to the outputs by the export op.

    documents = stac_out.build(scenes, lineage, prefix)   # [(file name, JSON document, media type)]

Each result Item (pystac; rio-stac reads the raster) holds:
- geometry and bbox (WGS84) of the output raster, or of the polygons when only GeoJSON is exported;
- projection (`proj:code`, `proj:shape`, `proj:transform`, `proj:bbox`) and, on the COG asset, `raster:bands`
  (data type, nodata, statistics and histogram, read from an overview of at most 1024 px);
- assets by file: the COG (roles data, the cloud-optimized GeoTIFF media type), the GeoJSON polygons (data,
  application/geo+json), the PNG preview (overview and visual, image/png), each href the URI the file was
  published at (file:// or s3://);
- `datetime`: the input scene's acquisition time when the dataset says it, else the run's time;
- lineage: the processing extension (`processing:lineage` in words, `processing:software`, `processing:datetime`),
  `constellation:run_id` / `pipeline_id` / `pipeline_name` / `block_id`, a `derived_from` link to each input
  (its STAC Item when it came from one, else the scene's URI) and to each model's MLM Item (pipeline.mlm).
`eo` is left out: a model's output or a band index has no optical band to describe.

The writer takes a list of scenes with their outputs, so a run over many items writes one Item per scene and a
Collection linking them; a run over one scene writes `item.json` only.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pystac
import rasterio
from google.protobuf import json_format
from pystac.extensions.projection import ProjectionExtension
from rasterio.features import bounds as feature_bounds
from rasterio.warp import transform_bounds

from clients.storage import join
from constellation.core.v1 import core_pb2
from constellation.orchestrator.v1 import orchestrator_pb2
from mesh.errors import InvalidArgument
from pipeline import mlm

# A STAC Item is a GeoJSON Feature, a Collection JSON; `profile=stac` tells them from the polygons' GeoJSON.
ITEM_MEDIA_TYPE = "application/geo+json; profile=stac"
COLLECTION_MEDIA_TYPE = "application/json; profile=stac"
LINK_ITEM_TYPE = "application/geo+json"  # links carry the registered media types
PROCESSING_SCHEMA = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"
SOFTWARE = "constellation"
ROLES = {"cog": ["data"], "geojson": ["data"], "png_preview": ["overview", "visual"], "csv": ["data"], "json": ["data"]}
MEDIA_TYPES = {
    "cog": pystac.MediaType.COG,
    "geojson": pystac.MediaType.GEOJSON,
    "png_preview": pystac.MediaType.PNG,
    "csv": "text/csv",  # a summary's table (orchestrator_svc.series)
    "json": pystac.MediaType.JSON,
}


@dataclass(frozen=True)
class SceneSource:
    """One input scene: the dataset's file, or one STAC item of it."""

    id: str
    uri: str
    stac_href: str = ""  # its STAC Item, when it came from one
    acquired: dt.datetime | None = None


@dataclass(frozen=True)
class OutputFile:
    local: Path  # the file as written on this machine (read for metadata)
    uri: str  # where it was published
    name: str
    format: str  # "cog" | "geojson" | "png_preview" | "csv" | "json"


@dataclass(frozen=True)
class SceneOutputs:
    scene: SceneSource
    files: tuple[OutputFile, ...]
    sources: tuple[SceneSource, ...] = ()  # every input it was made from; () means (scene,)


@dataclass(frozen=True)
class Lineage:
    run_id: str
    block_id: str
    pipeline_id: str = ""
    pipeline_name: str = ""
    steps: tuple[str, ...] = ()  # the blocks upstream of the export, in order, e.g. ("dataset scene", ...)
    datasets: dict[str, dict] = field(default_factory=dict)  # dataset id -> ResolvedDataset as JSON (json_format)
    models: dict[str, dict] = field(default_factory=dict)  # model id -> ResolvedModel as JSON, without endpoints
    software_version: str = ""

    def to_json(self) -> str:
        return json.dumps(
            {
                "pipeline_id": self.pipeline_id, "pipeline_name": self.pipeline_name, "steps": list(self.steps),
                "datasets": self.datasets, "models": self.models,
            },
            sort_keys=True,
        )  # fmt: skip

    @classmethod
    def from_json(cls, run_id: str, block_id: str, text: str, software_version: str = "") -> Lineage:
        data = json.loads(text) if text else {}
        return cls(
            run_id, block_id, data.get("pipeline_id", ""), data.get("pipeline_name", ""),
            tuple(data.get("steps", ())), data.get("datasets", {}), data.get("models", {}), software_version,
        )  # fmt: skip


def model_of(resolved: dict) -> core_pb2.Model:
    """The catalog's view of a resolved model (orchestrator ResolvedModel as JSON), for pipeline.mlm."""
    message = json_format.ParseDict(resolved, orchestrator_pb2.ResolvedModel())
    return core_pb2.Model(
        name=message.model_name, version=message.model_version, task=message.task, source=message.source,
        card=message.card, input=message.input, outputs=message.outputs,
    )  # fmt: skip


def _footprint(files: Sequence[OutputFile]) -> tuple[dict | None, list[float] | None, pystac.Item | None]:
    """(geometry, bbox) in WGS84, and rio-stac's item of the first raster (projection, raster:bands)."""
    import rio_stac

    for f in files:
        if f.format == "cog":
            with rasterio.open(f.local) as src:
                read = rio_stac.create_stac_item(src, id="_", with_proj=True, with_raster=True, asset_name="_")
            return read.geometry, read.bbox, read
    for f in files:
        if f.format == "geojson":
            data = json.loads(f.local.read_text())
            features = [g for g in data.get("features", []) if g.get("geometry")]
            if not features:
                continue
            crs = (data.get("crs") or {}).get("properties", {}).get("name", "EPSG:4326")
            box = transform_bounds(
                crs, "EPSG:4326", *feature_bounds({"type": "FeatureCollection", "features": features})
            )
            west, south, east, north = box
            ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
            return {"type": "Polygon", "coordinates": [ring]}, list(box), None
    return None, None, None


def _lineage_text(lineage: Lineage, sources: Sequence[SceneSource]) -> str:
    pipeline = lineage.pipeline_name or lineage.pipeline_id or "a pipeline"
    inputs = ", ".join(s.stac_href or s.uri for s in sources)
    steps = " -> ".join(lineage.steps) if lineage.steps else "export"
    return f"Constellation run {lineage.run_id} of pipeline {pipeline!r}: {steps}, from {inputs}"


def result_item(
    outputs: SceneOutputs, lineage: Lineage, model_hrefs: dict[str, str], now: dt.datetime, item_id: str
) -> pystac.Item:
    sources = outputs.sources or (outputs.scene,)
    geometry, bbox, read = _footprint(outputs.files)
    when = outputs.scene.acquired or now
    item = pystac.Item(item_id, geometry=geometry, bbox=bbox, datetime=when, properties={})
    props = item.properties
    if read is not None:
        ProjectionExtension.add_to(item)
        read_props = read.properties
        if read_props.get("proj:epsg"):  # rio-stac writes projection v1's proj:epsg; v2 names it proj:code
            props["proj:code"] = f"EPSG:{read_props['proj:epsg']}"
        elif read_props.get("proj:wkt2"):
            props["proj:wkt2"] = read_props["proj:wkt2"]
        for key in ("proj:code", "proj:shape", "proj:transform", "proj:bbox"):
            if key in read_props:
                props[key] = read_props[key]
    props.update(
        {
            "processing:lineage": _lineage_text(lineage, sources),
            "processing:software": {SOFTWARE: lineage.software_version or "unknown"},
            "processing:datetime": now.isoformat().replace("+00:00", "Z"),
            "constellation:run_id": lineage.run_id,
            "constellation:block_id": lineage.block_id,
        }
    )
    if lineage.pipeline_id:
        props["constellation:pipeline_id"] = lineage.pipeline_id
    if lineage.pipeline_name:
        props["constellation:pipeline_name"] = lineage.pipeline_name
    if lineage.models:
        props["constellation:models"] = [
            f"{m.get('modelName', '')}:{m.get('modelVersion', '')}" for m in lineage.models.values()
        ]
    item.stac_extensions.append(PROCESSING_SCHEMA)
    for f in outputs.files:
        asset = pystac.Asset(f.uri, title=f.name, media_type=MEDIA_TYPES[f.format], roles=ROLES[f.format])
        if f.format == "cog" and read is not None:
            asset.extra_fields.update({k: v for k, v in read.assets["_"].extra_fields.items() if k == "raster:bands"})
        item.add_asset(f.name, asset)
    if any("raster:bands" in a.extra_fields for a in item.assets.values()):
        item.stac_extensions.append("https://stac-extensions.github.io/raster/v1.1.0/schema.json")
    for source in sources:
        if source.stac_href:
            item.add_link(pystac.Link("derived_from", source.stac_href, LINK_ITEM_TYPE, f"input scene {source.id}"))
        elif source.uri:
            item.add_link(pystac.Link("derived_from", source.uri, MEDIA_TYPES["cog"], f"input scene {source.id}"))
    for model_id, href in model_hrefs.items():
        title = f"model {model_id} (MLM)"
        item.add_link(pystac.Link("derived_from", href, LINK_ITEM_TYPE, title))
    return item


def build(
    scenes: Sequence[SceneOutputs], lineage: Lineage, prefix: str, now: dt.datetime | None = None
) -> list[tuple[str, dict[str, Any], str]]:
    """Every STAC document of the export at `prefix`: (file name, document, media type), model items first."""
    now = now or dt.datetime.now(dt.UTC)
    documents: list[tuple[str, dict[str, Any], str]] = []
    model_hrefs: dict[str, str] = {}
    for model_id, resolved in sorted(lineage.models.items()):
        name = f"model-{model_id}.json"
        try:
            model_item = mlm.model_item(model_of(resolved), when=now)
        except InvalidArgument:  # launched without the model's task (an older core): named in the lineage only
            continue
        model_item["links"] = [{"rel": "self", "href": join(prefix, name), "type": LINK_ITEM_TYPE}]
        documents.append((name, model_item, ITEM_MEDIA_TYPE))
        model_hrefs[model_id] = join(prefix, name)
    single = len(scenes) == 1
    items = []
    for outputs in scenes:
        item_id = f"{lineage.run_id}-{lineage.block_id}" + ("" if single else f"-{outputs.scene.id}")
        item = result_item(outputs, lineage, model_hrefs, now, item_id)
        items.append((("item.json" if single else f"item-{outputs.scene.id}.json"), item))
    if not single and items:
        times = [i.datetime or now for _, i in items]
        collection = pystac.Collection(
            id=f"{lineage.run_id}-{lineage.block_id}",
            description=_lineage_text(lineage, [s for o in scenes for s in (o.sources or (o.scene,))]),
            extent=pystac.Extent(
                pystac.SpatialExtent([_union([i.bbox for _, i in items if i.bbox])]),
                pystac.TemporalExtent([[min(times), max(times)]]),
            ),
            license="other",
        )
        collection_href = join(prefix, "collection.json")
        for name, item in items:
            item.collection_id = collection.id
            item.add_link(pystac.Link("collection", collection_href, "application/json"))
            collection.add_link(pystac.Link("item", join(prefix, name), LINK_ITEM_TYPE))
        collection.add_link(pystac.Link("self", collection_href, "application/json"))
        documents.append(("collection.json", collection.to_dict(include_self_link=False, transform_hrefs=False),
                          COLLECTION_MEDIA_TYPE))  # fmt: skip
    for name, item in items:
        item.add_link(pystac.Link("self", join(prefix, name), LINK_ITEM_TYPE))
        documents.append((name, item.to_dict(include_self_link=False, transform_hrefs=False), ITEM_MEDIA_TYPE))
    # As they will read back from JSON (rio-stac's geometry holds tuples).
    return [(name, json.loads(json.dumps(document)), media_type) for name, document, media_type in documents]


def _union(boxes: list[list[float]]) -> list[float]:
    if not boxes:
        return [-180.0, -90.0, 180.0, 90.0]
    return [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)]


def scene_sources(resolved_datasets: dict[str, dict]) -> list[SceneSource]:
    """The input scenes of the datasets an export comes from (orchestrator ResolvedDataset as JSON): one per STAC
    item when the dataset lists items, else the dataset's file."""
    found = []
    for dataset_id, data in sorted(resolved_datasets.items()):
        message = json_format.ParseDict(data, orchestrator_pb2.ResolvedDataset())
        if not message.items:
            found.append(SceneSource(dataset_id, message.uri))
        for scene in message.items:
            acquired = scene.acquired_time.ToDatetime(dt.UTC) if scene.HasField("acquired_time") else None
            found.append(SceneSource(scene.id or dataset_id, scene.uri or message.uri, scene.stac_href, acquired))
    return found
