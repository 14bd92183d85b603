"""A scene kept as one file per band (a STAC Item's assets), brought onto one grid without copying a pixel.

`plan_stack` opens each band file's header and checks it (GeoTIFF/COG, the
band exists, georeferenced, north-up, one CRS for all: mixed CRSs are refused
rather than silently warped); `write_vrt` then writes a GDAL VRT that places
every band file on the target grid, so the blocks after it read the scene
window by window exactly as they read a stacked GeoTIFF, and GDAL resamples
each window as it is read.

The target grid is the extent of the finest band read, at the finest
resolution among the bands read, or at the dataset block's `resolution_m`.
Resampling is chosen per band: class and mask bands (`MASK_BANDS`, e.g. scl,
qa_pixel) are taken nearest, so no class value is invented; reflectance
bands are interpolated bilinearly when brought to a finer grid and averaged
when brought to a coarser one; a band already on the grid is copied.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np

from orchestrator_svc.blocks import RasterError, Scene, gdal_env

# Bands holding classes or flags, never interpolated (STAC/Sentinel-2/Landsat names, lowercase).
MASK_BANDS = frozenset(
    {"scl", "qa", "qa_pixel", "qa_radsat", "qa_aerosol", "fmask", "mask", "cloud", "cloud_mask", "snow",
     "classification", "landcover", "water_mask"}
)  # fmt: skip


@dataclass(frozen=True)
class BandFile:
    band: str  # the dataset's band name
    path: str  # what GDAL opens (a local path)
    band_index: int = 1  # 1-based, in that file


@dataclass(frozen=True)
class Source:
    """A band file's header, as `plan_stack` read it."""

    file: BandFile
    width: int
    height: int
    transform: tuple[float, float, float, float, float, float]
    dtype: str
    nodata: float | None


@dataclass(frozen=True)
class StackPlan:
    sources: tuple[Source, ...]  # in the dataset's band order
    selected: tuple[str, ...]
    crs_wkt: str
    width: int
    height: int
    transform: tuple[float, float, float, float, float, float]
    dtype: str
    nodata: float | None

    @property
    def resolution(self) -> float:
        return self.transform[0]


def resampling_for(band: str, source_res: float, target_res: float) -> str:
    """GDAL's resampling method for bringing a band from `source_res` to `target_res` (same units)."""
    if band.lower() in MASK_BANDS:
        return "nearest"
    if source_res > target_res * (1 + 1e-9):
        return "bilinear"
    if source_res < target_res * (1 - 1e-9):
        return "average"
    return "nearest"


def plan_stack(files: Sequence[BandFile], selected: Sequence[str] = (), resolution_m: float = 0.0) -> StackPlan:
    """Open every band file's header and choose the grid. Raises RasterError naming the band at fault."""
    import rasterio
    from rasterio.crs import CRS
    from rasterio.errors import RasterioError

    names = tuple(selected) or tuple(f.band for f in files)
    have = [f.band for f in files]
    missing = [b for b in names if b not in have]
    if missing:
        raise RasterError(f"has no file for band(s) {', '.join(missing)}; it has {', '.join(have)}")
    sources: list[Source] = []
    crss: dict[str, str] = {}  # band -> CRS
    crs_of: dict[str, CRS] = {}
    with gdal_env():
        for f in files:
            name = Path(f.path).name
            try:
                with rasterio.open(f.path) as src:
                    count, driver, crs, transform = src.count, src.driver, src.crs, src.transform
                    width, height = src.width, src.height
                    dtype = src.dtypes[max(0, min(count, f.band_index) - 1)]
                    nodata = src.nodatavals[f.band_index - 1] if 0 < f.band_index <= count else None
            except RasterioError as error:
                raise RasterError(
                    f"band {f.band} ({name}) cannot be read as a raster: {str(error).splitlines()[0]}"
                ) from None
            if driver not in ("GTiff", "COG"):
                raise RasterError(f"band {f.band} ({name}) is a {driver} file; the orchestrator reads GeoTIFF / COG")
            if not 0 < f.band_index <= count:
                raise RasterError(f"band {f.band} ({name}) has {count} band(s); there is no band {f.band_index}")
            if crs is None or transform.is_identity:
                raise RasterError(f"band {f.band} ({name}) is not georeferenced (no CRS or no geotransform)")
            if transform.b or transform.d or transform.a <= 0 or transform.e >= 0:
                raise RasterError(f"band {f.band} ({name}) is not north-up; rotated grids are not read")
            sources.append(Source(f, width, height, tuple(transform)[:6], dtype, nodata))
            crss[f.band] = crs.to_string()
            crs_of[f.band] = crs
    first = crs_of[files[0].band]
    different = [b for b in crss if crs_of[b] != first]
    if different:
        shown = ", ".join(f"{b}: {crss[b]}" for b in [files[0].band, *different][:4])
        raise RasterError(f"has band files in different CRSs ({shown}); reproject them to one CRS first")
    chosen = [s for s in sources if s.file.band in names]
    finest = min(chosen, key=lambda s: s.transform[0])
    if resolution_m:
        if first.is_geographic:
            raise RasterError(f"is in a geographic CRS ({crss[files[0].band]}); leave resolution_m at 0 for it")
        factor = first.linear_units_factor[1] if first.linear_units_factor else 1.0
        resolution = resolution_m / factor
    else:
        resolution = finest.transform[0]
    left, top = finest.transform[2], finest.transform[5]
    right = left + finest.transform[0] * finest.width
    bottom = top + finest.transform[4] * finest.height
    width = max(1, round((right - left) / resolution))
    height = max(1, round((top - bottom) / resolution))
    if width * height > 2**31:
        raise RasterError(
            f"would be {width}x{height} px at {resolution_m or resolution} per pixel; choose a coarser one"
        )
    nodata = next((s.nodata for s in sources if s.nodata is not None), None)
    dtype = str(np.result_type(*[s.dtype for s in sources]))
    transform = (resolution, 0.0, left, 0.0, -resolution, top)
    return StackPlan(tuple(sources), names, first.to_wkt(), width, height, transform, dtype, nodata)


