"""The STAC test items (tests/stac_items.py) are valid STAC and say what they hold."""

from __future__ import annotations

import copy
import json

import rasterio

from tests import stac_items


def test_items_are_valid_stac_with_per_band_cogs_at_two_resolutions(tmp_path):
    items = stac_items.make_items(tmp_path)
    assert [item.id for item in items] == [stac_items.item_id(day) for day in stac_items.DEFAULT_DATES]
    for item in items:
        path = tmp_path / item.id / f"{item.id}.json"
        assert stac_items.validate(path) == []
        document = json.loads(path.read_text())
        common = [asset["eo:bands"][0]["common_name"] for asset in document["assets"].values()]
        assert common == stac_items.COMMON_NAMES
        for asset in document["assets"].values():
            with rasterio.open(asset["href"]) as src:
                assert src.count == 1
                assert abs(src.res[0] - asset["gsd"]) < 1e-6
        assert document["assets"]["B5"]["gsd"] == 2 * document["assets"]["B1"]["gsd"]
    assert stac_items.validate(tmp_path / "collection.json") == []
    covers = [item.properties["eo:cloud_cover"] for item in items]
    assert covers[2] == 0.0 < covers[1] < covers[0]
    assert abs(covers[1] - 5.0) < 0.5


def test_validator_rejects_a_broken_item(tmp_path):
    item = stac_items.make_item(tmp_path, stac_items.DEFAULT_DATES[0], 0.1)
    document = copy.deepcopy(item.to_dict(transform_hrefs=False))
    document["properties"]["eo:cloud_cover"] = 150
    assert any("eo:cloud_cover" in message for message in stac_items.validate(document))


def test_stac_api_serves_the_items_with_filters(stac_api):
    from pystac_client import Client

    client = Client.open(stac_api.url)
    found = client.search(collections=[stac_api.collection], datetime="2024-06-01/2024-06-30")
    assert sorted(item.id for item in found.items()) == ["L7_OLINDA_20240603", "L7_OLINDA_20240619"]
    clear = client.search(
        collections=[stac_api.collection],
        filter={"op": "<=", "args": [{"property": "eo:cloud_cover"}, 10]},
        filter_lang="cql2-json",
    )
    assert sorted(item.id for item in clear.items()) == ["L7_OLINDA_20240619", "L7_OLINDA_20240705"]
