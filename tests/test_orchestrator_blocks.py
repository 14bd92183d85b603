"""The blocks' raster work as plain functions (no Dagster, no gRPC): tiling, normalisation, the prediction
store, stitching (mean and centre blending, nodata, georeferencing), vectorising across strips, COG and preview,
local storage, the inference client's error sorting, and the export op's all-or-nothing publishing."""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path

import grpc
import numpy as np
import pytest
import rasterio
from dagster import build_op_context
from rio_cogeo.cogeo import cog_validate
from shapely.geometry import shape

from clients.inference import is_transient
from clients.storage import Storage, StorageError, join, parse
from orchestrator_svc import blocks, ops
from tests.orchestrator_scenes import BANDS, CRS, NODATA_PATCH_PX, ndwi_probability, write_scene


@pytest.fixture(scope="module")
def scene_file(tmp_path_factory) -> Path:
    return write_scene(tmp_path_factory.mktemp("blocks") / "scene.tif", 300)


def test_tiles_cover_the_scene_and_neighbours_share_the_overlap():
    assert blocks.axis_starts(100, 256, 16) == (0,)
    assert blocks.axis_starts(512, 256, 0) == (0, 256)
    assert blocks.axis_starts(600, 256, 32) == (0, 224, 344)
    grid = blocks.TileGrid.for_scene(600, 300, 256, 32)
    assert grid.count == 3 * 2 and grid.position(4) == (224, 44)
    assert grid.extent(5) == (344, 44, 256, 256)
    covered = np.zeros((300, 600), dtype=int)
    for k in range(grid.count):
        x, y, w, h = grid.extent(k)
        covered[y : y + h, x : x + w] += 1
    assert covered.min() >= 1
    with pytest.raises(ValueError):
        blocks.TileGrid.for_scene(600, 300, 256, 128)


def test_centre_ownership_partitions_each_axis():
    starts = blocks.axis_starts(600, 256, 32)
    owned = blocks.owned_ranges(starts, 256, 600)
    assert owned[0][0] == 0 and owned[-1][1] == 600
    assert all(a[1] == b[0] for a, b in pairwise(owned))
    assert all(s <= lo and hi <= s + 256 for s, (lo, hi) in zip(starts, owned, strict=True))


def test_normalisation_modes(scene_file):
    scene = blocks.inspect_scene(str(scene_file), BANDS, ["green", "nir"])
    assert scene.band_indexes == (2, 4) and scene.nodata == 0 and scene.width == 300
    stats = blocks.band_statistics(scene)
    assert stats["nir"].valid_pixels == 300 * 300 - NODATA_PATCH_PX**2
    data = np.array([[[1000.0]], [[3000.0]]], dtype=np.float32)
    blocks.Normalizer.build("reflectance", ["green", "nir"], stats).apply(data)
    np.testing.assert_allclose(data.ravel(), [0.1, 0.3], rtol=1e-6)
    data = np.array([[[stats["green"].maximum]], [[stats["nir"].minimum]]], dtype=np.float32)
    blocks.Normalizer.build("min_max", ["green", "nir"], stats).apply(data)
    np.testing.assert_allclose(data.ravel(), [1.0, 0.0], atol=1e-6)
    data = np.array([[[stats["green"].mean]], [[stats["nir"].mean]]], dtype=np.float32)
    blocks.Normalizer.build("z_score", ["green", "nir"], stats).apply(data)
    np.testing.assert_allclose(data.ravel(), [0.0, 0.0], atol=1e-3)


def predict_all(scene: blocks.Scene, grid: blocks.TileGrid, store: blocks.PredictionStore, fn) -> None:
    normalizer = blocks.Normalizer.build("reflectance", ["green", "nir"], {})
    with blocks.TileReader(scene, grid, ["green", "nir"], normalizer) as reader:
        for k in range(grid.count):
            store.write(k, fn(k, reader.read([k])[0]).astype("<f4").tobytes())


def ndwi_tile(_index: int, tile: np.ndarray) -> np.ndarray:
    green, nir = tile[0:1], tile[1:2]
    total = green + nir
    ndwi = np.divide(green - nir, total, out=np.full_like(total, -1e-6), where=total != 0)
    return 1.0 / (1.0 + np.exp(-10.0 * ndwi))


