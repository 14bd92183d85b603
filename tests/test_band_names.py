"""STAC band names everywhere: common names and the older aliases match as one band, near equivalents come only
from the one table and are reported, and pipeline validation and the orchestrator's scene decide the same way."""

from __future__ import annotations

from orchestrator_svc.blocks import Scene
from pipeline.bands import ALIASES, CANONICAL_BANDS, NEAR_EQUIVALENTS, canonical, match_bands
from pipeline.rules import check_bands
from pipeline.spec import DatasetView, ModelView, PipelineSpec
from pipeline.validation import validate_spec


def test_aliases_name_canonical_bands_and_match_both_ways():
    assert all(target in CANONICAL_BANDS for target in ALIASES.values())
    assert canonical("SWIR1") == "swir16" and canonical("tir1") == "lwir11" and canonical("rededge1") == "rededge071"
    match = match_bands(["swir16", "tir1"], ["swir1", "lwir11"])
    assert match.chosen == ("swir1", "lwir11") and not match.substitutions


def test_near_equivalents_come_from_the_table_and_are_reported():
    assert all(canonical(k) == k and all(o in CANONICAL_BANDS for o, _ in v) for k, v in NEAR_EQUIVALENTS.items())
    match = match_bands(["green", "nir"], ["green", "nir08"])
    assert match.chosen == ("green", "nir08")
    assert [s.describe().split(" (")[0] for s in match.substitutions] == ["nir08 stands in for nir"]
    strict = match_bands(["nir"], ["nir08"], near=False)
    assert strict.missing == ("nir",)
    assert match_bands(["swir16"], ["swir22"]).missing == ("swir16",)  # not in the table: no stand-in


def test_check_bands_accepts_stac_names_and_refuses_a_band_twice_under_two_names():
    assert check_bands(["nir08", "swir16", "swir22", "lwir11", "rededge071"], "bands", required=True) == []
    twice = check_bands(["swir1", "swir16"], "bands", required=True)
    assert [v.field for v in twice] == ["bands[1]"] and "another name" in twice[0].description
    assert [v.field for v in check_bands(["swir3"], "bands", required=True)] == ["bands[0]"]


def _spec(dataset_bands: list[str]) -> PipelineSpec:
    return PipelineSpec.from_json(
        {
            "blocks": [
                {"id": "scene", "kind": "dataset", "config": {"dataset_id": "ds", "bands": dataset_bands}},
                {"id": "tiles", "kind": "tile", "config": {"tile_size_px": 256}},
                {"id": "infer", "kind": "model", "config": {"model_id": "m"}},
                {"id": "mosaic", "kind": "stitch", "config": {}},
                {"id": "out", "kind": "export", "config": {"uri": "file:///tmp/out"}},
            ],
            "edges": [
                {"source": s, "target": t}
                for s, t in (("scene", "tiles"), ("tiles", "infer"), ("infer", "mosaic"), ("mosaic", "out"))
            ],
        }
    )


def test_validation_matches_a_model_across_aliases_and_near_equivalents():
    dataset = DatasetView("ds", "landsat-8 item", ("green", "nir08", "swir16"))
    model = ModelView("m", "water", ("green", "nir", "swir1"), 256)
    problems, order = validate_spec(_spec(["green", "nir08", "swir16"]), {"ds": dataset}.get, {"m": model}.get)
    assert problems == [] and order
    lacking = ModelView("m", "thermal", ("lwir12",), 256)
    problems, _ = validate_spec(_spec([]), {"ds": dataset}.get, {"m": lacking}.get)
    assert any("missing lwir12" in p.description for p in problems)


def test_the_orchestrators_scene_finds_bands_by_any_name():
    scene = Scene(
        path="x", band_names=("green", "nir08", "swir1"), band_indexes=(2, 4, 5), width=1, height=1, crs_wkt="",
        transform=(1, 0, 0, 0, -1, 0), nodata=None, dtype="uint8", rgb_indexes=(),
    )  # fmt: skip
    assert scene.index_of("swir16") == 5 and scene.index_of("nir") == 4 and scene.index_of("green") == 2
