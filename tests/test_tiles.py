"""The map's tile server (gateway/tiles.py) behind the real Envoy, started by the real gateway supervisor: its
tiles are rio-tiler's reading of the COG, its point query the pixel under the point, and it refuses what `/files/`
refuses (no key: 401; a file outside the roots, by any path: 404), with the same answers."""

from __future__ import annotations

import io
import json
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request

import morecantile
import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.warp import transform as warp_transform
from rio_tiler.io import Reader

from gateway import admin, console
from gateway import supervisor as gateway
from gateway.settings import GatewaySettings
from tests.conftest import ROOT, TEST_API_KEY
from tests.pg import free_port

SCENE = ROOT / "examples" / "data" / "L7_ETMs.tif"
TMS = morecantile.tms.get("WebMercatorQuad")
# A point on land in the sample scene (Olinda, Brazil) and one at sea.
LAND = (-34.87, -8.0)
SEA = (-34.835, -8.02)


@pytest.fixture(scope="module")
def door(tmp_path_factory):
    """Envoy and its supervisor (console + tiles) alone, without services: /tiles/ needs none."""
    home = tmp_path_factory.mktemp("tiles-home")
    port = free_port()
    env = {
        **os.environ,
        "CONSTELLATION_HOME": str(home),
        "CONSTELLATION_GATEWAY_PORT": str(port),
        # The default roots ($CONSTELLATION_HOME/data, examples/data), not the suite's (the temp folder, which holds
        # this checkout's test-artifacts when the checkout itself lies under /tmp).
        "CONSTELLATION_DATA_ROOTS": "",
    }
    settings = GatewaySettings.from_env(env)
    socket_path = admin.socket_path(home)
    addresses = {name: f"127.0.0.1:{free_port()}" for name in ("core", "hosting", "orchestrator", "agent")}
    config = home / "envoy.yaml"
    config.write_text(gateway.render_config(port, socket_path, addresses, settings))
    process = gateway.start_envoy(config, home / "gateway.log", env)
    try:
        gateway.wait_ready(socket_path, 30, process)
        outputs = home / "outputs" / "run_t" / "out"
        outputs.mkdir(parents=True)
        shutil.copy(SCENE, outputs / "scene.tif")
        yield {"url": f"http://127.0.0.1:{port}", "home": home, "outputs": outputs}
    finally:
        process.terminate()
        process.wait(timeout=20)


def get(url: str, key: str | None = TEST_API_KEY, header: bool = False) -> tuple[int, bytes]:
    headers = {}
    if key is not None:
        headers = {"x-api-key": key} if header else {"Cookie": f"{console.KEY_COOKIE}={key}"}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def tile_url(door: dict, uri: str, tile: morecantile.Tile, **options: str | list[str]) -> str:
    query = urllib.parse.urlencode({"url": uri, **options}, doseq=True)
    return f"{door['url']}/tiles/tiles/WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}.png?{query}"


def test_a_tile_is_rio_tilers_reading_of_the_cog(door):
    uri = (door["outputs"] / "scene.tif").as_uri()
    tile = TMS.tile(*LAND, 13)
    status, body = get(tile_url(door, uri, tile, bidx=["3", "2", "1"]))
    assert status == 200, body
    served = np.asarray(Image.open(io.BytesIO(body)).convert("RGBA"))
    with Reader(str(door["outputs"] / "scene.tif")) as cog:
        expected = cog.tile(tile.x, tile.y, tile.z, indexes=(3, 2, 1))
    assert served.shape == (256, 256, 4)
    np.testing.assert_array_equal(served[..., :3], np.moveaxis(expected.data, 0, -1))
    np.testing.assert_array_equal(served[..., 3], expected.mask)
    assert (served[..., 3] == 255).any() and served[..., :3].std() > 1  # real pixels, not an empty tile
    # The data roots serve too (the input scene under its results), with the same reading.
    status, same = get(tile_url(door, SCENE.as_uri(), tile, bidx=["3", "2", "1"]))
    assert status == 200 and np.array_equal(np.asarray(Image.open(io.BytesIO(same)).convert("RGBA")), served)


def test_rendering_options_rescale_and_colormap(door):
    uri = (door["outputs"] / "scene.tif").as_uri()
    tile = TMS.tile(*LAND, 12)
    status, body = get(tile_url(door, uri, tile, bidx="4", rescale="0,100", colormap_name="viridis"))
    assert status == 200, body
    served = np.asarray(Image.open(io.BytesIO(body)).convert("RGBA"))
    with Reader(str(door["outputs"] / "scene.tif")) as cog:
        data = cog.tile(tile.x, tile.y, tile.z, indexes=(4,))
    data.rescale(in_range=((0, 100),))
    from rio_tiler.colormap import cmap

    expected = np.asarray(Image.open(io.BytesIO(data.render(img_format="PNG", colormap=cmap.get("viridis")))))
    np.testing.assert_array_equal(served, np.asarray(Image.fromarray(expected).convert("RGBA")))


