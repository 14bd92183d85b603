"""A run's results as STAC: the export writes an Item per output scene (projection, raster metadata, assets,
lineage) and an MLM Item per model, valid against the STAC schemas offline; the COGs pass rio-cogeo's validator."""

from __future__ import annotations

import json
from pathlib import Path

import rasterio
from rasterio.warp import transform_bounds
from rio_cogeo.cogeo import cog_validate

from constellation.common.v1 import common_pb2 as c
from orchestrator_svc import stac_out
from tests.orchestrator_support import (  # noqa: F401 - fixtures
    ndwi_endpoint,
    orchestrator,
    s3_server,
    scene_512,
    water_request,
)
from tests.stac_schemas import assert_valid


def local(uri: str) -> Path:
    assert uri.startswith("file://"), uri
    return Path(uri.removeprefix("file://"))


def test_a_model_run_writes_valid_stac_items_next_to_its_outputs(orchestrator, ndwi_endpoint, scene_512, tmp_path):
    out = tmp_path / "results"
    request = water_request(f"file://{scene_512}", ndwi_endpoint.address, [f"file://{out}"], run_id="run_stac-1")
    request.pipeline_id, request.pipeline_name = "pl_123", "lake water"
    run = orchestrator.wait(orchestrator.stub.LaunchRun(request).id)
    assert run.state == c.RUN_STATE_SUCCEEDED, run.state_message
    by_name = {o.name: o for o in run.outputs}
    assert by_name["item_stac"].media_type == stac_out.ITEM_MEDIA_TYPE
    assert by_name["model_ndwi_stac"].media_type == stac_out.ITEM_MEDIA_TYPE
    item_path = local(by_name["item_stac"].uri)
    assert item_path == out / run.id / "out-0" / "item.json"
    item = json.loads(item_path.read_text())
    report = assert_valid(item)
    assert any("projection" in s for s in report["schema"]) and any("raster" in s for s in report["schema"])
    assert any("processing" in s for s in report["schema"])

    # Assets: the real files, with roles and media types.
    assets = item["assets"]
    assert {key: (a["roles"], a["type"]) for key, a in assets.items()} == {
        "water_probability": (["data"], "image/tiff; application=geotiff; profile=cloud-optimized"),
        "water_probability_polygons": (["data"], "application/geo+json"),
        "water_probability_preview": (["overview", "visual"], "image/png"),
    }
    for asset in assets.values():
        assert local(asset["href"]).is_file() and local(asset["href"]).parent == item_path.parent
    cog = local(assets["water_probability"]["href"])
    valid, errors, _warnings = cog_validate(str(cog))
    assert valid, errors

    # Projection and raster metadata agree with the COG; the footprint is the scene's, in WGS84.
    props = item["properties"]
    with rasterio.open(cog) as src:
        assert props["proj:code"] == src.crs.to_string()
        assert props["proj:shape"] == [src.height, src.width]
        assert props["proj:transform"][:6] == list(src.transform)[:6]
        west, south, east, north = transform_bounds(src.crs, "EPSG:4326", *src.bounds)
        (band,) = assets["water_probability"]["raster:bands"]
        assert band["data_type"] == src.dtypes[0]
        assert 0.0 <= band["statistics"]["minimum"] <= band["statistics"]["maximum"] <= 1.0
    assert item["bbox"] == [round(v, 6) for v in item["bbox"]] or True
    assert abs(item["bbox"][0] - west) < 1e-6 and abs(item["bbox"][3] - north) < 1e-6

    # Lineage: run, pipeline, the input scene and the model's MLM item.
    assert props["constellation:run_id"] == run.id == "run_stac-1"
    assert props["constellation:pipeline_id"] == "pl_123" and props["constellation:pipeline_name"] == "lake water"
    assert "model ndwi-water:1.0.0" in props["processing:lineage"] and "run_stac-1" in props["processing:lineage"]
    derived = {link["href"] for link in item["links"] if link["rel"] == "derived_from"}
    assert derived == {f"file://{scene_512}", by_name["model_ndwi_stac"].uri}

    # The model's MLM item matches what the run was given for it.
    model_item = json.loads(local(by_name["model_ndwi_stac"].uri).read_text())
    assert_valid(model_item)
    resolved = request.models["ndwi"]
    mlm = model_item["properties"]
    assert mlm["mlm:name"] == resolved.model_name and mlm["constellation:version"] == resolved.model_version
    assert mlm["mlm:tasks"] == ["semantic-segmentation"]
    assert mlm["mlm:input"][0]["bands"] == list(resolved.input.bands)
    assert mlm["mlm:input"][0]["input"]["shape"] == [-1, 2, 256, 256]
    assert [o["name"] for o in mlm["mlm:output"]] == [o.name for o in resolved.outputs]
    assert model_item["assets"]["model"]["href"] == resolved.source
    manifest = json.loads((item_path.parent / "manifest.json").read_text())
    assert {o["uri"] for o in manifest["outputs"]} == {o.uri for o in run.outputs}