def _number(value: float) -> str:
    return "nan" if math.isnan(value) else repr(float(value))


def write_vrt(plan: StackPlan, path: Path) -> Scene:
    """The VRT placing every band file on the plan's grid, and the Scene that reads it."""
    import rasterio.dtypes

    res, _, left, _, _, top = plan.transform
    gdal_type = rasterio.dtypes.typename_fwd[rasterio.dtypes.dtype_rev[plan.dtype]]
    lines = [
        f'<VRTDataset rasterXSize="{plan.width}" rasterYSize="{plan.height}">',
        f"  <SRS>{escape(plan.crs_wkt)}</SRS>",
        f"  <GeoTransform>{left!r}, {res!r}, 0.0, {top!r}, 0.0, {-res!r}</GeoTransform>",
    ]
    for k, source in enumerate(plan.sources, start=1):
        a, _, c, _, e, f = source.transform
        method = resampling_for(source.file.band, a, res)
        # A file whose nodata differs from the scene's goes through a ComplexSource that leaves its nodata pixels
        # unwritten (they keep the band's nodata); the others are plain copies, GDAL's fastest path.
        complex_source = source.nodata is not None and source.nodata != plan.nodata
        tag = "ComplexSource" if complex_source else "SimpleSource"
        lines += [
            f'  <VRTRasterBand dataType="{gdal_type}" band="{k}">',
            f"    <Description>{escape(source.file.band)}</Description>",
        ]
        if plan.nodata is not None:
            lines.append(f"    <NoDataValue>{_number(plan.nodata)}</NoDataValue>")
        lines += [
            f'    <{tag} resampling="{method}">',
            f'      <SourceFilename relativeToVRT="0">{escape(source.file.path)}</SourceFilename>',
            f"      <SourceBand>{source.file.band_index}</SourceBand>",
            f'      <SrcRect xOff="0" yOff="0" xSize="{source.width}" ySize="{source.height}"/>',
            f'      <DstRect xOff="{(c - left) / res!r}" yOff="{(top - f) / res!r}" '
            f'xSize="{source.width * a / res!r}" ySize="{source.height * -e / res!r}"/>',
        ]
        if complex_source:
            lines.append(f"      <NODATA>{_number(source.nodata)}</NODATA>")  # type: ignore[arg-type]
        lines += [f"    </{tag}>", "  </VRTRasterBand>"]
    lines.append("</VRTDataset>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    bands = [s.file.band for s in plan.sources]
    return Scene(
        path=str(path),
        band_names=plan.selected,
        band_indexes=tuple(bands.index(b) + 1 for b in plan.selected),
        width=plan.width,
        height=plan.height,
        crs_wkt=plan.crs_wkt,
        transform=plan.transform,
        nodata=plan.nodata,
        dtype=plan.dtype,
        rgb_indexes=tuple(bands.index(b) + 1 for b in ("red", "green", "blue"))
        if {"red", "green", "blue"} <= set(bands)
        else (),
    )