def test_the_point_query_reads_the_pixel_under_the_point(door):
    uri = (door["outputs"] / "scene.tif").as_uri()
    for lon, lat in (LAND, SEA):
        status, body = get(f"{door['url']}/tiles/point/{lon},{lat}?url={urllib.parse.quote(uri)}", header=True)
        assert status == 200, body
        with rasterio.open(SCENE) as scene:
            [x], [y] = warp_transform("EPSG:4326", scene.crs, [lon], [lat])
            expected = next(scene.sample([(x, y)])).tolist()
        assert json.loads(body)["values"] == expected
    status, body = get(f"{door['url']}/tiles/point/-34.0,-9.0?url={urllib.parse.quote(uri)}")
    assert status == 404 and b"outside" in body


def test_tiles_refuse_what_files_refuses_with_the_same_answers(door):
    base, outputs = door["url"], door["outputs"]
    tile = TMS.tile(*LAND, 13)
    uri = (outputs / "scene.tif").as_uri()
    # No key, a wrong key: /files/'s 401 and words.
    files_no_key = get(f"{base}/files/run_t/out/scene.tif", key=None)
    assert files_no_key[0] == 401
    assert get(tile_url(door, uri, tile), key=None) == files_no_key
    assert get(tile_url(door, uri, tile), key="wrong") == files_no_key
    assert get(tile_url(door, uri, tile), key="wrong", header=True) == files_no_key
    # A COG outside every root (the repository's test-artifacts), reached directly, through `..`, or through a
    # symlink inside the outputs folder: /files/ 404s the link, and tiles 404 all of them alike.
    outside = ROOT / "test-artifacts" / "tiles" / "outside.tif"
    outside.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(SCENE, outside)
    (outputs / "link.tif").unlink(missing_ok=True)
    (outputs / "link.tif").symlink_to(outside)
    files_refusal = get(f"{base}/files/run_t/out/link.tif")
    assert files_refusal[0] == 404
    for refused in (
        outside.as_uri(),
        (outputs / "link.tif").as_uri(),
        uri.replace("/scene.tif", "/../../../../../" + str(outside).lstrip("/")),
        "file:///etc/passwd",
        outputs.as_uri(),  # a folder
        (outputs / "missing.tif").as_uri(),
        "http://example.org/scene.tif",
        "s3://bucket/../x.tif",
        "/etc/passwd",
    ):
        assert get(tile_url(door, refused, tile)) == files_refusal, refused
        assert get(f"{base}/tiles/info.geojson?url={urllib.parse.quote(refused)}") == files_refusal, refused


def test_bounded_and_bad_requests_are_400_or_404_never_500(door):
    uri = (door["outputs"] / "scene.tif").as_uri()
    tile = TMS.tile(*LAND, 13)
    status, body = get(tile_url(door, uri, tile, tilesize="100000"))
    assert status == 400 and b"tilesize" in body
    status, body = get(tile_url(door, uri, tile, bidx="9"))
    assert status == 400 and b"bidx" in body
    status, _ = get(tile_url(door, uri, TMS.tile(10.0, 50.0, 13)))
    assert status == 404  # a tile the COG does not cover
    status, _ = get(f"{door['url']}/tiles/statistics?url={urllib.parse.quote(uri)}")
    assert status == 404  # only the routes the map uses are served


def test_a_geojson_output_comes_back_in_wgs84(door):
    """/tiles/geojson moves a run's polygons from the scene's CRS (as vectorize writes them) to WGS84."""
    with rasterio.open(SCENE) as scene:
        crs, left, top = scene.crs, scene.bounds.left, scene.bounds.top
    square = [[left, top], [left + 1000, top], [left + 1000, top - 1000], [left, top - 1000], [left, top]]
    collection = {
        "type": "FeatureCollection",
        "crs": {"type": "name", "properties": {"name": f"urn:ogc:def:crs:EPSG::{crs.to_epsg()}"}},
        "features": [
            {"type": "Feature", "properties": {"n": 1}, "geometry": {"type": "Polygon", "coordinates": [square]}}
        ],
    }
    path = door["outputs"] / "water.geojson"
    path.write_text(json.dumps(collection))
    status, body = get(f"{door['url']}/tiles/geojson?url={urllib.parse.quote(path.as_uri())}")
    assert status == 200, body
    moved = json.loads(body)
    assert "crs" not in moved and moved["features"][0]["properties"] == {"n": 1}
    xs, ys = warp_transform(crs, "EPSG:4326", [p[0] for p in square], [p[1] for p in square])
    np.testing.assert_allclose(moved["features"][0]["geometry"]["coordinates"][0], np.column_stack([xs, ys]), atol=1e-9)
    outside = get(f"{door['url']}/tiles/geojson?url={urllib.parse.quote('file:///etc/passwd')}")
    assert outside == get(f"{door['url']}/files/run_t/out/none.tif")  # /files/' 404