@pytest.mark.parametrize(("blend", "overlap"), [("mean", 40), ("center", 40), ("mean", 0)])
def test_stitch_rebuilds_the_scene_with_its_georeferencing(scene_file, tmp_path, blend, overlap):
    scene = blocks.inspect_scene(str(scene_file), BANDS, ["green", "nir"])
    grid = blocks.TileGrid.for_scene(scene.width, scene.height, 128, overlap)
    store = blocks.PredictionStore(tmp_path / "p", grid.count, 1, 128)
    predict_all(scene, grid, store, ndwi_tile)
    raster = blocks.stitch(store, grid, scene, ["green", "nir"], blend, tmp_path / "out.tif", "water_probability")
    expected, nodata = ndwi_probability(scene_file)
    with rasterio.open(raster.path) as out, rasterio.open(scene_file) as src:
        assert out.crs == src.crs and out.transform == src.transform and out.nodata == src.nodata
        got = out.read(1)
    np.testing.assert_allclose(got[~nodata], expected[~nodata], atol=2e-6)
    assert np.all(got[nodata] == 0)


def test_centre_blend_takes_each_pixel_from_the_nearest_tile(scene_file, tmp_path):
    scene = blocks.inspect_scene(str(scene_file), BANDS, ["green", "nir"])
    grid = blocks.TileGrid.for_scene(scene.width, scene.height, 128, 40)
    store = blocks.PredictionStore(tmp_path / "p", grid.count, 1, 128)
    predict_all(scene, grid, store, lambda k, tile: np.full((1, 128, 128), k + 1.0))
    got_center = rasterio.open(
        blocks.stitch(store, grid, scene, ["green"], "center", tmp_path / "c.tif", "k").path
    ).read(1)
    got_mean = rasterio.open(blocks.stitch(store, grid, scene, ["green"], "mean", tmp_path / "m.tif", "k").path).read(1)
    centres_x = np.array(grid.xs) + 64
    centres_y = np.array(grid.ys) + 64
    for row, col in [(150, 100), (20, 290), (299, 299), (100, 150)]:
        nearest = np.argmin(np.abs(centres_y - row)) * len(grid.xs) + np.argmin(np.abs(centres_x - col))
        assert got_center[row, col] == nearest + 1
    first_overlap = grid.xs[1] + 1  # covered by tiles 1 and 2 of the first row only
    assert got_mean[NODATA_PATCH_PX + 1, first_overlap] == pytest.approx(1.5)


def test_gdal_env_gives_gdal_a_block_cache_that_stays_while_other_threads_leave_theirs():
    """GDAL's block cache is GDAL_CACHE_MB MiB, asked of GDAL itself, and stays so when a step's GDAL settings
    end in another thread (rasterio.Env put GDAL's default, 5% of RAM, back for the whole process: a COG
    written meanwhile took as much). rasterio takes the size in bytes: the "64" it was once given made a cache
    of 64 bytes, and every overlapping tile read decompressed the scene's blocks again."""
    import ctypes
    import glob
    import os
    import threading

    libgdal = glob.glob(os.path.join(os.path.dirname(rasterio.__file__) + ".libs", "libgdal*"))
    assert libgdal, "rasterio's wheel bundles libgdal next to the package"
    gdal = ctypes.CDLL(libgdal[0])
    gdal.GDALGetCacheMax64.restype = ctypes.c_int64
    wanted = blocks.GDAL_CACHE_MB * 1024 * 1024
    inside, left, seen = threading.Event(), threading.Event(), []

    def cog_beside() -> None:  # as ops.start_early_export's COG: begun in the stitch step, outlasting it
        with blocks.gdal_env():
            inside.set()
            left.wait(10)
            seen.append(gdal.GDALGetCacheMax64())

    with blocks.gdal_env():
        assert gdal.GDALGetCacheMax64() == wanted
        thread = threading.Thread(target=cog_beside)
        thread.start()
        inside.wait(10)
    left.set()  # the stitch step's settings have ended
    thread.join()
    assert seen == [wanted], "another thread's settings ending changed the cache of a COG being written"
    assert gdal.GDALGetCacheMax64() == wanted


