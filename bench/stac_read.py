"""Reading a multi-asset STAC item (6 COGs, mixed resolution) against the stacked GeoTIFF of the same pixels.

    .venv/bin/python bench/stac_read.py [--size 2048] [--rounds 5]

Writes a `--size`² synthetic scene (tests/multi_asset_scenes.py) three times: as one
6-band tiled GeoTIFF (blue, green, red, nir, swir1, swir2 at 10 m,
uncompressed, no overviews: the scenes the tests use), as the same 6 bands in
one COG (DEFLATE, pixel-interleaved, overviews: rio-cogeo's default), and as
one DEFLATE COG per band with swir1 and swir2 at 20 m, as a Sentinel-2 item
has them (the item). Then runs, on each, the blocks' own functions (orchestrator_svc.blocks,
in this process, no Dagster or gRPC, so only the reading differs):

1. index run: the dataset block (inspect_scene; for the item plan_stack and
   write_vrt onto the 10 m grid), an index block over a 20 m and a 10 m band
   (normalized_difference(swir1, nir), strip by strip) and the export block's
   COG and PNG preview (write_cog, write_preview over the scene);
2. model input: what a model run reads before inference: band_statistics over
   all 6 bands (z_score normalisation) and every 256 px tile of all 6 bands
   through TileReader, float32 (inference itself, which dominates a model
   run, is left out, so this is the worst case for the item).

Rounds alternate the three; each figure is the median round, and the ratios
are item / each stacked file. Target: run time ratio <= 1.3 (the index run).
The item's COGs have overviews, which the PNG preview's decimated read uses;
the plain GeoTIFF has none, so the stacked COG is the like-for-like baseline.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rio_cogeo.cogeo import cog_translate  # noqa: E402
from rio_cogeo.profiles import cog_profiles  # noqa: E402

from orchestrator_svc import blocks, stacks  # noqa: E402
from tests.multi_asset_scenes import SIX_BANDS, write_multi_asset_scene  # noqa: E402

HALF = ("swir1", "swir2")


KINDS = ("stacked GeoTIFF", "stacked COG", "item")


def open_scene(kind: str, scene, folder: Path) -> blocks.Scene:
    if kind == "stacked GeoTIFF":
        return blocks.inspect_scene(str(scene.stacked), SIX_BANDS)
    if kind == "stacked COG":
        return blocks.inspect_scene(str(scene.stacked.with_suffix(".cog.tif")), SIX_BANDS)
    files = [stacks.BandFile(a.band, a.uri.removeprefix("file://"), a.band_index) for a in scene.item.assets]
    return stacks.write_vrt(stacks.plan_stack(files), folder / "scene.vrt")


def index_run(kind: str, source, folder: Path) -> float:
    started = time.perf_counter()
    scene = open_scene(kind, source, folder)
    raster = blocks.normalized_difference(scene, "swir1", "nir", folder / "index.tif", "nd")
    blocks.write_cog(Path(raster.path), folder / "nd_cog.tif")
    blocks.write_preview(
        folder / "nd_cog.tif", folder / "nd.png", backdrop=scene.path, backdrop_bands=scene.rgb_indexes
    )
    return time.perf_counter() - started


def model_input(kind: str, source, folder: Path) -> float:
    started = time.perf_counter()
    scene = open_scene(kind, source, folder)
    stats = blocks.band_statistics(scene)
    grid = blocks.TileGrid.for_scene(scene.width, scene.height, 256, 0)
    normalizer = blocks.Normalizer.build("z_score", SIX_BANDS, stats)
    with blocks.TileReader(scene, grid, SIX_BANDS, normalizer) as reader:
        for first in range(0, grid.count, 8):
            reader.read(list(range(first, min(grid.count, first + 8))))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-stac-read-") as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        scene = write_multi_asset_scene(folder, "S2_BENCH", args.size, bands=SIX_BANDS, half=HALF)
        cog_translate(
            str(scene.stacked), str(scene.stacked.with_suffix(".cog.tif")), cog_profiles.get("deflate"), quiet=True
        )
        print(
            f"wrote a {args.size}² 6-band scene, stacked and as 6 COGs ({', '.join(HALF)} at 20 m), "
            f"in {time.perf_counter() - started:.1f}s"
        )
        rounds: dict[str, dict[str, list[float]]] = {"index run": {}, "model input": {}}
        for r in range(args.rounds):
            for name, measure in (("index run", index_run), ("model input", model_input)):
                for kind in KINDS:
                    scratch = folder / f"{kind}-{name.replace(' ', '-')}-{r}"
                    scratch.mkdir()
                    rounds[name].setdefault(kind, []).append(measure(kind, scene, scratch))

    print(f"\nmedian of {args.rounds} rounds (s)  stacked GeoTIFF  stacked COG    item   item/GeoTIFF  item/COG")
    ratios = {}
    for name, by_kind in rounds.items():
        a, b, item = (statistics.median(by_kind[k]) for k in KINDS)
        ratios[name] = item / b
        print(f"  {name:<26} {a:12.3f} {b:12.3f} {item:9.3f}   {item / a:9.2f}x {item / b:8.2f}x")
    verdict = "met" if ratios["index run"] <= 1.3 else "NOT met"
    print(f"\nrun time ratio (index run, item / stacked COG) {ratios['index run']:.2f}x, target <= 1.3x: {verdict}")


if __name__ == "__main__":
    main()
