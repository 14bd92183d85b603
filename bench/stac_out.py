"""What a run's STAC items cost the export: stac_out.build (rio-stac's footprint, projection and raster statistics,
pystac, the MLM item) against writing the COG it describes, on the same raster, in the same run.

    .venv/bin/python bench/stac_out.py [--size 2048] [--repeat 5]

The raster is a float32 probability map of SIZE x SIZE px in UTM (seeded), as stitch writes one; the export
writes its COG with blocks.write_cog, then the items with stac_out.build (one scene, one model). Median of
REPEAT runs each; the ratio is items / COG.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from google.protobuf import json_format  # noqa: E402

from constellation.common.v1 import common_pb2 as c  # noqa: E402
from constellation.orchestrator.v1 import orchestrator_pb2 as pb  # noqa: E402
from orchestrator_svc import blocks, stac_out  # noqa: E402


def raster(path: Path, size: int) -> None:
    rng = np.random.default_rng(7)
    data = rng.random((1, size, size), dtype=np.float32)
    profile = {
        "driver": "GTiff", "width": size, "height": size, "count": 1, "dtype": "float32", "crs": "EPSG:31985",
        "transform": from_origin(290000, 9120000, 10, 10), "nodata": np.nan, "tiled": True,
    }  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    model = pb.ResolvedModel(
        model_name="ndwi-water", model_version="1.0.0", task=c.MODEL_TASK_SEGMENTATION, source="/srv/models/ndwi",
        input=c.ModelInputSpec(bands=["green", "nir"], tile_size_px=256, dtype="FP32", value_min=0, value_max=1),
        outputs=[c.ModelOutputSpec(name="water_probability", dtype="FP32", shape=[1, 256, 256])],
    )  # fmt: skip
    lineage = stac_out.Lineage(
        "run_bench", "out", "pl_bench", "bench", ("dataset scene", "tile", "model ndwi-water:1.0.0", "stitch"),
        {"scene": {"uri": "file:///data/scene.tif", "bands": ["green", "nir"]}},
        {"ndwi": json_format.MessageToDict(model)},
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        source, cog = folder / "stitched.tif", folder / "water_probability.tif"
        raster(source, args.size)
        cog_s, stac_s = [], []
        for _ in range(args.repeat):
            started = time.perf_counter()
            blocks.write_cog(source, cog)
            cog_s.append(time.perf_counter() - started)
            files = (stac_out.OutputFile(cog, f"file://{cog}", "water_probability", "cog"),)
            scenes = [stac_out.SceneOutputs(stac_out.SceneSource("scene", "file:///data/scene.tif"), files)]
            started = time.perf_counter()
            documents = stac_out.build(scenes, lineage, f"file://{folder}")
            stac_s.append(time.perf_counter() - started)
        assert [name for name, _, _ in documents] == ["model-ndwi.json", "item.json"]
    cog_med, stac_med = statistics.median(cog_s), statistics.median(stac_s)
    print(f"raster {args.size}x{args.size} float32, median of {args.repeat}")
    print(f"  write COG (blocks.write_cog)      {cog_med * 1000:8.1f} ms")
    print(f"  STAC items (stac_out.build)       {stac_med * 1000:8.1f} ms")
    print(f"  items / COG                       {stac_med / cog_med:8.2f}x")


if __name__ == "__main__":
    main()
