"""Map tile latency: a 256² PNG tile of the 2048² scene through Envoy and the tile server (gateway/tiles.py), against
rio-tiler rendering the same tile in this process, at three zoom levels, in one run.

    .venv/bin/python bench/tiles.py [--requests 120] [--zooms 10,12,14]

The scene (scripts/make_scenes.py, 2048² of the sample's 28.5 m pixels, about 58 km across) is made a COG with
rio-cogeo (overviews, 512² blocks) in a temporary folder the gateway may read. Zoom 10 reads overviews (a tile is
~150 m a pixel), 12 is near the scene's own resolution, 14 over-zooms it. Each request asks for the true-colour tile
(bands 3, 2, 1 rescaled) of one of the tiles covering the scene at that zoom, in turn, over one keep-alive
connection with the API key as x-api-key. The baseline arm opens the COG and renders the same tiles with the same
options in this process, so the ratio is what the gateway, Envoy and HTTP add. Figures: p50 and p95 in ms per arm,
and p50 ratio.
"""

from __future__ import annotations

import argparse
import http.client
import os
import secrets
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "gen" / "python")]

import morecantile
import numpy as np
from rio_cogeo.cogeo import cog_translate
from rio_cogeo.profiles import cog_profiles
from rio_tiler.io import Reader

from gateway import admin
from gateway import supervisor as gateway
from gateway.settings import GatewaySettings
from scripts.make_scenes import default_folder, make_scene, scene_name
from tests.pg import free_port

TMS = morecantile.tms.get("WebMercatorQuad")
OPTIONS = {"bidx": ["3", "2", "1"], "rescale": ["0,255"] * 3}


def percentiles(seconds: list[float]) -> tuple[float, float]:
    p50, p95 = np.percentile(np.array(seconds) * 1000, [50, 95])
    return float(p50), float(p95)


def tiles_covering(cog: Path, zoom: int) -> list[morecantile.Tile]:
    with Reader(str(cog)) as reader:
        west, south, east, north = reader.get_geographic_bounds(TMS.rasterio_geographic_crs)
        return [t for t in TMS.tiles(west, south, east, north, [zoom]) if reader.tile_exists(t.x, t.y, t.z)]


def in_process(cog: Path, tiles: list[morecantile.Tile], requests: int) -> list[float]:
    taken = []
    for n in range(requests):
        tile = tiles[n % len(tiles)]
        start = time.perf_counter()
        with Reader(str(cog)) as reader:  # the server opens the file per request too
            image = reader.tile(tile.x, tile.y, tile.z, indexes=(3, 2, 1))
            image.rescale(in_range=((0, 255),) * 3)
            image.render(img_format="PNG")
        taken.append(time.perf_counter() - start)
    return taken


def through_gateway(port: int, key: str, cog: Path, tiles: list[morecantile.Tile], requests: int) -> list[float]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    query = urllib.parse.urlencode({"url": cog.as_uri(), **OPTIONS}, doseq=True)
    taken = []
    for n in range(requests):
        tile = tiles[n % len(tiles)]
        start = time.perf_counter()
        connection.request(
            "GET", f"/tiles/tiles/WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}.png?{query}", headers={"x-api-key": key}
        )
        response = connection.getresponse()
        body = response.read()
        taken.append(time.perf_counter() - start)
        assert response.status == 200 and body[:4] == b"\x89PNG", (response.status, body[:200])
    connection.close()
    return taken


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=120, help="tile requests per zoom level and arm")
    parser.add_argument("--zooms", default="10,12,14")
    args = parser.parse_args()
    scene = make_scene(2048, default_folder() / scene_name(2048))
    with tempfile.TemporaryDirectory(prefix="bench-tiles-") as folder:
        home, cog = Path(folder), Path(folder) / "scene_2048_cog.tif"
        profile = cog_profiles.get("deflate") | {"blockxsize": 512, "blockysize": 512}
        cog_translate(str(scene), str(cog), profile, quiet=True)
        key, port = f"bench-{secrets.token_urlsafe(12)}", free_port()
        env = {
            **os.environ,
            "CONSTELLATION_HOME": str(home),
            "CONSTELLATION_GATEWAY_PORT": str(port),
            "CONSTELLATION_API_KEY": key,
            "CONSTELLATION_DATA_ROOTS": str(home),
            "CONSTELLATION_GATEWAY_RATE_LIMIT_PER_ADDRESS": "0",
            "CONSTELLATION_GATEWAY_RATE_LIMIT_PER_KEY": "0",
        }
        socket_path = admin.socket_path(home)
        addresses = {name: f"127.0.0.1:{free_port()}" for name in ("core", "hosting", "orchestrator", "agent")}
        config = home / "envoy.yaml"
        config.write_text(gateway.render_config(port, socket_path, addresses, GatewaySettings.from_env(env)))
        process = gateway.start_envoy(config, home / "gateway.log", env)
        try:
            gateway.wait_ready(socket_path, 30, process)
            print(f"2048² scene as a COG, 256² PNG tiles (bands 3,2,1), {args.requests} requests per zoom and arm")
            print(f"{'zoom':>4} {'tiles':>5} {'in-process p50/p95 ms':>22} {'gateway p50/p95 ms':>19} {'p50 ratio':>9}")
            for zoom in (int(z) for z in args.zooms.split(",")):
                tiles = tiles_covering(cog, zoom)
                through_gateway(port, key, cog, tiles[:2], 2)  # warm the connection and GDAL's caches alike
                in_process(cog, tiles[:2], 2)
                local = percentiles(in_process(cog, tiles, args.requests))
                served = percentiles(through_gateway(port, key, cog, tiles, args.requests))
                print(
                    f"{zoom:>4} {len(tiles):>5} {local[0]:>12.1f} / {local[1]:<7.1f}"
                    f" {served[0]:>9.1f} / {served[1]:<7.1f} {served[0] / local[0]:>8.2f}x"
                )
        finally:
            process.terminate()
            process.wait(timeout=20)


if __name__ == "__main__":
    main()
