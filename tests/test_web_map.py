"""The console's maps in headless Chromium against a real mesh (Envoy, the tile server, core, the orchestrator): the
catalog draws dataset footprints over the Natural Earth basemap, a finished run's layers land over the right place
(the result's colour at a known sea pixel, the scene's at the same place), and a click reads the value under the
cursor from the tile server. Screenshots go to test-artifacts/web/map-*.png."""

from __future__ import annotations

import io
import time
import urllib.parse

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.warp import transform as warp_transform

from constellation.common.v1 import common_pb2 as c
from constellation.core.v1 import core_pb2
from constellation_sdk import Client, catalog
from tests.test_web_console import ARTIFACTS, SCENE, browser, mesh, new_page  # noqa: F401 - fixtures

pytestmark = [pytest.mark.timeout(400), pytest.mark.slow]

BANDS = ["blue", "green", "red", "nir", "swir1", "swir2"]
# Open sea east of Olinda, and land west of it, inside the sample scene.
SEA = (-34.835, -8.02)
LAND = (-34.9, -7.96)


def sample(path, lon: float, lat: float) -> list[float]:
    with rasterio.open(path) as raster:
        [x], [y] = warp_transform("EPSG:4326", raster.crs, [lon], [lat])
        return next(raster.sample([(x, y)])).tolist()


@pytest.fixture(scope="module")
def finished_run(mesh):
    """An index run (NDWI -> polygons -> COG, GeoJSON, PNG) on the sample scene, finished through core."""
    export = (mesh["home"] / "outputs" / "map-run").as_uri()
    with Client(mesh["gateway"]) as client:
        dataset = client.core.CreateDataset(
            core_pb2.CreateDatasetRequest(dataset=catalog.scene_dataset(SCENE, "olinda-map", BANDS, "landsat-7"))
        )
        blocks = [
            c.Block(id="scene", dataset=c.DatasetBlock(dataset_id=dataset.id)),
            c.Block(id="ndwi", index=c.IndexBlock(preset=c.SPECTRAL_INDEX_NDWI)),
            c.Block(id="water", vectorize=c.VectorizeBlock(threshold=0.0, min_area_m2=0)),
            c.Block(id="out", export=c.ExportBlock(uri=export)),
        ]
        edges = [("scene", "ndwi"), ("ndwi", "water"), ("ndwi", "out"), ("water", "out")]
        spec = c.PipelineSpec(blocks=blocks, edges=[c.Edge(source_block_id=a, target_block_id=b) for a, b in edges])
        pipeline = client.core.CreatePipeline(
            core_pb2.CreatePipelineRequest(pipeline=core_pb2.Pipeline(name="map-ndwi", spec=spec))
        )
        run = client.core.RunPipeline(core_pb2.RunPipelineRequest(pipeline_id=pipeline.id))
        deadline = time.monotonic() + 240
        while (run := client.core.GetRun(core_pb2.GetRunRequest(id=run.id))).state not in (
            c.RUN_STATE_SUCCEEDED,
            c.RUN_STATE_FAILED,
            c.RUN_STATE_CANCELED,
        ):
            assert time.monotonic() < deadline, "the run did not finish in 240 s"
            time.sleep(0.5)
    assert run.state == c.RUN_STATE_SUCCEEDED, run.state_message
    [raster] = [o for o in run.outputs if o.uri.endswith(".tif")]
    return {"id": run.id, "raster": urllib.parse.unquote(raster.uri.removeprefix("file://")), "dataset": dataset}


def map_pixel(page, selector: str, lon: float, lat: float) -> tuple[float, float]:
    """Where (lon, lat) is drawn in the map element, in CSS pixels of the element (EPSG:3857 by hand)."""
    return page.evaluate(
        """([selector, lon, lat]) => {
            const map = document.querySelector(selector).olMap;
            const r = 6378137, x = r * lon * Math.PI / 180;
            const y = r * Math.log(Math.tan(Math.PI / 4 + lat * Math.PI / 360));
            return map.getPixelFromCoordinate([x, y]);
        }""",
        [selector, lon, lat],
    )


def rendered(page, selector: str) -> None:
    """Wait until the map has drawn every tile and feature it has asked for."""
    page.evaluate(
        """(selector) => new Promise((done, fail) => {
            const map = document.querySelector(selector).olMap;
            map.once('rendercomplete', () => done());
            map.render();
            setTimeout(() => fail(new Error('the map did not finish drawing in 30 s')), 30000);
        })""",
        selector,
    )


def pixels(page, selector: str, name: str) -> np.ndarray:
    element = page.locator(selector)
    png = element.screenshot(path=str(ARTIFACTS / f"{name}.png"))
    print(f"[web console] screenshot {ARTIFACTS / name}.png")
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def around(image: np.ndarray, xy: tuple[float, float], radius: int = 1) -> np.ndarray:
    """The pixels within `radius` of xy, as rows of RGB."""
    x, y = round(xy[0]), round(xy[1])
    return image[y - radius : y + radius + 1, x - radius : x + radius + 1].reshape(-1, 3)


