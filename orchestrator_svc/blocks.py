"""The raster work of each block, as plain functions over files: no Dagster, no gRPC.

Memory stays flat as scenes grow: every pass reads and writes window by
window. Statistics are computed over row strips of a fixed pixel budget;
tiles are read one batch at a time; predictions wait on disk, one fixed-size
record per tile (`PredictionStore`); stitching keeps one tile-row strip in
memory; vectorising works on row strips and merges polygons across strip
boundaries; the COG and the preview come from GDAL with a fixed block cache.

Tiling: tiles are `size` px squares whose top-left corners step by
`size - overlap` px, so neighbours share `overlap` px; the last tile of a
row or column is moved back to end at the scene's edge (scenes smaller than a
tile are zero-padded). Blending: MEAN averages every prediction of a pixel;
CENTER takes each pixel from the tile whose centre is nearest (separable, so
each tile owns a rectangle).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np

from model_runtime.manifest import NUMPY_DTYPES  # the one datatype table; ops and the inference client read it here
from pipeline.bands import match_bands

# GDAL's block cache, MiB. Its default is 5% of RAM, which would make memory grow with the scene.
GDAL_CACHE_MB = 64
# Pixels per strip when a pass walks a raster in full-width row strips.
STRIP_PIXELS = 2 * 1024 * 1024
# At most this many processes polygonise a raster's strips at once (vectorize).
VECTORIZE_PROCESSES = 4
NORMALIZATIONS = ("none", "min_max", "z_score", "reflectance")
BLENDS = ("mean", "center")


class RasterError(Exception):
    """A raster cannot be used: unreadable, or not what the spec says it is."""


def nodata_mask(data: np.ndarray, nodata: float | None) -> np.ndarray:
    """(h, w) True where any band of a (bands, h, w) array holds `nodata`."""
    if nodata is None:
        return np.zeros(data.shape[-2:], dtype=bool)
    hits = np.isnan(data) if np.isnan(nodata) else data == nodata
    return hits.any(axis=0)


def gdal_env(**options: object):
    """GDAL's settings for a block's reads and writes (one GDAL thread), and its block cache of GDAL_CACHE_MB.

    The cache is one for the whole process, and is set for the whole process. rasterio.Env(GDAL_CACHEMAX=...)
    sets it too, but puts GDAL's default (5% of RAM) back as it exits, in every thread: a step's env ending
    while a COG was written in another thread (ops.start_early_export) left that COG a 1.2 GiB cache, and the
    worker's peak memory grew with the scene. rasterio takes the size in bytes (GDALSetCacheMax64), not in MB
    as GDAL's own config option does: a cache of 64 bytes holds no block, and every window read decompressed
    each block it touched again."""
    import rasterio
    from rasterio.env import set_gdal_config

    set_gdal_config("GDAL_CACHEMAX", GDAL_CACHE_MB * 1024 * 1024)
    return rasterio.Env(**{"GDAL_NUM_THREADS": "1", **options})


# --------------------------------------------------------------------------- scenes


@dataclass(frozen=True)
class Scene:
    """A georeferenced raster on local disk and the bands a pipeline reads from it."""

    path: str
    band_names: tuple[str, ...]  # the bands the dataset block selected, in its order
    band_indexes: tuple[int, ...]  # their 1-based positions in the file
    width: int
    height: int
    crs_wkt: str
    transform: tuple[float, float, float, float, float, float]  # affine a, b, c, d, e, f
    nodata: float | None
    dtype: str
    # 1-based file positions of red, green and blue when the file has all three (for previews); else empty.
    rgb_indexes: tuple[int, ...] = ()
    # For one item of a dataset of STAC items: its id and acquisition time (ISO 8601); empty otherwise.
    item_id: str = ""
    acquired: str = ""

    def index_of(self, band: str) -> int:
        """The file index of `band`, by any of its names or a near equivalent (pipeline.bands.match_bands)."""
        chosen = match_bands([band], self.band_names).chosen[0]
        if chosen is None:
            raise ValueError(f"the scene has no band {band!r}; it has {', '.join(self.band_names)}")
        return self.band_indexes[self.band_names.index(chosen)]

    @property
    def affine(self):
        from affine import Affine

        return Affine(*self.transform)


def inspect_scene(path: str, file_bands: Sequence[str], selected: Sequence[str] = ()) -> Scene:
    """Open the raster header and check it against the catalog's band list. Raises RasterError."""
    import rasterio
    from rasterio.errors import RasterioError

    try:
        with rasterio.open(path) as src:
            count, width, height = src.count, src.width, src.height
            crs, transform, nodata, dtypes, driver = src.crs, src.transform, src.nodata, src.dtypes, src.driver
    except RasterioError as error:
        raise RasterError(f"cannot be read as a raster: {str(error).splitlines()[0]}") from None
    if driver not in ("GTiff", "COG"):
        raise RasterError(f"is a {driver} file; the orchestrator reads GeoTIFF / COG")
    if count != len(file_bands):
        raise RasterError(f"has {count} band(s) but the dataset lists {len(file_bands)}: {', '.join(file_bands)}")
    if crs is None:
        raise RasterError("has no coordinate reference system; outputs could not be georeferenced")
    if transform.is_identity:
        raise RasterError("has no geotransform; outputs could not be georeferenced")
    if len(set(dtypes)) != 1:
        raise RasterError(f"mixes band types {sorted(set(dtypes))}")
    names = list(selected) or list(file_bands)
    match = match_bands(names, file_bands, near=False)
    if match.missing:
        raise RasterError(f"has no band(s) {', '.join(match.missing)}; it has {', '.join(file_bands)}")
    return Scene(
        path=path,
        band_names=tuple(names),
        band_indexes=tuple(list(file_bands).index(b) + 1 for b in match.chosen if b is not None),
        width=width,
        height=height,
        crs_wkt=crs.to_wkt(),
        transform=tuple(transform)[:6],
        nodata=nodata,
        dtype=dtypes[0],
        rgb_indexes=tuple(list(file_bands).index(b) + 1 for b in ("red", "green", "blue"))
        if {"red", "green", "blue"} <= set(file_bands)
        else (),
    )


