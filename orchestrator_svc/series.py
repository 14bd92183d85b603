"""The summary block's work: one raster per scene (a run over many STAC items) summed up as a time series, and
optionally a mosaic of the scenes. Plain functions over files, strip by strip, like `blocks`."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from orchestrator_svc.blocks import STRIP_PIXELS, RasterError, RasterFile, gdal_env, row_strips

COLUMNS = ("item_id", "acquired", "area_km2", "valid_km2", "fraction", "mean")


@dataclass(frozen=True)
class Table:
    """A summary's outputs: the series as CSV and JSON, and the mosaic when one was asked for."""

    name: str
    csv_path: str
    json_path: str
    rows: int
    mosaic: RasterFile | None = None


def _pixel_km2(raster: RasterFile) -> float:
    from rasterio.crs import CRS

    crs = CRS.from_wkt(raster.crs_wkt)
    if crs.is_geographic:
        raise RasterError(f"{raster.name} is in a geographic CRS; areas need a projected one (set the vectorize CRS)")
    factor = crs.linear_units_factor[1] if crs.linear_units_factor else 1.0
    a, b, _, d, e, _ = raster.transform
    return abs(a * e - b * d) * factor * factor / 1e6


def scene_row(raster: RasterFile, threshold: float, strip_pixels: int = STRIP_PIXELS) -> dict:
    """Area above `threshold`, valid area (km²), their ratio and the mean value of band 1 over valid pixels."""
    import rasterio
    from rasterio.windows import Window

    above = valid = 0
    total = 0.0
    with gdal_env(), rasterio.open(raster.path) as src:
        for top, bottom in row_strips(raster.width, raster.height, strip_pixels):
            data = src.read(1, window=Window(0, top, raster.width, bottom - top), masked=True)
            values = data.compressed().astype(np.float64)
            values = values[np.isfinite(values)]
            valid += values.size
            above += int((values > threshold).sum())
            total += float(values.sum())
    km2 = _pixel_km2(raster)
    return {
        "item_id": raster.item_id or raster.name,
        "acquired": raster.acquired,
        "area_km2": round(above * km2, 6),
        "valid_km2": round(valid * km2, 6),
        "fraction": round(above / valid, 6) if valid else 0.0,
        "mean": round(total / valid, 6) if valid else None,
    }


def mosaic(rasters: Sequence[RasterFile], out_path: Path, name: str) -> RasterFile:
    """The scenes merged on one grid (the finest of them) over their union; later scenes win where both are valid."""
    import rasterio
    from rasterio.merge import merge

    crss = {rasterio.crs.CRS.from_wkt(r.crs_wkt) for r in rasters}
    if len(crss) > 1:
        raise RasterError("the scenes are in different CRSs; a mosaic needs one (set the dataset block's CRS)")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with gdal_env():
        sources = [rasterio.open(r.path) for r in rasters]
        try:
            merge(sources, method="last", nodata=float("nan"), dst_path=str(out_path), dst_kwds={"tiled": True})
        finally:
            for source in sources:
                source.close()
        with rasterio.open(out_path) as out:
            width, height, count, crs_wkt = out.width, out.height, out.count, out.crs.to_wkt()
            transform = tuple(out.transform)[:6]
    return RasterFile(str(out_path), name, width, height, count, crs_wkt, transform, float("nan"))


def summarize(
    rasters: Sequence[RasterFile], threshold: float, folder: Path, name: str, with_mosaic: bool = False
) -> Table:
    """The series in acquisition order as `<name>.csv` and `<name>.json` in `folder` (and `<name>_mosaic.tif`)."""
    ordered = sorted(rasters, key=lambda r: (r.acquired, r.item_id, r.name))
    rows = [scene_row(r, threshold) for r in ordered]
    folder.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = folder / f"{name}.csv", folder / f"{name}.json"
    with open(csv_path, "w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
    document = {
        "name": name,
        "threshold": threshold if math.isfinite(threshold) else None,
        "unit": "km2",
        "series": rows,
    }
    json_path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    merged = mosaic(ordered, folder / f"{name}_mosaic.tif", f"{name}_mosaic") if with_mosaic else None
    return Table(name, str(csv_path), str(json_path), len(rows), merged)
