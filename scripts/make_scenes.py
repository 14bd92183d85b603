"""Larger scenes for tests and benchmarks, made from the shipped Landsat 7 scene (never downloaded).

    .venv/bin/python scripts/make_scenes.py [--out DIR] [--sizes 2048 8192]

Each scene is a size x size mosaic of examples/data/L7_ETMs.tif and its
mirror images (reflected at every edge, so the coastline and rivers run on
without seams), at the source's own 28.5 m pixels: same CRS, same six uint8
bands, the same top-left corner, and an extent grown to size x 28.5 m. Every
pixel is a pixel of the source scene; the geography beyond the source's
349 x 352 px is mirrored, not real. Written in strips of rows (memory stays
flat at 8192²) as a tiled, deflate-compressed GeoTIFF.

Files already present are kept. The default folder is $CONSTELLATION_HOME/scenes
when that is set, else build/scenes in the repository (gitignored).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import Affine

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "examples" / "data" / "L7_ETMs.tif"
SIZES = (2048, 8192)
STRIP_ROWS = 512
BLOCK_PX = 256


def default_folder() -> Path:
    home = os.environ.get("CONSTELLATION_HOME")
    return Path(home).expanduser() / "scenes" if home else ROOT / "build" / "scenes"


def scene_name(size: int) -> str:
    return f"L7_ETMs_{size}.tif"


def mirrored_index(count: int, length: int) -> np.ndarray:
    """Source index of each of `count` output positions: 0..length-1, then back down, and so on."""
    position = np.arange(count) % (2 * length)
    return np.where(position < length, position, 2 * length - 1 - position)


def make_scene(size: int, path: Path, source: Path = SOURCE) -> Path:
    """Write a size x size mirrored mosaic of `source` to `path` unless it exists; returns `path`."""
    path = Path(path)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(source) as src:
        data = src.read()
        profile = src.profile
        transform: Affine = src.transform
    rows, cols = mirrored_index(size, data.shape[1]), mirrored_index(size, data.shape[2])
    profile.update(
        width=size,
        height=size,
        transform=transform,
        tiled=True,
        blockxsize=BLOCK_PX,
        blockysize=BLOCK_PX,
        compress="deflate",
        predictor=2,
        interleave="pixel",
        BIGTIFF="IF_SAFER",
    )
    partial = path.with_name(path.name + ".partial")
    with rasterio.open(partial, "w", **profile) as dst:
        for top in range(0, size, STRIP_ROWS):
            strip = data[:, rows[top : top + STRIP_ROWS]][:, :, cols]
            dst.write(strip, window=rasterio.windows.Window(0, top, size, strip.shape[1]))
    partial.replace(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--out", type=Path, default=default_folder(), help="folder for the scenes (default: %(default)s)"
    )
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=list(SIZES), help="edge lengths in pixels (default: %(default)s)"
    )
    args = parser.parse_args()
    for size in args.sizes:
        path = args.out / scene_name(size)
        existed = path.exists()
        make_scene(size, path)
        print(f"{path}: {'kept' if existed else 'written'} ({path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