def test_the_catalog_map_draws_dataset_footprints(mesh, browser, finished_run):  # noqa: F811
    page = new_page(browser)
    page.goto(mesh["url"])
    selector = "[data-testid=footprint-map]"
    page.wait_for_selector(f"{selector}[data-footprints]")
    assert int(page.get_attribute(selector, "data-footprints")) >= 1
    rendered(page, selector)
    image = pixels(page, selector, "map-01-footprints")
    bbox = finished_run["dataset"].bbox
    # The footprint's outline (#d23c1e) on its west and east edges, halfway up; the basemap inside elsewhere.
    middle = (bbox.min_y + bbox.max_y) / 2
    for lon in (bbox.min_x, bbox.max_x):
        edge = around(image, map_pixel(page, selector, lon, middle), 2)
        assert any(r > 170 and g < 110 and b < 90 for r, g, b in edge), (lon, edge.tolist())
    # Far from any footprint: the basemap (Natural Earth land or the sea colour), never the outline.
    corner = around(image, (5, 5), 0)[0]
    assert not (corner[0] > 170 and corner[1] < 110), corner
    assert not page.crashes, page.crashes
    page.close()


def test_a_finished_runs_layers_land_over_the_right_place_and_a_click_reads_the_value(mesh, browser, finished_run):  # noqa: F811
    page = new_page(browser)
    tile_answers: list[str] = []
    page.on("response", lambda r: "/tiles/" in r.url and tile_answers.append(f"{r.status} {r.url[:160]}"))
    page.goto(f"{mesh['url']}#runs/{finished_run['id']}")
    selector = "[data-testid=layer-map]"
    page.wait_for_selector(f"{selector}[data-layers]", timeout=60_000)
    assert page.get_attribute(selector, "data-layers") == "scene result polygons"
    polygons = page.evaluate(
        """(selector) => new Promise((done) => {
            const map = document.querySelector(selector).olMap;
            const source = map.getLayers().item(3).getSource();
            const count = () => source.getFeatures().length;
            if (count()) done(count());
            source.once('featuresloadend', () => done(count()));
            source.once('featuresloaderror', () => done(-1));
            setTimeout(() => done(count()), 30000);
        })""",
        selector,
    )
    assert polygons > 0, (tile_answers, page.crashes)
    # NDWI is positive on the sea and negative on land: the sample scene says so at these two places.
    sea_green, sea_nir = (sample(SCENE, *SEA)[i] for i in (1, 3))
    land_green, land_nir = (sample(SCENE, *LAND)[i] for i in (1, 3))
    assert sea_green > sea_nir and land_green < land_nir

    # The result alone, fully opaque: blue (the index's positive end) at sea, red at land.
    page.locator("[data-layer=scene] input[type=checkbox]").uncheck()
    page.locator("[data-layer=polygons] input[type=checkbox]").uncheck()
    page.locator("[data-layer=result] input[type=range]").fill("1")
    rendered(page, selector)
    image = pixels(page, selector, "map-02-result")
    sea = around(image, map_pixel(page, selector, *SEA)).mean(axis=0)
    land = around(image, map_pixel(page, selector, *LAND)).mean(axis=0)
    assert sea[2] > sea[0] + 40, sea
    assert land[0] > land[2] + 40, land

    # The true-colour scene alone: its red, green and blue digital numbers at the sea pixel (nearest-neighbour
    # tiles, scaled by the browser: a few levels off at most).
    page.locator("[data-layer=result] input[type=checkbox]").uncheck()
    page.locator("[data-layer=scene] input[type=checkbox]").check()
    rendered(page, selector)
    image = pixels(page, selector, "map-03-scene")
    blue, green, red = sample(SCENE, *SEA)[:3]
    shown = around(image, map_pixel(page, selector, *SEA), 0)[0]
    assert np.abs(shown - np.array([red, green, blue])).max() <= 12, (shown.tolist(), [red, green, blue])

    # A click reads the result under the cursor from the tile server: the COG's own value there.
    page.locator("[data-layer=result] input[type=checkbox]").check()
    x, y = map_pixel(page, selector, *SEA)
    page.locator(selector).click(position={"x": x, "y": y})
    readout = page.locator("[data-testid=map-value][data-value]")
    readout.wait_for()
    lon, lat = float(readout.get_attribute("data-lon")), float(readout.get_attribute("data-lat"))
    assert abs(lon - SEA[0]) < 1e-3 and abs(lat - SEA[1]) < 1e-3
    [expected] = sample(finished_run["raster"], lon, lat)
    assert float(readout.get_attribute("data-value")) == pytest.approx(expected, abs=1e-6)
    assert expected > 0
    pixels(page, "[data-testid=run-map]", "map-04-readout")
    assert not page.crashes, page.crashes
    page.close()
