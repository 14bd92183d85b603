"""Catalog entries from what users have on disk: a scene's GeoTIFF, a model's folder."""

from __future__ import annotations

import json
import re
from pathlib import Path

import grpc

from constellation.common.v1 import common_pb2 as c
from constellation.core.v1 import core_pb2


def _readme_summary(folder: Path) -> str:
    """The README's first paragraph after its title, on one line."""
    readme = folder / "README.md"
    if not readme.is_file():
        return ""
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", readme.read_text(encoding="utf-8")) if p.strip()]
    body = [p for p in paragraphs if not p.startswith("#")]
    return " ".join(body[0].split()) if body else ""


def model_from_folder(folder: Path, tags: list[str] | None = None) -> core_pb2.Model:
    """A catalog Model from a model folder's constellation.yaml (and its README and card.json, when present)."""
    from model_runtime.manifest import load_manifest

    folder = folder.resolve()
    manifest = load_manifest(folder)  # ManifestError lists every problem
    card = c.ModelCard(description=_readme_summary(folder), dependencies=list(manifest.requirements))
    card_file = folder / "card.json"
    if card_file.is_file():  # optional: data_used, license, metrics written by a training script
        extra = json.loads(card_file.read_text(encoding="utf-8"))
        card.data_used = extra.get("data_used", "")
        card.license = extra.get("license", "")
        card.metrics.update({k: float(v) for k, v in extra.get("metrics", {}).items()})
        tags = [*(tags or []), *extra.get("tags", [])]
    return core_pb2.Model(
        name=manifest.name,
        version=manifest.version,
        task=c.ModelTask.Value(f"MODEL_TASK_{manifest.task.upper()}"),
        source=str(folder),
        card=card,
        input=c.ModelInputSpec(
            bands=list(manifest.bands),
            tile_size_px=manifest.tile_size_px,
            dtype=manifest.dtype,
            value_min=manifest.value_range[0],
            value_max=manifest.value_range[1],
        ),  # fmt: skip
        outputs=[c.ModelOutputSpec(name=o.name, dtype=o.dtype, shape=list(o.shape)) for o in manifest.outputs],
        tags=sorted(set(tags or [])),
    )


def scene_dataset(
    path: Path, name: str, bands: list[str], sensor: str = "", description: str = "", tags: list[str] | None = None
) -> core_pb2.Dataset:
    """A catalog Dataset for a GeoTIFF: resolution and footprint (EPSG:4326) read from the file."""
    import rasterio
    from rasterio.warp import transform_bounds

    path = path.resolve()
    with rasterio.open(path) as raster:
        if len(bands) != raster.count:
            raise ValueError(f"{path.name} has {raster.count} band(s) but {len(bands)} band name(s) were given")
        resolution = abs(raster.transform.a) * (
            raster.crs.linear_units_factor[1] if raster.crs and raster.crs.is_projected else 1.0
        )
        bbox = None
        if raster.crs is not None:
            west, south, east, north = transform_bounds(raster.crs, "EPSG:4326", *raster.bounds)
            bbox = c.BoundingBox(min_x=west, min_y=south, max_x=east, max_y=north, crs="EPSG:4326")
    return core_pb2.Dataset(
        name=name, description=description, uri=f"file://{path}", sensor=sensor, bands=bands, resolution_m=resolution,
        bbox=bbox, tags=tags or [],
    )  # fmt: skip


def _uri(location: str) -> str:
    """A local path as a file:// URI (absolute); a URI as it is."""
    return location if "://" in location else Path(location).expanduser().resolve().as_uri()


def stac_import(
    *,
    item: str = "",
    catalog: str = "",
    api_url: str = "",
    collections: list[str] | None = None,
    bbox: list[float] | None = None,
    intersects: dict | None = None,
    datetime: str = "",
    max_cloud_cover: float | None = None,
    cql2_filter: str = "",
    max_items: int = 0,
    one_dataset: bool | None = None,
    name: str = "",
    description: str = "",
    tags: list[str] | None = None,
    bands: list[str] | None = None,
    sensor: str = "",
) -> core_pb2.ImportStacDatasetsRequest:
    """An ImportStacDatasets request from one of: a STAC Item (path or URI), a static catalog/collection (path or
    URI), or a STAC API search (`api_url` with collections, bbox or intersects, datetime, cloud limit, CQL2 filter).
    `one_dataset`: True for one dataset holding every item, False for one per item, None for core's default."""
    mode = {
        None: core_pb2.STAC_IMPORT_MODE_UNSPECIFIED,
        True: core_pb2.STAC_IMPORT_MODE_ONE_DATASET,
        False: core_pb2.STAC_IMPORT_MODE_DATASET_PER_ITEM,
    }[one_dataset]
    request = core_pb2.ImportStacDatasetsRequest(
        mode=mode, name=name, description=description, tags=tags or [], bands=bands or [], sensor=sensor
    )
    if item:
        request.item_uri = _uri(item)
    elif catalog:
        request.catalog_uri = _uri(catalog)
    elif api_url:
        search = core_pb2.StacSearch(
            api_url=api_url,
            collections=collections or [],
            bbox=bbox or [],
            intersects=json.dumps(intersects) if intersects else "",
            datetime=datetime,
            filter=cql2_filter,
            max_items=max_items,
        )
        if max_cloud_cover is not None:
            search.max_cloud_cover = max_cloud_cover
        request.search.CopyFrom(search)
    return request


def ensure(create, find):
    """Create, or fetch the existing entry when the name is taken (so scripts can run twice)."""
    try:
        return create()
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.ALREADY_EXISTS:
            raise
        return find()


def ensure_dataset(core, dataset: core_pb2.Dataset) -> core_pb2.Dataset:
    return ensure(
        lambda: core.CreateDataset(core_pb2.CreateDatasetRequest(dataset=dataset)),
        lambda: core.ListDatasets(core_pb2.ListDatasetsRequest(filter=f'name = "{dataset.name}"')).datasets[0],
    )


def ensure_model(core, model: core_pb2.Model) -> core_pb2.Model:
    return ensure(
        lambda: core.RegisterModel(core_pb2.RegisterModelRequest(model=model)),
        lambda: core.ListModels(
            core_pb2.ListModelsRequest(filter=f'name = "{model.name}" AND version = "{model.version}"')
        ).models[0],
    )


def ensure_models(core, root: Path) -> list[core_pb2.Model]:
    """Register every model folder under `root` (each with a constellation.yaml), reusing entries that exist."""
    return [
        ensure_model(core, model_from_folder(manifest.parent)) for manifest in sorted(root.glob("*/constellation.yaml"))
    ]


def ensure_pipeline(core, name: str, spec: c.PipelineSpec, description: str = "") -> core_pb2.Pipeline:
    return ensure(
        lambda: core.CreatePipeline(
            core_pb2.CreatePipelineRequest(pipeline=core_pb2.Pipeline(name=name, description=description, spec=spec))
        ),
        lambda: core.ListPipelines(core_pb2.ListPipelinesRequest(filter=f'name = "{name}"')).pipelines[0],
    )
