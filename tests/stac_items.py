"""STAC Items for tests and benchmarks, made from the shipped Landsat 7 sample scene (never downloaded).

    items = make_items(folder)                       # three dates, one folder per item
    items = make_items(folder, dates=[date(2024, 6, 3)], cloud_fractions=[0.0])

Each item is one scene of examples/data/L7_ETMs.tif (Olinda, Brazil; EPSG:31985)
as Landsat and Sentinel-2 publish them: one Cloud-Optimized GeoTIFF per band,
asset keys that say nothing (B1..B7), and the band meaning only in the metadata
(`eo:bands` common names, `raster:bands`, projection per asset). The two
shortwave-infrared bands are averaged to half resolution (57 m instead of
28.5 m), like Sentinel-2's 20 m bands beside its 10 m ones.

The dates are synthetic: every item holds the same pixels except for a
synthetic cloud (a bright disc, 250 in every band) whose size is set per date,
so `eo:cloud_cover` differs between items and is exact (the disc's share of the
pixels, in percent). Nothing else changes from date to date.

Items are written next to their COGs as `<folder>/<item id>/<item id>.json`
with absolute `file://` asset hrefs, and a static collection
`<folder>/collection.json` links them all. `validate(item)` checks an item
with stac-validator against the schemas kept in tests/data/stac_schemas (tests/stac_schemas.py)
(this machine cannot fetch them).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np

from tests.stac_schemas import schema_map

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "examples" / "data" / "L7_ETMs.tif"
COLLECTION = "constellation-l7-olinda"
# (asset key, ETM+ band name, STAC eo:common_name, centre wavelength µm) in the source file's band order.
BANDS = [
    ("B1", "blue", "blue", 0.48),
    ("B2", "green", "green", 0.56),
    ("B3", "red", "red", 0.66),
    ("B4", "nir", "nir", 0.84),
    ("B5", "swir1", "swir16", 1.65),
    ("B7", "swir2", "swir22", 2.22),
]
COMMON_NAMES = [common for _, _, common, _ in BANDS]
HALF_RESOLUTION = frozenset({"swir16", "swir22"})
DEFAULT_DATES = (date(2024, 6, 3), date(2024, 6, 19), date(2024, 7, 5))
# Share of each default date's pixels under the synthetic cloud: June 19 is June's least cloudy scene.
DEFAULT_CLOUD_FRACTIONS = (0.30, 0.05, 0.0)
CLOUD_DN = 250


def item_id(day: date) -> str:
    return f"L7_OLINDA_{day:%Y%m%d}"


def cloud_mask(height: int, width: int, fraction: float) -> np.ndarray:
    """A disc centred in the scene covering about `fraction` of the pixels (none for 0)."""
    if fraction <= 0:
        return np.zeros((height, width), dtype=bool)
    rows = np.arange(height)[:, None] - height / 2
    cols = np.arange(width)[None, :] - width / 2
    radius = np.sqrt(fraction * height * width / np.pi)
    return rows**2 + cols**2 < radius**2


def _write_cog(path: Path, data: np.ndarray, profile: dict) -> None:
    import rasterio
    from rasterio.io import MemoryFile
    from rasterio.shutil import copy

    with MemoryFile() as memory:
        with memory.open(**profile) as tmp:
            tmp.write(data, 1)
        with memory.open() as src:
            copy(src, path, driver="COG", compress="DEFLATE", blocksize=256, overview_resampling="average")
    with rasterio.open(path) as check:  # the COG driver writes what it was given
        assert check.shape == data.shape


def _band_files(folder: Path, cloud_fraction: float) -> tuple[dict[str, Path], float]:
    """One COG per band in `folder`; returns {common name: path} and the cloud cover in percent."""
    import rasterio
    from affine import Affine
    from rasterio.enums import Resampling
    from rasterio.warp import reproject

    folder.mkdir(parents=True, exist_ok=True)
    with rasterio.open(SOURCE) as src:
        data = src.read()
        profile = src.profile
        transform = src.transform
    cloud = cloud_mask(data.shape[1], data.shape[2], cloud_fraction)
    data[:, cloud] = CLOUD_DN
    paths: dict[str, Path] = {}
    for i, (key, _, common, _) in enumerate(BANDS):
        band = data[i]
        band_profile = {**profile, "count": 1, "driver": "GTiff", "tiled": False}
        band_profile.pop("blockxsize", None)
        band_profile.pop("blockysize", None)
        if common in HALF_RESOLUTION:  # averaged onto a grid of twice the pixel size from the same corner
            half = np.zeros(((band.shape[0] + 1) // 2, (band.shape[1] + 1) // 2), dtype=band.dtype)
            half_transform = transform @ Affine.scale(2)
            reproject(
                band,
                half,
                src_transform=transform,
                src_crs=profile["crs"],
                dst_transform=half_transform,
                dst_crs=profile["crs"],
                resampling=Resampling.average,
            )
            band = half
            band_profile.update(width=half.shape[1], height=half.shape[0], transform=half_transform)
        path = folder / f"{key}.tif"
        _write_cog(path, band, band_profile)
        paths[common] = path
    return paths, round(100.0 * float(cloud.mean()), 2)


def make_item(folder: Path, day: date, cloud_fraction: float, collection: str | None = COLLECTION):
    """One multi-asset pystac.Item for `day` under `folder`/<item id>/, saved as JSON; returns the item."""
    import pystac
    import rasterio
    from pystac.extensions.eo import Band, EOExtension
    from pystac.extensions.projection import ProjectionExtension
    from pystac.extensions.raster import RasterExtension
    from rio_stac.stac import get_dataset_geom, get_projection_info, get_raster_info

    identifier = item_id(day)
    item_dir = folder / identifier
    paths, cloud_cover = _band_files(item_dir, cloud_fraction)
    with rasterio.open(paths["blue"]) as src:
        geometry = get_dataset_geom(src, densify_pts=0, precision=-1)
    item = pystac.Item(
        id=identifier,
        geometry=geometry["footprint"],
        bbox=geometry["bbox"],
        datetime=datetime(day.year, day.month, day.day, 12, 30, tzinfo=UTC),
        properties={"platform": "landsat-7", "instruments": ["etm+"], "gsd": 28.5},
        collection=collection,
    )
    eo = EOExtension.ext(item, add_if_missing=True)
    eo.cloud_cover = cloud_cover
    ProjectionExtension.ext(item, add_if_missing=True).epsg = 31985
    RasterExtension.add_to(item)
    for key, etm_name, common, wavelength in BANDS:
        path = paths[common]
        with rasterio.open(path) as src:
            projection = get_projection_info(src)
            raster = get_raster_info(src, max_size=1024)
        asset = pystac.Asset(
            href=path.resolve().as_uri(),
            media_type=pystac.MediaType.COG,
            roles=["data"],
            title=f"Band {key[1:]} ({etm_name})",
        )
        item.add_asset(key, asset)
        EOExtension.ext(asset).bands = [
            Band.create(name=key, common_name=common, center_wavelength=wavelength, description=etm_name)
        ]
        resolution_m = abs(projection["transform"][0])
        band_info = {k: v for k, v in raster[0].items() if k != "histogram"}
        asset.extra_fields["raster:bands"] = [{**band_info, "spatial_resolution": resolution_m}]
        asset_projection = ProjectionExtension.ext(asset)
        asset_projection.shape = projection["shape"]
        asset_projection.transform = projection["transform"]
        asset.extra_fields["gsd"] = resolution_m
    path = item_dir / f"{identifier}.json"
    item.set_self_href(str(path))
    path.write_text(json.dumps(item.to_dict(transform_hrefs=False), indent=1))
    return item


def make_items(
    folder: Path,
    dates: Sequence[date] = DEFAULT_DATES,
    cloud_fractions: Sequence[float] | None = None,
    collection: str | None = COLLECTION,
) -> list:
    """One item per date (see the module docstring) and `folder`/collection.json linking them all."""

    folder = Path(folder)
    fractions = list(cloud_fractions) if cloud_fractions is not None else list(DEFAULT_CLOUD_FRACTIONS[: len(dates)])
    fractions += [0.0] * (len(dates) - len(fractions))
    items = [make_item(folder, day, fraction, collection) for day, fraction in zip(dates, fractions, strict=True)]
    if collection:
        stac_collection = make_collection(items, collection)
        stac_collection.set_self_href(str(folder / "collection.json"))
        document = stac_collection.to_dict(include_self_link=True, transform_hrefs=False)
        document["links"] += [
            {"rel": "item", "href": f"./{item.id}/{item.id}.json", "type": "application/geo+json"} for item in items
        ]
        (folder / "collection.json").write_text(json.dumps(document, indent=1))
    return items


def make_collection(items: list, collection: str = COLLECTION):
    """A pystac.Collection whose extent covers `items` (the items are not added to it)."""
    import pystac

    boxes = np.array([item.bbox for item in items])
    bbox = [float(boxes[:, 0].min()), float(boxes[:, 1].min()), float(boxes[:, 2].max()), float(boxes[:, 3].max())]
    times = sorted(item.datetime for item in items)
    return pystac.Collection(
        id=collection,
        description="Landsat 7 ETM+ sample scene over Olinda, Brazil, on synthetic dates with synthetic clouds",
        extent=pystac.Extent(pystac.SpatialExtent([bbox]), pystac.TemporalExtent([[times[0], times[-1]]])),
        license="Apache-2.0",
        title="Constellation test scenes",
    )


def validate(item_or_path) -> list[str]:
    """stac-validator's messages for an item (pystac.Item, dict or JSON path); empty when valid."""
    import tempfile

    from stac_validator.validate import StacValidate

    if isinstance(item_or_path, str | Path):
        path = str(item_or_path)
        return _run_validator(StacValidate, path)
    document = item_or_path if isinstance(item_or_path, dict) else item_or_path.to_dict(transform_hrefs=False)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(document, handle)
    try:
        return _run_validator(StacValidate, handle.name)
    finally:
        Path(handle.name).unlink()


def _run_validator(validator_class, path: str) -> list[str]:
    validator = validator_class(path, extensions=True, schema_map=schema_map())
    if validator.run():
        return []
    return [json.dumps(message) for message in validator.message]
