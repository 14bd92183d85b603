"""Multi-asset scenes for the orchestrator's tests and benchmark: the synthetic scene of orchestrator_scenes as
one Cloud-Optimized GeoTIFF per band (some at half resolution, averaged), on several dates.

Dates differ by a synthetic flood: on date k the top `flood_rows[k]` rows of the scene's right half turn to
water (water's reflectances), so the water area of each date is known exactly from the stacked scene.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from constellation.common.v1 import common_pb2 as c
from tests.orchestrator_scenes import BANDS, CRS, NODATA, NODATA_PATCH_PX, ORIGIN, PIXEL_M, scene_window

# Bands of a 6-band scene: the four of orchestrator_scenes and two SWIR bands derived from nir.
SIX_BANDS = [*BANDS, "swir1", "swir2"]
WATER_DN = {"blue": 600, "green": 900, "red": 500, "nir": 300, "swir1": 150, "swir2": 100}


@dataclass(frozen=True)
class MultiAssetScene:
    item: c.SceneItem  # its assets: one COG per band
    stacked: Path  # the same pixels as one stacked GeoTIFF, every band at full resolution


def scene_pixels(size: int, bands: Sequence[str] = BANDS, flood_rows: int = 0, seed: int = 7) -> np.ndarray:
    """(bands, size, size) uint16 DN of the synthetic scene, with the top `flood_rows` of its right half flooded."""
    four = scene_window(size, 0, size, seed)
    extra = {"swir1": (four[3] * 0.6).astype(np.uint16), "swir2": (four[3] * 0.4).astype(np.uint16)}
    data = np.stack([four[BANDS.index(b)] if b in BANDS else extra[b] for b in bands])
    if flood_rows:
        for k, band in enumerate(bands):
            data[k, :flood_rows, size // 2 :] = WATER_DN[band]
    data[:, :NODATA_PATCH_PX, :NODATA_PATCH_PX] = NODATA
    return data


def _profile(size: int, count: int, pixel_m: float) -> dict:
    from affine import Affine

    return {
        "driver": "GTiff", "width": size, "height": size, "count": count, "dtype": "uint16", "crs": CRS,
        "transform": Affine(pixel_m, 0.0, ORIGIN[0], 0.0, -pixel_m, ORIGIN[1]), "nodata": NODATA,
        "tiled": True, "blockxsize": 256, "blockysize": 256,
    }  # fmt: skip


def write_multi_asset_scene(
    folder: Path,
    item_id: str,
    size: int,
    *,
    bands: Sequence[str] = BANDS,
    half: Sequence[str] = ("red", "nir"),
    flood_rows: int = 0,
    acquired: datetime | None = None,
    compress: str | None = None,
) -> MultiAssetScene:
    """`folder/<item_id>.tif` (stacked) and `folder/<item_id>/<band>.tif` COGs; bands in `half` at 2× the pixel size
    (each pixel the average of the 2×2 it covers). `size` must be even. `compress`: the stacked file's (the COGs
    are DEFLATE)."""
    import rasterio
    from rasterio.enums import Resampling
    from rio_cogeo.cogeo import cog_translate
    from rio_cogeo.profiles import cog_profiles

    folder.mkdir(parents=True, exist_ok=True)
    data = scene_pixels(size, bands, flood_rows)
    stacked = folder / f"{item_id}.tif"
    with rasterio.open(
        stacked, "w", **_profile(size, len(bands), PIXEL_M), **({"compress": compress} if compress else {})
    ) as dst:
        dst.write(data)
        dst.descriptions = tuple(bands)
    item = c.SceneItem(id=item_id, crs=CRS, stac_href=f"file://{folder}/{item_id}.json")
    item.acquired_time.FromDatetime(acquired or datetime(2024, 6, 1, 10, 30, tzinfo=UTC))
    (folder / item_id).mkdir(exist_ok=True)
    for k, band in enumerate(bands):
        plain = folder / item_id / f"{band}.plain.tif"
        if band in half:
            with rasterio.open(stacked) as src:
                pixels = src.read(k + 1, out_shape=(size // 2, size // 2), resampling=Resampling.average)
            size_px, pixel_m = size // 2, 2 * PIXEL_M
        else:
            pixels, size_px, pixel_m = data[k], size, PIXEL_M
        with rasterio.open(plain, "w", **_profile(size_px, 1, pixel_m)) as dst:
            dst.write(pixels, 1)
        cog = folder / item_id / f"{band}.tif"
        cog_translate(str(plain), str(cog), cog_profiles.get("deflate"), quiet=True)
        plain.unlink()
        item.assets.add(band=band, uri=f"file://{cog}", band_index=1, resolution_m=pixel_m, asset_key=band)
    return MultiAssetScene(item, stacked)