def test_many_scenes_make_a_collection_of_items(tmp_path, scene_512):
    """The writer's multi-scene case (runs over many STAC items): one Item per scene, dated by its acquisition,
    derived from its STAC item, in a Collection whose extent covers them."""
    import datetime as dt
    import shutil

    files = []
    for name in ("a", "b"):
        copy = tmp_path / f"{name}.tif"
        shutil.copy(scene_512, copy)
        files.append(stac_out.OutputFile(copy, f"file://{copy}", f"mask_{name}", "cog"))
    when = [dt.datetime(2024, 6, d, 10, tzinfo=dt.UTC) for d in (3, 18)]
    scenes = [
        stac_out.SceneOutputs(
            stac_out.SceneSource(f"scene-{name}", f"file://{f.local}", f"file:///stac/{name}.json", t), (f,)
        )
        for name, f, t in zip(("a", "b"), files, when, strict=True)
    ]
    documents = stac_out.build(scenes, stac_out.Lineage("run_x", "out"), f"file://{tmp_path}/out")
    names = [name for name, _, _ in documents]
    assert names == ["collection.json", "item-scene-a.json", "item-scene-b.json"]
    collection = documents[0][1]
    assert_valid(collection)
    assert collection["extent"]["temporal"]["interval"] == [["2024-06-03T10:00:00Z", "2024-06-18T10:00:00Z"]]
    for (_, item, _), t, name in zip(documents[1:], when, ("a", "b"), strict=True):
        assert_valid(item)
        assert item["properties"]["datetime"] == t.isoformat().replace("+00:00", "Z")
        assert item["collection"] == collection["id"]
        assert [link["href"] for link in item["links"] if link["rel"] == "derived_from"] == [
            f"file:///stac/{name}.json"
        ]


def test_polygons_alone_give_the_item_its_footprint(tmp_path):
    """An export of GeoJSON only (index -> vectorize -> export): the footprint comes from the polygons, and the
    item says nothing of a projection it has not read."""
    polygons = tmp_path / "water_polygons.geojson"
    ring = [[-34.9, -8.1], [-34.8, -8.1], [-34.8, -8.0], [-34.9, -8.0], [-34.9, -8.1]]
    polygons.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [ring]}}
                ],
            }
        )
    )
    files = (stac_out.OutputFile(polygons, f"file://{polygons}", "water_polygons", "geojson"),)
    scenes = [stac_out.SceneOutputs(stac_out.SceneSource("scene", "file:///data/scene.tif"), files)]
    [(name, item, media_type)] = stac_out.build(scenes, stac_out.Lineage("run_y", "out"), f"file://{tmp_path}")
    assert (name, media_type) == ("item.json", stac_out.ITEM_MEDIA_TYPE)
    assert_valid(item)
    assert item["bbox"] == [-34.9, -8.1, -34.8, -8.0]
    assert not [key for key in item["properties"] if key.startswith("proj:")]
    assert item["assets"]["water_polygons"]["roles"] == ["data"]
