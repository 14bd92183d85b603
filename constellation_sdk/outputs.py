"""A run's output files: fetch them to a folder, and measure the mask they hold."""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import urlparse

import numpy as np


def fetch(uri: str, dest: Path) -> Path:
    """Copy one output ("file:///..." or "s3://bucket/key") into `dest`; the local path."""
    dest.mkdir(parents=True, exist_ok=True)
    parsed = urlparse(uri)
    target = dest / Path(parsed.path).name
    if parsed.scheme == "file":
        shutil.copyfile(parsed.path, target)
    elif parsed.scheme == "s3":
        import boto3  # the AWS_* environment (AWS_ENDPOINT_URL for MinIO or moto) says where

        boto3.client("s3").download_file(parsed.netloc, parsed.path.lstrip("/"), str(target))
    else:
        raise ValueError(f"cannot fetch {uri!r}: only file:// and s3:// outputs are supported")
    return target


def local_path(uri: str) -> Path | None:
    parsed = urlparse(uri)
    return Path(parsed.path) if parsed.scheme == "file" else None


def mask_area_km2(path: Path, threshold: float = 0.5) -> tuple[float, int]:
    """Area (km²) and pixel count of the pixels above `threshold` in a single-band raster in a projected CRS."""
    import rasterio

    with rasterio.open(path) as raster:
        if raster.crs is None or not raster.crs.is_projected:
            raise ValueError(f"{path.name} is in {raster.crs}; areas need a projected CRS in metres")
        data = raster.read(1, masked=True)
        pixels = int(np.count_nonzero(np.ma.filled(data > threshold, False)))
        pixel_m2 = abs(raster.transform.a * raster.transform.e) * raster.crs.linear_units_factor[1] ** 2
    return pixels * pixel_m2 / 1e6, pixels
