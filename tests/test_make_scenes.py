"""scripts/make_scenes.py: larger scenes made from the shipped Landsat 7 scene."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from scripts.make_scenes import SOURCE, make_scene


def test_2048_scene_is_a_georeferenced_mirrored_mosaic_of_the_source(tmp_path):
    path = make_scene(2048, tmp_path / "scene.tif")
    with rasterio.open(SOURCE) as src:
        source, crs, transform = src.read(), src.crs, src.transform
    with rasterio.open(path) as scene:
        assert (scene.width, scene.height, scene.count) == (2048, 2048, 6)
        assert scene.dtypes == ("uint8",) * 6
        assert scene.crs == crs and scene.crs.to_epsg() == 31985
        assert scene.transform == transform  # same corner, same 28.5 m pixels; the extent grows
        assert scene.bounds.right - scene.bounds.left == pytest.approx(2048 * 28.5)
        assert scene.profile["tiled"] and scene.profile["compress"] == "deflate"
        data = scene.read()

    _, height, width = source.shape
    np.testing.assert_array_equal(data[:, :height, :width], source)
    np.testing.assert_array_equal(data[:, :height, width : 2 * width], source[:, :, ::-1])  # mirrored at the right edge
    np.testing.assert_array_equal(data[:, height : 2 * height, :width], source[:, ::-1, :])  # and at the bottom edge
    np.testing.assert_array_equal(
        data[:, 2 * height : 3 * height, 2 * width : 3 * width], source
    )  # period of two copies
    assert data[:, -1, -1].tolist() in source.reshape(6, -1).T.tolist()


def test_an_existing_scene_is_kept(tmp_path):
    path = tmp_path / "scene.tif"
    path.write_bytes(b"already here")
    assert make_scene(2048, path) == path
    assert path.read_bytes() == b"already here"
