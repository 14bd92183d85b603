"""Real multi-band GeoTIFF scenes for the orchestrator's tests and benchmark, written window by window.

Four uint16 bands [blue, green, red, nir] of surface reflectance × 10000 in
UTM zone 25S (EPSG:32725, 10 m pixels), with a round lake and a river of
water (green above nir: NDWI > 0) in land (nir well above green), a smooth
ripple and a little noise that never flips a pixel, and a nodata (0) patch
in the top-left corner.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

BANDS = ["blue", "green", "red", "nir"]
CRS = "EPSG:32725"
ORIGIN = (500_000.0, 9_100_000.0)
PIXEL_M = 10.0
NODATA = 0
NODATA_PATCH_PX = 16


def water_mask(rows: np.ndarray, cols: np.ndarray, size: int) -> np.ndarray:
    """True for water at integer pixel rows/cols (broadcast), for a scene `size` px square."""
    lake = (rows - 0.55 * size) ** 2 + (cols - 0.35 * size) ** 2 < (0.2 * size) ** 2
    river_centre = 0.75 * size + 0.08 * size * np.sin(rows / size * 2 * np.pi)
    river = np.abs(cols - river_centre) < 0.04 * size
    return lake | river


def scene_window(size: int, top: int, bottom: int, seed: int = 7) -> np.ndarray:
    """Bands × rows [top, bottom) × size columns of uint16 DN."""
    rows = np.arange(top, bottom, dtype=np.float64)[:, None]
    cols = np.arange(size, dtype=np.float64)[None, :]
    water = water_mask(rows, cols, size)
    ripple = 0.01 * np.sin(rows / 37.0) * np.cos(cols / 53.0)
    noise = np.random.default_rng(seed + top).uniform(-0.005, 0.005, size=(4, bottom - top, size))
    blue = np.where(water, 0.06, 0.05) + ripple
    green = np.where(water, 0.09, 0.08) + ripple
    red = np.where(water, 0.05, 0.09) + ripple
    nir = np.where(water, 0.03, 0.32) + ripple
    data = np.stack([blue, green, red, nir]) + noise
    dn = np.clip(np.round(data * 10_000), 1, 65_535).astype(np.uint16)
    if top < NODATA_PATCH_PX:
        dn[:, : NODATA_PATCH_PX - top, :NODATA_PATCH_PX] = NODATA
    return dn


def write_scene(
    path: Path, size: int, *, rows_per_write: int = 512, seed: int = 7, compress: str | None = None
) -> Path:
    import rasterio
    from affine import Affine
    from rasterio.windows import Window

    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": 4,
        "dtype": "uint16",
        "crs": CRS,
        "transform": Affine(PIXEL_M, 0.0, ORIGIN[0], 0.0, -PIXEL_M, ORIGIN[1]),
        "nodata": NODATA,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "BIGTIFF": "IF_SAFER",
    }
    if compress:
        profile["compress"] = compress
    with rasterio.Env(GDAL_CACHEMAX=64 * 1024 * 1024), rasterio.open(path, "w", **profile) as dst:
        for top in range(0, size, rows_per_write):
            bottom = min(size, top + rows_per_write)
            dst.write(scene_window(size, top, bottom, seed), window=Window(0, top, size, bottom - top))
    return path


def ndwi_probability(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The NDWI model's answer computed independently with numpy over the whole file: (probability, nodata mask).
    Reflectance normalisation (DN / 10000) as the tests' pipelines use."""
    import rasterio

    with rasterio.open(path) as src:
        data = src.read().astype(np.float32)
        nodata = src.nodata
    green, nir = data[1] / 10_000, data[3] / 10_000
    total = green + nir
    ndwi = np.divide(green - nir, total, out=np.full_like(total, -1e-6), where=total != 0)
    probability = (1.0 / (1.0 + np.exp(-10.0 * ndwi))).astype(np.float32)
    return probability, (data == nodata).any(axis=0)