def row_strips(width: int, height: int, pixels: int = STRIP_PIXELS) -> Iterator[tuple[int, int]]:
    rows = max(1, pixels // max(1, width))
    for top in range(0, height, rows):
        yield top, min(height, top + rows)


@dataclass(frozen=True)
class BandStats:
    minimum: float
    maximum: float
    mean: float
    std: float
    valid_pixels: int


def band_statistics(scene: Scene, bands: Sequence[str] | None = None) -> dict[str, BandStats]:
    """Min, max, mean and standard deviation of each band over its valid (non-nodata) pixels, strip by strip."""
    import rasterio
    from rasterio.windows import Window

    names = list(bands or scene.band_names)
    indexes = [scene.index_of(b) for b in names]
    lo = np.full(len(names), np.inf)
    hi = np.full(len(names), -np.inf)
    total = np.zeros(len(names))
    squares = np.zeros(len(names))
    counts = np.zeros(len(names), dtype=np.int64)
    with gdal_env(), rasterio.open(scene.path) as src:
        for top, bottom in row_strips(scene.width, scene.height):
            data = src.read(indexes, window=Window(0, top, scene.width, bottom - top)).astype(np.float64)
            for k in range(len(names)):
                band = data[k]
                values = band[~nodata_mask(band[None], scene.nodata)]
                if values.size:
                    lo[k] = min(lo[k], values.min())
                    hi[k] = max(hi[k], values.max())
                    total[k] += values.sum()
                    squares[k] += np.square(values).sum()
                    counts[k] += values.size
    stats = {}
    for k, name in enumerate(names):
        n = int(counts[k])
        mean = total[k] / n if n else 0.0
        variance = max(0.0, squares[k] / n - mean * mean) if n else 0.0
        stats[name] = BandStats(
            float(lo[k]) if n else 0.0, float(hi[k]) if n else 0.0, float(mean), float(math.sqrt(variance)), n
        )
    return stats


# --------------------------------------------------------------------------- tiling


def axis_starts(length: int, size: int, overlap: int) -> tuple[int, ...]:
    """Top-left positions of tiles along one axis: a step of size - overlap, the last one flush with the edge."""
    if length <= size:
        return (0,)
    stride = size - overlap
    starts = list(range(0, length - size, stride))
    starts.append(length - size)
    return tuple(starts)


def owned_ranges(starts: Sequence[int], size: int, length: int) -> list[tuple[int, int]]:
    """For CENTER blending: the span of the axis each tile owns (pixels nearer its centre than any other's)."""
    bounds = [0]
    for previous, current in pairwise(starts):
        bounds.append((previous + current + size) // 2)
    bounds.append(length)
    return [(bounds[i], bounds[i + 1]) for i in range(len(starts))]


@dataclass(frozen=True)
class TileGrid:
    width: int
    height: int
    size: int
    overlap: int
    xs: tuple[int, ...]
    ys: tuple[int, ...]

    @classmethod
    def for_scene(cls, width: int, height: int, size: int, overlap: int) -> TileGrid:
        if size <= 0:
            raise ValueError("tile size must be positive")
        if overlap < 0 or 2 * overlap >= size:
            raise ValueError("overlap must be at least 0 and less than half the tile size")
        return cls(width, height, size, overlap, axis_starts(width, size, overlap), axis_starts(height, size, overlap))

    @property
    def count(self) -> int:
        return len(self.xs) * len(self.ys)

    def position(self, index: int) -> tuple[int, int]:
        """(x, y) of tile `index`, tiles numbered row by row."""
        row, column = divmod(index, len(self.xs))
        return self.xs[column], self.ys[row]

    def extent(self, index: int) -> tuple[int, int, int, int]:
        """(x, y, width, height) of the part of tile `index` inside the scene."""
        x, y = self.position(index)
        return x, y, min(self.size, self.width - x), min(self.size, self.height - y)


@dataclass(frozen=True)
class Normalizer:
    """value = (x - offset) * scale, per band."""

    mode: str
    offsets: tuple[float, ...]
    scales: tuple[float, ...]

    @classmethod
    def build(cls, mode: str, bands: Sequence[str], stats: dict[str, BandStats]) -> Normalizer:
        if mode not in NORMALIZATIONS:
            raise ValueError(f"unknown normalization {mode!r}")
        offsets, scales = [], []
        for band in bands:
            if mode == "min_max":
                s = stats[band]
                span = s.maximum - s.minimum
                offsets.append(s.minimum)
                scales.append(1.0 / span if span > 0 else 1.0)
            elif mode == "z_score":
                s = stats[band]
                offsets.append(s.mean)
                scales.append(1.0 / s.std if s.std > 0 else 1.0)
            elif mode == "reflectance":
                offsets.append(0.0)
                scales.append(1.0 / 10000.0)
            else:
                offsets.append(0.0)
                scales.append(1.0)
        return cls(mode, tuple(offsets), tuple(scales))

    def apply(self, data: np.ndarray) -> None:
        """In place on a (..., bands, h, w) float array."""
        if self.mode == "none":
            return
        shape = (len(self.offsets), 1, 1)
        data -= np.asarray(self.offsets, dtype=data.dtype).reshape(shape)
        data *= np.asarray(self.scales, dtype=data.dtype).reshape(shape)


class TileReader:
    """Reads batches of normalised model-input tiles straight from the scene file."""

    def __init__(
        self, scene: Scene, grid: TileGrid, bands: Sequence[str], normalizer: Normalizer, dtype: str = "FP32"
    ) -> None:
        import rasterio

        self.scene, self.grid, self.normalizer = scene, grid, normalizer
        self.indexes = [scene.index_of(b) for b in bands]
        self.dtype = np.dtype(NUMPY_DTYPES[dtype]).newbyteorder("<")
        nodata = scene.nodata
        # Nodata pixels are zeroed after normalisation; skip the pass when normalisation already makes them 0.
        self._nodata_needs_zeroing = nodata is not None and (
            bool(np.isnan(nodata))
            or any((nodata - o) * s != 0 for o, s in zip(normalizer.offsets, normalizer.scales, strict=True))
        )
        self._raw: np.ndarray | None = None  # reused between batches
        self._env = gdal_env()
        self._env.__enter__()
        self._src = rasterio.open(scene.path)
        # The preview's backdrop, summed from the tiles as they are read when the model reads red, green, blue.
        self.backdrop = BackdropSums.for_reader(self._src, scene, grid, self.indexes)

    def close(self) -> None:
        self._src.close()
        self._env.__exit__(None, None, None)

    def __enter__(self) -> TileReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self, indices: Sequence[int], out: np.ndarray | None = None) -> np.ndarray:
        """(n, bands, size, size) in the model's dtype; pixels outside the scene and nodata pixels are 0.

        Reads each tile in the file's own type (GDAL converting to float is several times slower), then
        converts and normalises the whole batch in one numpy pass. `out` (float32, at least n tiles) is
        reused instead of allocating; the result is then a view of it. When the file's type is the model's and
        nothing is normalised, the result is a view of the reader's own buffer; either way the next read
        overwrites it."""
        from rasterio.windows import Window

        size, bands = self.grid.size, len(self.indexes)
        shape = (len(indices), bands, size, size)
        if self._raw is None or self._raw.shape[0] < len(indices):
            self._raw = np.empty(shape, dtype=self.scene.dtype)
        raw = self._raw[: len(indices)]
        partial = []
        for k, index in enumerate(indices):
            x, y, w, h = self.grid.extent(index)
            if w == size and h == size:
                self._src.read(self.indexes, window=Window(x, y, w, h), out=raw[k])
            else:
                raw[k] = 0
                raw[k, :, :h, :w] = self._src.read(self.indexes, window=Window(x, y, w, h))
                partial.append((k, w, h))
            if self.backdrop is not None:
                self.backdrop.add(index, raw[k])
        if self.normalizer.mode == "none" and raw.dtype == self.dtype and not self._nodata_needs_zeroing:
            return raw  # already the model's values (e.g. UINT8 digital numbers): no round trip through float32
        batch = out[: len(indices)] if out is not None else np.empty(shape, dtype=np.float32)
        offsets = np.asarray(self.normalizer.offsets, dtype=np.float32).reshape(bands, 1, 1)
        scales = np.asarray(self.normalizer.scales, dtype=np.float32).reshape(bands, 1, 1)
        if self.normalizer.mode == "none":
            np.copyto(batch, raw, casting="unsafe")
        elif not offsets.any():
            np.multiply(raw, scales, out=batch)
        else:
            np.subtract(raw, offsets, out=batch)
            batch *= scales
        for k, w, h in partial:
            batch[k, :, h:, :] = 0
            batch[k, :, :, w:] = 0
        if self._nodata_needs_zeroing:
            invalid = nodata_mask(raw.swapaxes(0, 1), self.scene.nodata)  # (n, size, size)
            if invalid.any():
                batch[np.broadcast_to(invalid[:, None], batch.shape)] = 0
        return batch if self.dtype == batch.dtype else batch.astype(self.dtype)


class BackdropSums:
    """The preview's backdrop (read_backdrop's block means) from the tiles the model step reads anyway, so export
    does not decompress the scene a second time (1.4 s of CPU on the 8192² scene; this costs 0.3 s).

    Each tile adds the pixels it owns (owned_ranges: every pixel once, whatever the overlap) to its preview
    blocks' sums, once, however often it is read; `means()` is read_backdrop's result once every tile is in.
    Only where read_backdrop would sum blocks itself (`for_reader`), so the preview is the same either way."""

    def __init__(self, grid: TileGrid, positions: Sequence[int], shape: tuple[int, int]) -> None:
        self.grid, self.positions = grid, list(positions)
        self.fy, self.fx = grid.height // shape[0], grid.width // shape[1]
        self.columns = owned_ranges(grid.xs, grid.size, grid.width)
        self.rows = owned_ranges(grid.ys, grid.size, grid.height)
        self.sums = np.zeros((len(self.positions), *shape), np.uint64)
        self.seen = np.zeros(grid.count, bool)

    @classmethod
    def for_reader(cls, src, scene: Scene, grid: TileGrid, indexes: Sequence[int]) -> BackdropSums | None:
        """Sums for a reader of `indexes` over the open scene `src`, when the preview has a backdrop that
        read_backdrop would take as block means (see there) and the reader reads its three bands."""
        if len(scene.rgb_indexes) != 3 or not set(scene.rgb_indexes) <= set(indexes):
            return None
        shape = preview_shape(scene.width, scene.height)
        if not _takes_block_means(src, scene.rgb_indexes, shape):
            return None
        return cls(grid, [list(indexes).index(b) for b in scene.rgb_indexes], shape)

    def add(self, index: int, tile: np.ndarray) -> None:
        """Tile `index` as read: (bands, size, size), the reader's bands, the file's type."""
        if self.seen[index]:
            return
        row, column = divmod(index, len(self.grid.xs))
        x, y = self.grid.position(index)
        (x0, x1), (y0, y1) = self.columns[column], self.rows[row]
        owned = tile[self.positions, y0 - y : y1 - y, x0 - x : x1 - x]
        # Cut where a preview block starts: the first cut at the owned span's start, which may be mid-block.
        cut_y = np.r_[0, np.arange((y0 // self.fy + 1) * self.fy, y1, self.fy) - y0]
        cut_x = np.r_[0, np.arange((x0 // self.fx + 1) * self.fx, x1, self.fx) - x0]
        blocks = np.add.reduceat(np.add.reduceat(owned, cut_y, axis=1, dtype=np.uint64), cut_x, axis=2)
        by, bx = y0 // self.fy, x0 // self.fx
        self.sums[:, by : by + len(cut_y), bx : bx + len(cut_x)] += blocks
        self.seen[index] = True

    def means(self) -> np.ndarray | None:
        """read_backdrop's (3, rows, columns) float32 once every tile was added; None before."""
        if not self.seen.all():
            return None
        return np.floor(self.sums / (self.fy * self.fx) + 0.5).astype(np.float32)


class PredictionStore:
    """Model outputs on disk: one fixed-size float32 record (channels × size × size) per tile, plus a done flag
    per tile, so a retried model step resumes where the last attempt stopped."""

    def __init__(self, folder: Path, tiles: int, channels: int, size: int) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.tiles, self.channels, self.size = tiles, channels, size
        self.record_bytes = channels * size * size * 4
        self.data_path, self.flags_path = folder / "predictions.f32", folder / "predictions.done"
        self._data = os.open(self.data_path, os.O_RDWR | os.O_CREAT, 0o644)
        self._flags = os.open(self.flags_path, os.O_RDWR | os.O_CREAT, 0o644)
        if os.fstat(self._flags).st_size != tiles:
            os.ftruncate(self._flags, 0)
            os.ftruncate(self._flags, tiles)

    def close(self) -> None:
        os.close(self._data)
        os.close(self._flags)

    def done(self) -> list[bool]:
        return [b == 1 for b in os.pread(self._flags, self.tiles, 0)]

    def write(self, index: int, record: bytes | memoryview) -> None:
        if len(record) != self.record_bytes:
            raise ValueError(f"tile {index}: {len(record)} bytes, expected {self.record_bytes}")
        os.pwrite(self._data, record, index * self.record_bytes)
        os.pwrite(self._flags, b"\x01", index)

    def write_run(self, first: int, records: bytes | memoryview) -> None:
        """Consecutive tiles first, first+1, ... in one write."""
        count, rest = divmod(len(records), self.record_bytes)
        if rest:
            raise ValueError(f"{len(records)} bytes is not a whole number of {self.record_bytes}-byte tiles")
        os.pwrite(self._data, records, first * self.record_bytes)
        os.pwrite(self._flags, b"\x01" * count, first)

    def read(self, index: int) -> np.ndarray:
        raw = os.pread(self._data, self.record_bytes, index * self.record_bytes)
        return np.frombuffer(raw, dtype="<f4").reshape(self.channels, self.size, self.size)


# --------------------------------------------------------------------------- stitching


@dataclass(frozen=True)
class RasterFile:
    """A georeferenced raster a block wrote."""

    path: str
    name: str
    width: int
    height: int
    count: int
    crs_wkt: str
    transform: tuple[float, float, float, float, float, float]
    nodata: float | None
    # The scene it was predicted from and its red, green, blue positions: the preview's backdrop.
    backdrop_path: str = ""
    backdrop_bands: tuple[int, ...] = ()
    # read_backdrop's result for it, saved by numpy (BackdropSums, from the model step's reads); else empty.
    backdrop_means: str = ""
    # The STAC item it was computed from (Scene.item_id, Scene.acquired); empty otherwise.
    item_id: str = ""
    acquired: str = ""


def stitch(
    store: PredictionStore,
    grid: TileGrid,
    scene: Scene,
    mask_bands: Sequence[str],
    blend: str,
    out_path: Path,
    name: str,
) -> RasterFile:
    """Merge tile predictions into one float32 GeoTIFF with the scene's CRS, transform and nodata.

    Works down the scene one tile row at a time with a strip buffer of one tile's height: rows above the
    next tile row's top are final and are written out (nodata where any of `mask_bands` is nodata).
    """
    import rasterio
    from rasterio.windows import Window

    if blend not in BLENDS:
        raise ValueError(f"unknown blend {blend!r}")
    size, width, height, channels = grid.size, grid.width, grid.height, store.channels
    nodata = scene.nodata
    column_owned = owned_ranges(grid.xs, size, width)
    row_owned = owned_ranges(grid.ys, size, height)
    strip_rows = min(size, height)
    values = np.zeros((channels, strip_rows, width), dtype=np.float64)
    weights = np.zeros((strip_rows, width), dtype=np.float32)
    mask_indexes = [scene.index_of(b) for b in mask_bands]
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": channels,
        "dtype": "float32",
        "crs": scene.crs_wkt,
        "transform": scene.affine,
        "nodata": nodata,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "BIGTIFF": "IF_SAFER",
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with gdal_env(), rasterio.open(scene.path) as src, rasterio.open(out_path, "w", **profile) as dst:
        base = 0

        def flush(upto: int) -> None:
            nonlocal base
            rows = upto - base
            if rows <= 0:
                return
            with np.errstate(invalid="ignore", divide="ignore"):
                out = (values[:, :rows] / weights[:rows]).astype(np.float32)
            if nodata is not None:
                data = src.read(mask_indexes, window=Window(0, base, width, rows))
                out[:, nodata_mask(data, nodata)] = np.float32(nodata)
            dst.write(out, window=Window(0, base, width, rows))
            values[:, : strip_rows - rows] = values[:, rows:]
            values[:, strip_rows - rows :] = 0
            weights[: strip_rows - rows] = weights[rows:]
            weights[strip_rows - rows :] = 0
            base = upto

        for row, y in enumerate(grid.ys):
            flush(y)
            for column, x in enumerate(grid.xs):
                index = row * len(grid.xs) + column
                tile = store.read(index)
                h, w = min(size, height - y), min(size, width - x)
                if blend == "mean":
                    values[:, y - base : y - base + h, x : x + w] += tile[:, :h, :w]
                    weights[y - base : y - base + h, x : x + w] += 1
                else:
                    (x0, x1), (y0, y1) = column_owned[column], row_owned[row]
                    values[:, y0 - base : y1 - base, x0:x1] = tile[:, y0 - y : y1 - y, x0 - x : x1 - x]
                    weights[y0 - base : y1 - base, x0:x1] = 1
        flush(height)
    return RasterFile(
        str(out_path),
        name,
        width,
        height,
        channels,
        scene.crs_wkt,
        scene.transform,
        nodata,
        scene.path,
        scene.rgb_indexes,
    )


# --------------------------------------------------------------------------- band math


def normalized_difference_values(first: np.ndarray, second: np.ndarray, invalid: np.ndarray) -> np.ndarray:
    """(first - second) / (first + second) as float32; NaN where `invalid` or first + second is 0."""
    a = first.astype(np.float32)
    b = second.astype(np.float32)
    total = a + b
    invalid = invalid | (total == 0) | ~np.isfinite(total)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (a - b) / np.where(invalid, np.float32(1), total)
    out[invalid] = np.nan
    return out


def normalized_difference(
    scene: Scene, first: str, second: str, out_path: Path, name: str, strip_pixels: int = STRIP_PIXELS
) -> RasterFile:
    """One float32 band (first - second) / (first + second) on the scene's grid, written strip by strip.

    Nodata is NaN: where either band is the scene's nodata, or first + second is 0. (The scene's own
    nodata value could be a valid index value, e.g. 0.)"""
    import rasterio
    from rasterio.windows import Window

    indexes = [scene.index_of(first), scene.index_of(second)]
    profile = {
        "driver": "GTiff", "width": scene.width, "height": scene.height, "count": 1, "dtype": "float32",
        "crs": scene.crs_wkt, "transform": scene.affine, "nodata": float("nan"),
        "tiled": True, "blockxsize": 256, "blockysize": 256, "BIGTIFF": "IF_SAFER",
    }  # fmt: skip
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with gdal_env(), rasterio.open(scene.path) as src, rasterio.open(out_path, "w", **profile) as dst:
        for top, bottom in row_strips(scene.width, scene.height, strip_pixels):
            window = Window(0, top, scene.width, bottom - top)
            data = src.read(indexes, window=window)
            dst.write(
                normalized_difference_values(data[0], data[1], nodata_mask(data, scene.nodata))[None], window=window
            )
    return RasterFile(str(out_path), name, scene.width, scene.height, 1, scene.crs_wkt, scene.transform, float("nan"))


# --------------------------------------------------------------------------- vectorising


@dataclass(frozen=True)
class VectorFile:
    path: str
    name: str
    crs: str  # of the coordinates in the file, e.g. "EPSG:4326"
    features: int
    processes: int = 1  # that polygonised its strips (vectorize)
    peak_strip_kib: int = 0  # the largest peak memory of those processes, when they were not this one


def _metres_per_unit(crs) -> tuple[float, bool]:
    """(metres per CRS unit, is geographic). Geographic degrees are taken at the equator (111.32 km)."""
    if crs.is_geographic:
        return 111_320.0, True
    factor = crs.linear_units_factor[1] if crs.linear_units_factor else 1.0
    return float(factor), False


def _without_specks(inside: np.ndarray, up_to: int) -> np.ndarray:
    """`inside` less its 4-connected components of at most `up_to` (1 or 2) pixels, found by counting each
    pixel's neighbours: a pixel with none is a component of one, two neighbours with one each a component of
    two. Exact for every row with two rows of `inside` (or the raster's edge) above and below it."""
    neighbours = np.zeros(inside.shape, dtype=np.uint8)
    neighbours[1:] += inside[:-1]
    neighbours[:-1] += inside[1:]
    neighbours[:, 1:] += inside[:, :-1]
    neighbours[:, :-1] += inside[:, 1:]
    speck = inside & (neighbours == 0)
    if up_to >= 2:
        one = inside & (neighbours == 1)
        across, down = one[:, :-1] & one[:, 1:], one[:-1] & one[1:]
        speck[:, :-1] |= across
        speck[:, 1:] |= across
        speck[:-1] |= down
        speck[1:] |= down
    return inside & ~speck


def _strip_polygons(src, threshold: float, top: int, bottom: int, width: int, speck_px: int = 0) -> np.ndarray:
    """The polygons of band 1 > threshold in rows [top, bottom), in pixel coordinates of the whole raster,
    leaving out shapes of at most `speck_px` (0, 1 or 2) pixels (_without_specks, on the strip and two rows
    either side of it, so a shape that goes on across a seam is never taken for one).

    rasterio.features.shapes yields GeoJSON-like dicts; their rings are gathered into flat arrays and built
    into shapely polygons in one call (building them one by one costs more than GDAL's polygonize)."""
    import shapely
    from affine import Affine
    from rasterio.features import shapes
    from rasterio.windows import Window

    above, below = (min(2, top), min(2, src.height - bottom)) if speck_px else (0, 0)
    data = src.read(1, window=Window(0, top - above, width, bottom - top + above + below), masked=True)
    inside = data.filled(-np.inf) > threshold
    if speck_px:
        inside = _without_specks(inside, speck_px)[above : above + bottom - top]
    inside = inside.astype(np.uint8)
    coords: list = []
    ring_sizes: list[int] = []
    rings_per_polygon: list[int] = []
    for geometry, _ in shapes(inside, mask=inside.astype(bool), connectivity=4, transform=Affine.translation(0, top)):
        rings = geometry["coordinates"]
        rings_per_polygon.append(len(rings))
        for ring in rings:
            ring_sizes.append(len(ring))
            coords.extend(ring)
    if not rings_per_polygon:
        return np.empty(0, dtype=object)
    offsets = (
        np.concatenate([[0], np.cumsum(ring_sizes)]).astype(np.int64),
        np.concatenate([[0], np.cumsum(rings_per_polygon)]).astype(np.int64),
    )
    return shapely.from_ragged_array(shapely.GeometryType.POLYGON, np.asarray(coords, dtype=np.float64), offsets)


def _simplify_each(polygons: np.ndarray, tolerance: float) -> np.ndarray:
    """GEOS's coverage simplification of each polygon on its own (a coverage of one), in one vectorised call.

    shapely.coverage_simplify takes a whole array as one coverage; wrapping each polygon in a collection of
    its own and calling the ufunc underneath it simplifies them independently, as a loop over
    shapely.coverage_simplify(polygon) would, without a Python call per polygon. Empty results become None."""
    import shapely

    collections = shapely.geometrycollections(polygons.reshape(-1, 1))
    return shapely.get_geometry(shapely.lib.coverage_simplify(collections, tolerance, True), 0)


def _merge_seam(above: np.ndarray, below: np.ndarray) -> np.ndarray:
    """The polygons of two strips that touch their common seam, those that share an edge across it unioned:
    each group of polygons connected across the seam (an STRtree query) is unioned on its own, and a polygon
    that touches nothing across it is kept as it is. One union of them all cost time in the size of
    everything waiting at the seam, for every strip."""
    import shapely

    both = np.concatenate([above, below])
    if not len(above) or not len(below):
        return both
    left, right = shapely.STRtree(below).query(above, predicate="intersects")
    parent = list(range(len(both)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in zip(left.tolist(), (right + len(above)).tolist(), strict=True):
        parent[root(a)] = root(b)
    groups: dict[int, list[int]] = {}
    for i in range(len(both)):
        groups.setdefault(root(i), []).append(i)
    merged = []
    for members in groups.values():
        if len(members) == 1:
            merged.append(both[members[0]])
        else:  # parts: polygons meeting only at a corner stay apart (4-connected pixels)
            merged.extend(shapely.get_parts(shapely.union_all(both[members])).tolist())
    result = np.array(merged, dtype=object)
    return result[~shapely.is_empty(result)]


@dataclass(frozen=True)
class _Finish:
    """How finished polygons (pixel coordinates) become features: placed in the raster's CRS, measured,
    filtered, simplified and reprojected as arrays (shapely's vectorised functions, one PROJ call per batch),
    then each geometry's GeoJSON text. A polygon's area is its pixels' (before simplification, which only
    smooths the outline): polygons below the minimum are dropped before they are simplified. Plain values, so
    it travels to the strip processes."""

    transform: tuple[float, ...]
    source_wkt: str
    target: str  # the CRS the features are written in (user input, or the source's WKT)
    tolerance: float  # simplification, CRS units
    min_area_m2: float

    def speck_px(self) -> int:
        """Shapes of at most this many pixels (0, 1 or 2) are below the minimum area wherever they are, so
        they need not be polygonised at all (a geographic raster's pixel is largest at the equator)."""
        from rasterio.crs import CRS

        t = self.transform
        unit_m, _ = _metres_per_unit(CRS.from_wkt(self.source_wkt))
        pixel_m2 = abs(t[0] * t[4] - t[1] * t[3]) * unit_m * unit_m
        return next((n for n in (2, 1) if n * pixel_m2 < self.min_area_m2), 0)

    def __call__(self, polygons: np.ndarray) -> list[tuple[str, float]]:
        """(geometry JSON, area m²) of each polygon kept, in order."""
        import shapely
        from affine import Affine
        from rasterio.crs import CRS
        from rasterio.warp import transform as warp_transform

        if not len(polygons):
            return []
        source_crs, target_crs = CRS.from_wkt(self.source_wkt), CRS.from_user_input(self.target)
        unit_m, geographic = _metres_per_unit(source_crs)
        t = Affine(*self.transform)
        matrix, offset = np.array([[t.a, t.b], [t.d, t.e]]), np.array([t.c, t.f])
        # pixel (column, row) to the raster's CRS: the arithmetic of shapely.affinity.affine_transform
        geometries = shapely.transform(polygons, lambda coords: np.matmul(matrix, coords.T).T + offset)
        areas = shapely.area(geometries) * unit_m * unit_m
        if geographic:
            # math.cos, not np.cos: numpy's SIMD cosine may differ in the last bit, and areas are rounded
            areas *= np.array([math.cos(math.radians(y)) for y in shapely.get_y(shapely.centroid(geometries))])
        keep = ~(areas < self.min_area_m2)
        geometries, areas = geometries[keep], areas[keep]
        if self.tolerance:
            # GEOS's coverage simplification keeps rings valid and apart like preserve_topology=True,
            # in near-linear time: the topology-preserving simplify takes minutes on a polygon with
            # tens of thousands of holes (a fragmented mask over a town).
            geometries = _simplify_each(geometries, self.tolerance)
            kept = ~(shapely.is_missing(geometries) | shapely.is_empty(geometries))
            geometries, areas = geometries[kept], areas[kept]
        if target_crs != source_crs and len(geometries):

            def to_target(coords: np.ndarray) -> np.ndarray:  # every vertex of the batch in one PROJ call
                xs, ys = warp_transform(source_crs, target_crs, coords[:, 0], coords[:, 1])
                return np.column_stack([xs, ys])

            geometries = shapely.transform(geometries, to_target)
        # GEOS writes the geometries' GeoJSON (compact, coordinates as Python would print them) in one call
        return list(zip(shapely.to_geojson(geometries).tolist(), [round(a, 3) for a in areas.tolist()], strict=True))


def _strip_features(
    path: str, threshold: float, top: int, bottom: int, width: int, height: int, finish: _Finish
) -> tuple[list[tuple[str, float]], np.ndarray, int]:
    """One strip's work, in a strip process: its polygons, those that touch neither of its seams finished
    (features), those that do returned as they are (pixel coordinates) to be joined across the seam; and the
    process's peak memory so far (KiB)."""
    import rasterio
    import shapely

    with gdal_env(), rasterio.open(path) as src:
        polygons = _strip_polygons(src, threshold, top, bottom, width, finish.speck_px())
    at_seam = np.zeros(len(polygons), dtype=bool)
    if len(polygons):
        bounds = shapely.bounds(polygons)
        at_seam = ((bounds[:, 1] == top) & (top > 0)) | ((bounds[:, 3] == bottom) & (bottom < height))
    return finish(polygons[~at_seam]), polygons[at_seam], peak_rss_kib() or 0


def peak_rss_kib() -> int | None:
    """This process's peak resident memory since it started this program (VmHWM; unlike ru_maxrss it does not
    count the parent's memory copied by fork before exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def usable_cpus(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """The cores this process may use: its CPU affinity, capped by its cgroup's CPU quota (a container's
    `--cpus`, a pod's CPU limit), which affinity does not show: cgroup v2's cpu.max, or v1's cpu.cfs_*."""
    cpus = len(os.sched_getaffinity(0))
    for quota_file, period_file in (("cpu.max", ""), ("cpu/cpu.cfs_quota_us", "cpu/cpu.cfs_period_us")):
        try:
            if period_file:
                quota, period = (cgroup / quota_file).read_text().strip(), (cgroup / period_file).read_text().strip()
            else:
                quota, period = (cgroup / quota_file).read_text().split()
            if quota not in ("max", "-1"):
                return max(1, min(cpus, math.ceil(int(quota) / int(period))))
        except (OSError, ValueError):
            continue
    return cpus


def strip_processes() -> int:
    """How many processes vectorize polygonises strips in: the cores this process may use (usable_cpus), at
    most VECTORIZE_PROCESSES; 1 (a thread of this process) on one core, or in a process that multiprocessing
    started (a step process of a run over many items, which runs beside other steps)."""
    import multiprocessing

    if multiprocessing.parent_process() is not None:
        return 1
    return max(1, min(VECTORIZE_PROCESSES, usable_cpus()))


def _forkserver():
    """The multiprocessing context the strip processes start from: forked by a forkserver that has imported
    this module, GDAL's and shapely's, and this process's main module, which every child of a forkserver
    imports again (the run's worker keeps Dagster out of its module's imports for this). The run's worker has
    threads, which a plain fork must not copy mid-call; a fresh interpreter per process would spend a second
    importing."""
    import multiprocessing
    import sys

    main = getattr(sys.modules["__main__"].__spec__, "name", None)
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([*([main] if main and not main.endswith("__main__") else []), __name__,
                                    "rasterio.features", "shapely"])  # fmt: skip
    return context


def start_strip_processes() -> None:
    """Starts the forkserver of vectorize's strip processes in the background (its imports take seconds of one
    core), so that a run's worker pays for it beside its first steps, not in the vectorize step."""
    if strip_processes() > 1:
        from multiprocessing import forkserver

        _forkserver()
        forkserver.ensure_running()


def _strip_pool(processes: int):
    """An executor for _strip_features: `processes` strip processes (_forkserver), or a thread when there is one."""
    from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

    if processes < 2:
        return ThreadPoolExecutor(1, "vectorize-strip")
    return ProcessPoolExecutor(processes, mp_context=_forkserver())


def vectorize(
    raster: RasterFile,
    threshold: float,
    simplify_tolerance_m: float,
    min_area_m2: float,
    crs: str,
    out_path: Path,
    name: str,
    processes: int | None = None,
) -> VectorFile:
    """Polygons where band 1 > threshold, as a GeoJSON FeatureCollection in `crs` (empty: the raster's CRS).

    Row strips are polygonised in `processes` processes at once (strip_processes() by default; a thread of
    this process for fewer than two strips a process), each strip finishing its polygons that touch neither
    of its seams (_Finish) and handing back those that do. Here, in strip order, polygons waiting at a seam
    are joined with the next strip's that touch it, so a shape crossing strips comes out whole, and finished
    once they touch no seam still to come. Pixels are 4-connected; polygons are built in pixel coordinates
    (exact unions) and moved into the CRS when finished. Features are written strip by strip: each strip's
    own, then the shapes completed at its seams.
    """
    import shapely
    from rasterio.crs import CRS

    source_crs = CRS.from_wkt(raster.crs_wkt)
    target_crs = CRS.from_user_input(crs) if crs else source_crs
    unit_m, _ = _metres_per_unit(source_crs)
    finish = _Finish(
        tuple(raster.transform),
        raster.crs_wkt,
        crs or raster.crs_wkt,
        simplify_tolerance_m / unit_m if simplify_tolerance_m else 0.0,
        min_area_m2,
    )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    strips = list(row_strips(raster.width, raster.height, STRIP_PIXELS))
    # at least two strips a process: a raster of a strip or two is done before processes would be
    processes = max(1, min(len(strips) // 2, strip_processes() if processes is None else processes))

    with open(out_path, "w", encoding="utf-8") as out:
        header: dict = {"type": "FeatureCollection"}
        epsg = target_crs.to_epsg()
        if epsg != 4326:  # RFC 7946 GeoJSON is WGS84; name any other CRS the way GeoJSON 2008 did
            header["crs"] = {
                "type": "name",
                "properties": {"name": f"urn:ogc:def:crs:EPSG::{epsg}" if epsg else target_crs.to_wkt()},
            }
        out.write(json.dumps(header)[:-1] + ', "features": [\n')

        def write(features: list[tuple[str, float]]) -> None:
            """The features' text, numbered on."""
            nonlocal written
            for geometry, area in features:
                out.write(
                    (",\n" if written else "")
                    + f'{{"type": "Feature", "id": {written + 1}, "properties": {{"area_m2": {json.dumps(area)}}}, '
                    + f'"geometry": {geometry}}}'
                )
                written += 1

        pending = np.empty(0, dtype=object)  # polygons touching the lower edge of the strip before
        peak_kib = 0
        pool = _strip_pool(processes)
        try:

            def submit(strip: tuple[int, int]):
                return pool.submit(_strip_features, raster.path, threshold, *strip, raster.width, raster.height, finish)

            # A few strips ahead of the one being joined, so the processes never wait on this loop and
            # finished strips do not pile up in memory.
            ahead = [submit(strip) for strip in strips[: 2 * processes]]
            for k, (top, bottom) in enumerate(strips):
                features, at_seam, peak = ahead.pop(0).result()
                peak_kib = max(peak_kib, peak)
                if k + len(ahead) + 1 < len(strips):
                    ahead.append(submit(strips[k + len(ahead) + 1]))
                write(features)
                if len(pending):
                    touching_top = shapely.bounds(at_seam)[:, 1] == top if len(at_seam) else np.zeros(0, dtype=bool)
                    at_seam = np.concatenate([at_seam[~touching_top], _merge_seam(pending, at_seam[touching_top])])
                waits = np.zeros(len(at_seam), dtype=bool)
                if len(at_seam) and bottom < raster.height:
                    waits = shapely.bounds(at_seam)[:, 3] == bottom
                write(finish(at_seam[~waits]))
                pending = at_seam[waits]
        finally:  # a canceled run (KeyboardInterrupt here) does not wait for the strips queued ahead
            pool.shutdown(wait=True, cancel_futures=True)
        write(finish(pending))
        out.write("\n]}\n")
    return VectorFile(str(out_path), name, target_crs.to_string(), written, processes, peak_kib if processes > 1 else 0)


# --------------------------------------------------------------------------- export formats


def write_cog(source: Path, target: Path) -> None:
    """Cloud-Optimized GeoTIFF (ZSTD level 1 with the predictor, internal overviews) of a GeoTIFF, through
    GDAL's COG driver.

    ZSTD at level 1: on the 8192² float32 water probabilities it wrote in 0.75 s against 3.8 s for DEFLATE
    (level 6) with the floating-point predictor, and the file was 50 MiB against 72 MiB. Every GDAL since 2.3
    (rasterio's wheels, titiler, QGIS) reads it. One GDAL thread: the export op reads the preview's backdrop on
    the other core meanwhile."""
    from rasterio.shutil import copy

    target.parent.mkdir(parents=True, exist_ok=True)
    with gdal_env():
        copy(
            str(source),
            str(target),
            driver="COG",
            COMPRESS="ZSTD",
            LEVEL="1",
            PREDICTOR="YES",
            BLOCKSIZE="512",
            OVERVIEW_RESAMPLING="AVERAGE",
        )


@dataclass(frozen=True)
class PreviewColors:
    low: tuple[int, int, int] = (232, 222, 196)  # land, when there is no backdrop
    high: tuple[int, int, int] = (24, 96, 200)  # water
    overlay: tuple[int, int, int] = (0, 170, 255)  # water over the scene: a cyan no land colour has
    overlay_alpha: float = 0.7


def _stretch(bands: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Each band from its 2nd-98th percentile to 0-255 (a true-colour quick-look of raw digital numbers)."""
    out = np.zeros(bands.shape, np.float32)
    for i, band in enumerate(bands):
        lo, hi = np.percentile(band[valid], (2, 98)) if valid.any() else (0.0, 1.0)
        out[i] = np.clip((band - lo) / max(hi - lo, 1e-9), 0, 1) * 255
    return out


def preview_shape(width: int, height: int, max_px: int = 1024) -> tuple[int, int]:
    """(rows, columns) of a raster's preview: its longer side brought down to `max_px`, never up."""
    scale = max(width, height) / max_px
    return (max(1, round(height / scale)), max(1, round(width / scale))) if scale > 1 else (height, width)


def read_backdrop(path: str, bands: Sequence[int], shape: tuple[int, int]) -> np.ndarray:
    """(3, rows, columns) float32: the scene's red, green, blue read decimated (average) to the preview's shape.

    A scene without overviews is read in full: on a large scene this costs seconds, so the export op reads it
    while the COG is being written, or takes the block means the model step summed (BackdropSums). When each
    preview pixel averages a whole block of an unsigned-integer scene with no nodata or mask (the common case:
    an 8192² scene to 1024²), the blocks are summed with numpy strip by strip and each exact mean is rounded
    half up: 1.4 s against 3.1 s for GDAL's average on that scene (5.1 s before GDAL had its block cache), with
    the same values there (on noisy 8-bit data GDAL's average is off the exact mean by up to 2).
    Otherwise GDAL resamples."""
    import rasterio
    from rasterio.enums import Resampling

    with gdal_env(), rasterio.open(path) as scene:
        if _takes_block_means(scene, bands, shape):
            return _block_means(scene, list(bands), *shape)
        return scene.read(list(bands), out_shape=(3, *shape), resampling=Resampling.average).astype(np.float32)


def _takes_block_means(scene, bands: Sequence[int], shape: tuple[int, int]) -> bool:
    """Whether the open scene's `bands` decimate to `shape` as exact block means: unsigned integers, no nodata,
    mask or overviews, and a whole block of pixels for each preview pixel."""
    from rasterio.enums import MaskFlags

    rows, columns = shape
    return (
        np.dtype(scene.dtypes[0]).kind == "u"
        and scene.nodata is None
        and not scene.overviews(bands[0])
        and all(scene.mask_flag_enums[b - 1] == [MaskFlags.all_valid] for b in bands)
        and scene.height % rows == 0
        and scene.width % columns == 0
    )


def _block_means(scene, bands: list[int], rows: int, columns: int) -> np.ndarray:
    """(bands, rows, columns) float32 means of the scene's (height / rows) x (width / columns) pixel blocks,
    read in full-width strips of whole blocks; a mean m is rounded to floor(m + 0.5) like GDAL's average."""
    from rasterio.windows import Window

    fy, fx = scene.height // rows, scene.width // columns
    out = np.empty((len(bands), rows, columns), np.float32)
    step = max(1, STRIP_PIXELS // (scene.width * fy))  # preview rows per strip
    for top in range(0, rows, step):
        bottom = min(rows, top + step)
        data = scene.read(bands, window=Window(0, top * fy, scene.width, (bottom - top) * fy))
        sums = data.reshape(len(bands), bottom - top, fy, columns, fx).sum(axis=(2, 4), dtype=np.uint64)
        out[:, top:bottom] = np.floor(sums / (fy * fx) + 0.5)
    return out


def write_preview(
    source: Path,
    target: Path,
    max_px: int = 1024,
    colors: PreviewColors = PreviewColors(),
    backdrop: str = "",
    backdrop_bands: Sequence[int] = (),
    backdrop_rgb: np.ndarray | None = None,
) -> tuple[int, int]:
    """A PNG quick-look of band 1, read decimated (from overviews when present) so it costs the same for any scene.

    With a backdrop (the scene and its red, green, blue positions, or `backdrop_rgb` read by read_backdrop
    beforehand): the scene in true colour, and the pixels above 0.5 (water) painted over it. Without: values in
    [0, 1] shade from `low` to `high` (others are stretched to their range). Nodata is transparent either way."""
    import rasterio
    from PIL import Image
    from rasterio.enums import Resampling

    target.parent.mkdir(parents=True, exist_ok=True)
    with gdal_env(), rasterio.open(source) as src:
        shape = preview_shape(src.width, src.height, max_px)
        data = src.read(1, out_shape=shape, resampling=Resampling.average, masked=True).astype(np.float32)
    valid = ~np.ma.getmaskarray(data) & np.isfinite(data.filled(np.nan))
    values = data.filled(0)
    if valid.any():
        lo, hi = float(values[valid].min()), float(values[valid].max())
        if lo < 0 or hi > 1:
            values = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    values = np.clip(np.nan_to_num(values), 0, 1)
    if backdrop_rgb is None and backdrop and len(backdrop_bands) == 3:
        backdrop_rgb = read_backdrop(backdrop, backdrop_bands, shape)
    if backdrop_rgb is not None:
        base = np.moveaxis(_stretch(backdrop_rgb, valid), 0, -1)
        water = ((values > 0.5) * colors.overlay_alpha)[..., None]
        rgb_out = (base * (1 - water) + np.asarray(colors.overlay, np.float32) * water).astype(np.uint8)
    else:
        low, high = np.asarray(colors.low, np.float32), np.asarray(colors.high, np.float32)
        rgb_out = (low + (high - low) * values[..., None]).astype(np.uint8)
    alpha = np.where(valid, 255, 0).astype(np.uint8)[..., None]
    # zlib's fastest level: a 1024² preview encodes in 0.04 s and is 10% larger than with optimize=True, which
    # tries level 9 with several filters and took 0.62 s, as long as the rest of the preview together.
    Image.fromarray(np.concatenate([rgb_out, alpha], axis=-1), "RGBA").save(target, compress_level=1)
    return shape