def test_memory_a_step_freed_in_its_thread_is_given_back():
    """What a step thread freed stays with glibc (its arena, between blocks still in use) until the executor
    gives it back after the step (release_free_memory)."""
    import threading

    from orchestrator_svc.executor import release_free_memory

    def anon_mib() -> int:
        status = Path("/proc/self/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("RssAnon")).split()[1]) // 1024

    kept = []

    def step() -> None:
        chunks = [np.ones(16 * 1024, dtype=np.float32) for _ in range(3000)]  # 64 KiB each: malloc's heap, 190 MiB
        kept.extend(chunks[::10])  # one in ten outlives the step, as a step's result does

    thread = threading.Thread(target=step)
    thread.start()
    thread.join()
    held = anon_mib()
    release_free_memory()
    assert held - anon_mib() > 100, "the 170 MiB the step freed was not given back"


def test_usable_cpus_follow_a_container_quota(tmp_path):
    """A container's CPU quota caps the strip processes, as cgroup v2 and v1 write it; no quota leaves the
    affinity."""
    import os

    cores = len(os.sched_getaffinity(0))
    v2, v1, none = tmp_path / "v2", tmp_path / "v1", tmp_path / "none"
    (v1 / "cpu").mkdir(parents=True)
    v2.mkdir()
    none.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert blocks.usable_cpus(v2) == min(cores, 2)
    assert blocks.usable_cpus(v1) == 1
    assert blocks.usable_cpus(none) == cores
    (v2 / "cpu.max").write_text("max 100000\n")
    assert blocks.usable_cpus(v2) == cores


def test_prediction_store_remembers_finished_tiles(tmp_path):
    store = blocks.PredictionStore(tmp_path, 4, 2, 8)
    store.write(2, np.ones((2, 8, 8), "<f4").tobytes())
    store.close()
    again = blocks.PredictionStore(tmp_path, 4, 2, 8)
    assert again.done() == [False, False, True, False]
    assert again.read(2).sum() == 128
    with pytest.raises(ValueError):
        again.write(0, b"short")
    again.close()


def test_vectorize_merges_shapes_across_strips(scene_file, tmp_path, monkeypatch):
    scene = blocks.inspect_scene(str(scene_file), BANDS, ["green", "nir"])
    grid = blocks.TileGrid.for_scene(scene.width, scene.height, 128, 0)
    store = blocks.PredictionStore(tmp_path / "p", grid.count, 1, 128)
    predict_all(scene, grid, store, ndwi_tile)
    raster = blocks.stitch(store, grid, scene, ["green", "nir"], "mean", tmp_path / "out.tif", "water")
    expected, nodata = ndwi_probability(scene_file)
    water_px = int(((expected > 0.5) & ~nodata).sum())
    results = {}
    for strip_rows in (7, 64, 10_000):
        monkeypatch.setattr(blocks, "STRIP_PIXELS", strip_rows * scene.width)
        vectors = blocks.vectorize(raster, 0.5, 0, 0, "", tmp_path / f"v{strip_rows}.geojson", "water_polygons")
        collection = json.loads(Path(vectors.path).read_text())
        assert collection["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32725" and vectors.crs == CRS
        polygons = [shape(f["geometry"]) for f in collection["features"]]
        assert sum(p.area for p in polygons) == pytest.approx(water_px * 100.0)
        results[strip_rows] = sorted(round(p.area) for p in polygons)
    assert results[7] == results[64] == results[10_000] and len(results[7]) == 2
    wgs84 = blocks.vectorize(raster, 0.5, 15, 900_000, "EPSG:4326", tmp_path / "w.geojson", "water_polygons")
    features = json.loads(Path(wgs84.path).read_text())["features"]
    assert (
        wgs84.crs == "EPSG:4326" and len(features) == 1
    )  # the lake (1.1 km²) stays, the river (0.7 km²) is below the minimum
    lon, lat = features[0]["geometry"]["coordinates"][0][0]
    assert -40 < lon < -30 and -10 < lat < 0


def mask_raster(tmp_path: Path, mask: np.ndarray) -> blocks.RasterFile:
    """A float32 raster, 1.0 where `mask`, 10 m pixels in the scenes' CRS."""
    from rasterio.transform import from_origin

    transform = from_origin(500_000, 9_000_000, 10, 10)
    profile = {"driver": "GTiff", "width": mask.shape[1], "height": mask.shape[0], "count": 1, "dtype": "float32",
               "crs": CRS, "transform": transform}  # fmt: skip
    with rasterio.open(tmp_path / "mask.tif", "w", **profile) as dst:
        dst.write(mask.astype(np.float32)[None])
    wkt = rasterio.crs.CRS.from_user_input(CRS).to_wkt()
    return blocks.RasterFile(
        str(tmp_path / "mask.tif"), "m", mask.shape[1], mask.shape[0], 1, wkt, tuple(transform)[:6], None
    )


def test_polygons_across_many_strips_match_the_whole_raster(tmp_path, monkeypatch):
    """A spiral crossing every strip seam many times, with holes, pixels touching only at corners and seams
    cutting through single-pixel necks: the strip-by-strip result is the whole-raster polygonisation, polygon
    for polygon; and the vectorised simplification is the per-polygon one."""
    import shapely
    from rasterio.features import shapes

    rng = np.random.default_rng(16)
    mask = rng.random((120, 90)) > 0.55  # speckle: many small shapes, corner contacts
    mask[10:110:2, 5:85] = True  # comb teeth, joined by a spine below: one shape across every seam
    mask[10:110, 5] = True
    spiral = np.zeros_like(mask)
    spiral[20:100, 40:80] = True
    spiral[22:98, 42:78] = False
    spiral[24:96, 44:76] = True
    spiral[26:94, 46:74] = False  # rings nested in rings: holes holding islands
    mask |= spiral
    raster = mask_raster(tmp_path, mask)
    whole = [
        shape(g) for g, _ in shapes(mask.astype(np.uint8), mask=mask, connectivity=4, transform=raster_affine(raster))
    ]
    for strip_rows in (1, 3, 7, 50):
        monkeypatch.setattr(blocks, "STRIP_PIXELS", strip_rows * mask.shape[1])
        vectors = blocks.vectorize(raster, 0.5, 0, 0, "", tmp_path / f"v{strip_rows}.geojson", "m", processes=3)
        in_thread = blocks.vectorize(raster, 0.5, 0, 0, "", tmp_path / f"t{strip_rows}.geojson", "m", processes=1)
        # strips polygonised in 3 processes or in one thread: the same file
        assert (vectors.processes, in_thread.processes) == (max(1, min(3, -(-mask.shape[0] // strip_rows) // 2)), 1)
        assert Path(vectors.path).read_bytes() == Path(in_thread.path).read_bytes()
        found = [shape(f["geometry"]) for f in json.loads(Path(vectors.path).read_text())["features"]]
        assert len(found) == len(whole) > 100
        key = lambda p: (p.bounds, p.area)  # noqa: E731
        for got, want in zip(sorted(found, key=key), sorted(whole, key=key), strict=True):
            assert got.equals(want), (strip_rows, got.bounds)
    # A minimum area is the shapes' own (their pixels'), before simplification: shapes of 1 and 2 pixels (100
    # and 200 m²) are left out before polygonising, across seams as well, with the same result as dropping them
    # after; simplified outlines keep their shapes' areas.
    big = sorted((p for p in whole if p.area >= 250), key=key)
    assert len(big) > 50 and len(whole) - len(big) > 100
    for strip_rows in (1, 3, 7, 50):
        monkeypatch.setattr(blocks, "STRIP_PIXELS", strip_rows * mask.shape[1])
        vectors = blocks.vectorize(raster, 0.5, 0, 250, "", tmp_path / f"a{strip_rows}.geojson", "m", processes=2)
        features = json.loads(Path(vectors.path).read_text())["features"]
        found = sorted((shape(f["geometry"]) for f in features), key=key)
        assert len(found) == len(big)
        assert all(got.equals(want) for got, want in zip(found, big, strict=True)), strip_rows
        simplified = blocks.vectorize(raster, 0.5, 25, 250, "", tmp_path / f"s{strip_rows}.geojson", "m")
        features = json.loads(Path(simplified.path).read_text())["features"]
        assert sorted(f["properties"]["area_m2"] for f in features) == sorted(round(p.area, 3) for p in big)
    polygons = np.array(whole, dtype=object)
    one_by_one = [shapely.coverage_simplify(p, 25.0) for p in polygons]
    together = blocks._simplify_each(polygons, 25.0)
    assert all(a.equals_exact(b, 0) for a, b in zip(together, one_by_one, strict=True))


def raster_affine(raster: blocks.RasterFile):
    from affine import Affine

    return Affine(*raster.transform)


def test_cog_and_preview(scene_file, tmp_path):
    scene = blocks.inspect_scene(str(scene_file), BANDS, ["green", "nir"])
    grid = blocks.TileGrid.for_scene(scene.width, scene.height, 128, 0)
    store = blocks.PredictionStore(tmp_path / "p", grid.count, 1, 128)
    predict_all(scene, grid, store, ndwi_tile)
    raster = blocks.stitch(store, grid, scene, ["green", "nir"], "mean", tmp_path / "out.tif", "water")
    blocks.write_cog(Path(raster.path), tmp_path / "cog.tif")
    with rasterio.open(tmp_path / "cog.tif") as cog, rasterio.open(raster.path) as plain:
        assert cog.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and cog.crs == plain.crs
        assert cog.profile["compress"] == "zstd"
        assert np.array_equal(cog.read(1), plain.read(1))
    valid, errors, _ = cog_validate(str(tmp_path / "cog.tif"), quiet=True)
    assert valid and not errors
    assert blocks.write_preview(tmp_path / "cog.tif", tmp_path / "p.png", max_px=100) == (100, 100)
    # The export op reads the backdrop beforehand (while the COG is written): the same picture as reading it after.
    rgb = (BANDS.index("red") + 1, BANDS.index("green") + 1, BANDS.index("blue") + 1)
    blocks.write_preview(tmp_path / "cog.tif", tmp_path / "b1.png", 100, backdrop=str(scene_file), backdrop_bands=rgb)
    early = blocks.read_backdrop(str(scene_file), rgb, blocks.preview_shape(scene.width, scene.height, 100))
    blocks.write_preview(tmp_path / "cog.tif", tmp_path / "b2.png", 100, backdrop_rgb=early)
    assert (tmp_path / "b1.png").read_bytes() == (tmp_path / "b2.png").read_bytes()
    from PIL import Image

    image = Image.open(tmp_path / "p.png")
    assert image.mode == "RGBA" and image.size == (100, 100)
    assert image.getpixel((0, 0))[3] == 0  # nodata corner is transparent


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_backdrop_block_means(tmp_path, monkeypatch, dtype):
    """read_backdrop's numpy path (whole blocks of an unsigned scene without nodata) gives each block's exact
    mean rounded half up, over strips of several heights, within 2 of GDAL's average (which is off the exact
    mean on noisy 8-bit data); a scene with nodata still goes through GDAL, which leaves nodata out of the average."""
    from affine import Affine
    from rasterio.enums import Resampling

    data = np.random.default_rng(7).integers(0, np.iinfo(dtype).max, (6, 240, 160), dtype=dtype)
    data[:, :4, :8], data[:, 4:8, :8] = 2, 1  # the first block's mean is 1.5 exactly
    profile = {
        "driver": "GTiff", "width": 160, "height": 240, "count": 6, "dtype": dtype, "crs": CRS,
        "transform": Affine(10, 0, 0, 0, -10, 0), "tiled": True, "blockxsize": 64, "blockysize": 64,
    }  # fmt: skip
    path = tmp_path / "rgb.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    exact = np.floor(data[[2, 1, 0]].reshape(3, 30, 8, 20, 8).mean(axis=(2, 4)) + 0.5).astype(np.float32)
    assert exact[:, 0, 0].tolist() == [2.0, 2.0, 2.0]
    for strip in (160 * 8, 160 * 24, blocks.STRIP_PIXELS):
        monkeypatch.setattr(blocks, "STRIP_PIXELS", strip)
        with rasterio.open(path) as src:
            assert np.array_equal(blocks._block_means(src, [3, 2, 1], 30, 20), exact)
        assert np.array_equal(blocks.read_backdrop(str(path), (3, 2, 1), (30, 20)), exact)
    with rasterio.open(path) as src:
        gdal = src.read([3, 2, 1], out_shape=(3, 30, 20), resampling=Resampling.average).astype(np.float32)
    assert np.abs(gdal - exact).max() <= 2

    with rasterio.open(tmp_path / "nodata.tif", "w", **profile, nodata=0) as dst:
        dst.write(data)
    with rasterio.open(tmp_path / "nodata.tif") as src:
        gdal = src.read([3, 2, 1], out_shape=(3, 30, 20), resampling=Resampling.average).astype(np.float32)
    assert np.array_equal(blocks.read_backdrop(str(tmp_path / "nodata.tif"), (3, 2, 1), (30, 20)), gdal)


def test_backdrop_summed_while_the_model_reads_equals_the_one_read_after(tmp_path):
    """The model step's reader sums the preview's backdrop from the tiles it reads (each pixel once, from the
    tile that owns it, however the overlap cuts the preview's blocks and however often a tile is read), and
    export takes it: the same array read_backdrop reads from the scene afterwards. Where read_backdrop would not
    take block means (nodata), or the model does not read red, green and blue, the reader sums nothing."""
    from affine import Affine

    file_bands = ["blue", "green", "red", "nir"]
    data = np.random.default_rng(11).integers(0, 65535, (4, 1536, 3072), dtype=np.uint16, endpoint=True)
    profile = {
        "driver": "GTiff", "width": 3072, "height": 1536, "count": 4, "dtype": "uint16", "crs": CRS,
        "transform": Affine(10, 0, 0, 0, -10, 0), "tiled": True, "blockxsize": 256, "blockysize": 256,
    }  # fmt: skip
    path = tmp_path / "scene.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    scene = blocks.inspect_scene(str(path), file_bands)
    shape = blocks.preview_shape(scene.width, scene.height)
    assert shape == (512, 1024)  # blocks of 3x3 pixels; the tiles' owned spans start mid-block
    grid = blocks.TileGrid.for_scene(3072, 1536, 100, 11)
    bands = ["nir", "red", "blue", "green"]
    with blocks.TileReader(scene, grid, bands, blocks.Normalizer.build("none", bands, {})) as reader:
        assert reader.backdrop is not None
        order = np.random.default_rng(5).permutation(grid.count).tolist()
        chunks = [order[i : i + 16] for i in range(0, grid.count, 16)]
        for chunk in chunks[:-1] + chunks[:3]:  # some tiles twice, as a retried request would read them
            reader.read(chunk)
        assert reader.backdrop.means() is None  # not every tile yet
        reader.read(chunks[-1])
        summed = reader.backdrop.means()
    exact = np.floor(data[[2, 1, 0]].reshape(3, 512, 3, 1024, 3).mean(axis=(2, 4)) + 0.5).astype(np.float32)
    assert summed is not None and summed.dtype == np.float32
    assert np.array_equal(summed, exact)
    assert np.array_equal(blocks.read_backdrop(str(path), scene.rgb_indexes, shape), summed)

    # export takes the model step's sums when they fit the preview, and reads the scene otherwise
    np.save(tmp_path / "summed.npy", summed + 1)
    raster = blocks.RasterFile(
        str(path), "water", 3072, 1536, 1, scene.crs_wkt, scene.transform, None, str(path), scene.rgb_indexes,
        backdrop_means=str(tmp_path / "summed.npy"),
    )  # fmt: skip
    assert np.array_equal(ops._backdrop(raster, shape), summed + 1)
    assert np.array_equal(
        ops._backdrop(raster, (256, 512)), blocks.read_backdrop(str(path), scene.rgb_indexes, (256, 512))
    )

    none = blocks.Normalizer.build("none", ["red", "green", "nir"], {})
    with blocks.TileReader(scene, grid, ["red", "green", "nir"], none) as reader:
        assert reader.backdrop is None  # no blue
    with rasterio.open(tmp_path / "nodata.tif", "w", **profile, nodata=0) as dst:
        dst.write(data)
    scene = blocks.inspect_scene(str(tmp_path / "nodata.tif"), file_bands)
    with blocks.TileReader(scene, grid, bands, blocks.Normalizer.build("none", bands, {})) as reader:
        assert reader.backdrop is None  # GDAL's average, which leaves nodata out, makes this backdrop


def test_unreadable_and_mismatched_rasters(tmp_path, scene_file):
    junk = tmp_path / "junk.tif"
    junk.write_text("no")
    with pytest.raises(blocks.RasterError, match="cannot be read"):
        blocks.inspect_scene(str(junk), BANDS)
    with pytest.raises(blocks.RasterError, match="has 4 band"):
        blocks.inspect_scene(str(scene_file), ["red", "nir"])
    with pytest.raises(blocks.RasterError, match="no band"):
        blocks.inspect_scene(str(scene_file), BANDS, ["swir1"])


def test_local_storage_publishes_whole_files(tmp_path):
    storage = Storage()
    source = tmp_path / "a.bin"
    source.write_bytes(b"x" * 1000)
    target = f"file://{tmp_path}/deep/er/a.bin"
    storage.check_writable(f"file://{tmp_path}/deep/er")
    storage.put(source, target)
    assert storage.size(target) == 1000 and storage.exists(target)
    assert [p.name for p in (tmp_path / "deep" / "er").iterdir()] == ["a.bin"]  # no temporary left behind
    storage.delete(target)
    assert not storage.exists(target)
    with pytest.raises(StorageError):
        parse("http://x/y")
    assert join("s3://b/p/", "/run/", "f.tif") == "s3://b/p/run/f.tif"
    (tmp_path / "file").write_text("")
    with pytest.raises(StorageError, match="not a folder"):
        storage.check_writable(f"file://{tmp_path}/file/sub")


def test_endpoint_errors_are_sorted_into_transient_and_permanent():
    assert is_transient(grpc.StatusCode.UNAVAILABLE, "Socket closed")
    assert is_transient(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
    assert is_transient(grpc.StatusCode.INTERNAL, "Received RST_STREAM with error code 2")
    assert not is_transient(grpc.StatusCode.INVALID_ARGUMENT, "input 'tiles' has shape [1, 3, 256, 256]")
    assert not is_transient(grpc.StatusCode.NOT_FOUND, "no model named 'x'")
    assert not is_transient(grpc.StatusCode.INTERNAL, "predict failed: ValueError")


def test_export_removes_what_it_uploaded_when_it_cannot_finish(tmp_path, scene_file, monkeypatch):
    raster_path = tmp_path / "water.tif"
    with rasterio.open(scene_file) as src:
        profile = src.profile | {"count": 1, "dtype": "float32"}
        data = src.read(2).astype("float32") / 10000
    with rasterio.open(raster_path, "w", **profile) as dst:
        dst.write(data, 1)
    raster = blocks.RasterFile(
        str(raster_path), "water", 300, 300, 1, profile["crs"].to_wkt(), tuple(profile["transform"])[:6], 0.0
    )
    calls = []
    real_put = Storage.put

    def failing_put(self, source, uri, content_type="application/octet-stream"):
        calls.append(uri)
        if len(calls) == 2:
            raise StorageError(f"{uri}: the disk is full")
        real_put(self, source, uri, content_type)

    monkeypatch.setattr(Storage, "put", failing_put)
    context = build_op_context(
        resources={"constellation": ops.ConstellationResource(work_dir=str(tmp_path / "work"))},
        op_config={
            "run_id": "run_1",
            "block_id": "out",
            "uri": f"file://{tmp_path}/published",
            "formats": ["cog", "png_preview"],
        },
    )
    with pytest.raises(StorageError, match="disk is full"):
        ops.export_op(context, raster=raster)
    assert len(calls) == 2
    assert not list((tmp_path / "published").rglob("*.*")), "nothing may stay published from a half-done export"


def test_export_started_by_the_stitch_step_publishes_the_same_files(scene_file, tmp_path, monkeypatch):
    """The COG and backdrop the stitch step starts early (beside vectorize) are what export publishes: the same
    pixels and the same preview as an export that does the work itself, and export writes no second COG."""
    scene = blocks.inspect_scene(str(scene_file), BANDS)
    grid = blocks.TileGrid.for_scene(scene.width, scene.height, 128, 0)
    store = blocks.PredictionStore(tmp_path / "p", grid.count, 1, 128)
    predict_all(scene, grid, store, ndwi_tile)
    raster = blocks.stitch(store, grid, scene, ["green", "nir"], "mean", tmp_path / "water.tif", "water")
    assert raster.backdrop_path and len(raster.backdrop_bands) == 3
    cogs = []
    real_write_cog = blocks.write_cog
    monkeypatch.setattr(
        blocks, "write_cog", lambda source, target: cogs.append(target) or real_write_cog(source, target)
    )
    published = {}
    for mode in ("plain", "early"):
        if mode == "early":
            ops.start_early_export(raster, ["cog", "png_preview"], tmp_path / "stitch" / "cog")
        context = build_op_context(
            resources={"constellation": ops.ConstellationResource(work_dir=str(tmp_path / mode))},
            op_config={
                "run_id": "r",
                "block_id": "out",
                "uri": f"file://{tmp_path}/{mode}",
                "formats": ["cog", "png_preview"],
            },
        )
        ops.export_op(context, raster=raster)
        published[mode] = tmp_path / mode / "r" / "out"
    assert raster.path not in ops._EARLY  # the export took the early work
    assert [p.parent.name for p in cogs] == ["out", "cog"]  # one COG each: export wrote none when one was started
    with rasterio.open(published["plain"] / "water.tif") as a, rasterio.open(published["early"] / "water.tif") as b:
        assert np.array_equal(a.read(1), b.read(1)) and a.profile == b.profile
    preview = "water_preview.png"
    assert (published["plain"] / preview).read_bytes() == (published["early"] / preview).read_bytes()


def test_early_exports_only_when_steps_share_the_worker_and_which_executor_runs_a_plan():
    from dataclasses import replace

    from orchestrator_svc import jobs
    from orchestrator_svc.specs import BlockPlan, Plan

    plan = Plan((
        BlockPlan("mosaic", 3, "stitch", "mosaic", {"blend": "mean"}, {"predictions": ("infer",)}),
        BlockPlan("polygons", 4, "vectorize", "polygons", {}, {"raster": ("mosaic",)}),
        BlockPlan("out", 5, "export", "out", {"formats": ["geojson", "png_preview", "cog"]},
                  {"raster": ("mosaic",), "vectors": ("polygons",)}),
        BlockPlan("vec_only", 6, "export", "vec_only", {"formats": ["geojson"]}, {"vectors": ("polygons",)}),
    ))  # fmt: skip
    settings = jobs.JobSettings("/w", "", 8, 2, 60.0, 3, 1.0, max_parallel_items=1)
    assert jobs.early_exports(plan, settings) == {"mosaic": ["cog", "png_preview"]}
    config = jobs.run_config(plan, settings)["ops"]
    assert config["mosaic"]["config"] == {"blend": "mean", "prepare": ["cog", "png_preview"]}
    assert "prepare" not in config["polygons"]["config"]
    # the multiprocess executor runs each step in a process of its own: nothing to share, nothing started early
    two_items = Plan(tuple(replace(b, item=f"item{k}") for k in (1, 2) for b in plan.blocks))
    assert jobs.runs_in_parallel(two_items, replace(settings, max_parallel_items=2))
    assert jobs.early_exports(two_items, replace(settings, max_parallel_items=2)) == {}

    # Which executor, and how many steps at once: branches of one scene in threads of the worker; many items in
    # processes; 1 means one step at a time.
    def executor(scene: Plan, items: int, branches: int) -> tuple[str, int]:
        chosen = jobs.executor_for(scene, replace(settings, max_parallel_items=items, max_parallel_branches=branches))
        return chosen.name, chosen.config_schema.resolve_config({}).value["config"]["max_concurrent"]

    assert [executor(plan, items, 2) for items in (1, 2)] == [("constellation_threads", 2)] * 2
    assert [executor(plan, items, 1) for items in (1, 2)] == [("constellation_threads", 1)] * 2
    # max_parallel_items=1: the items' steps one after another, as that setting says, whatever the branches
    assert [executor(two_items, 1, branches) for branches in (1, 2)] == [("constellation_threads", 1)] * 2
    assert [executor(two_items, 2, branches) for branches in (1, 2)] == [("multiprocess", 2)] * 2


@pytest.mark.parametrize("nodata", [None, 0, 7])
def test_reader_hands_uint8_tiles_to_a_uint8_model_as_stored(tmp_path, nodata):
    """A UINT8 model on a uint8 scene without normalisation gets the stored values straight from the reader's
    buffer, equal to the converted path's values; a nodata value other than 0 still takes the converting path,
    which zeroes it."""
    from affine import Affine

    data = np.random.default_rng(3).integers(1, 255, (3, 300, 200), dtype=np.uint8)
    data[:, 10:20, 30:40] = 7
    profile = {
        "driver": "GTiff", "width": 200, "height": 300, "count": 3, "dtype": "uint8", "crs": CRS,
        "transform": Affine(10, 0, 0, 0, -10, 0), "nodata": nodata,
    }  # fmt: skip
    with rasterio.open(tmp_path / "u8.tif", "w", **profile) as dst:
        dst.write(data)
    bands = ["a", "b", "c"]
    scene = blocks.inspect_scene(str(tmp_path / "u8.tif"), bands)
    grid = blocks.TileGrid.for_scene(200, 300, 128, 0)
    none = blocks.Normalizer.build("none", bands, {})
    with (
        blocks.TileReader(scene, grid, bands, none, "UINT8") as direct,
        blocks.TileReader(scene, grid, bands, none) as f32,
    ):
        for chunk in ([0, 1], [2, 3, 4], [5]):
            got = direct.read(chunk)
            assert got.dtype == np.uint8 and np.shares_memory(got, direct._raw) == (nodata != 7)
            np.testing.assert_array_equal(got, f32.read(chunk).astype(np.uint8))
        x, y, w, h = grid.extent(5)
        tile = direct.read([5])[0]
        expected = np.zeros((3, 128, 128), np.uint8)
        expected[:, :h, :w] = data[:, y : y + h, x : x + w]
        if nodata == 7:
            expected[:, (expected == 7).any(axis=0)] = 0
        np.testing.assert_array_equal(tile, expected)
        first = direct.read([0])[0]
        assert (first[:, 10:20, 30:40] == (0 if nodata == 7 else 7)).all()
