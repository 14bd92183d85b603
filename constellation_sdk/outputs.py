"""A run's output files: fetch them to a folder, and measure the mask they hold."""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from constellation_sdk.settings import ClientSettings


def fetch(uri: str, dest: Path) -> Path:
    """Copy one output ("file:///..." or "s3://bucket/key") into `dest`; the local path. Reads through the
    orchestrator's storage, so S3 endpoints and errors (StorageError) are the same as the pipeline's."""
    from clients.storage import Storage

    source = Storage(ClientSettings.from_env().s3_endpoint_url).fetch(uri, dest)
    target = dest / source.name
    if source.resolve() != target.resolve():  # file:// gives the file itself; s3:// already landed in dest
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
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
