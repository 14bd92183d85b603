"""The agent with datasets from STAC: it sees each scene's date and cloud cover and picks "the least cloudy scene
in June" (offline planner, and Gemini mocked at the network boundary), and says when a near-equivalent band is used.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from agent_svc import prompt
from constellation.agent.v1 import agent_pb2
from constellation.core.v1 import core_pb2, core_pb2_grpc
from core_svc.server import build as build_core
from mesh import config
from tests import stac_items
from tests.agent_fixtures import Core, FakeGemini, agent_env, json_reply, plan, start_agent, text_reply
from tests.catalog_data import ndwi_model
from tests.conftest import key_channel, service_env

JUNE_CLEAREST = stac_items.item_id(stac_items.DEFAULT_DATES[1])  # 5 % cloud; June 3 has 30 %, July 5 has 0 %


@pytest.fixture(scope="module")
def stac_core(tmp_path_factory) -> Iterator[Core]:
    """Core holding one dataset per test item (imported from the static collection) and two water models."""
    tmp = tmp_path_factory.mktemp("agent-stac-core")
    stac_items.make_items(tmp / "items")
    server = build_core(config.load("core", service_env(tmp, DATABASE_URL=f"sqlite:///{tmp / 'core.db'}")))
    server.start()
    channel = key_channel(f"127.0.0.1:{server.port}")
    stub = core_pb2_grpc.CoreServiceStub(channel)
    imported = stub.ImportStacDatasets(
        core_pb2.ImportStacDatasetsRequest(
            catalog_uri=(tmp / "items" / "collection.json").as_uri(),
            mode=core_pb2.STAC_IMPORT_MODE_DATASET_PER_ITEM,
            name="olinda",
            tags=["water", "coast"],
        )
    )
    ids = {d.items[0].id: d.id for d in imported.datasets}
    ids["ndwi-water"] = stub.RegisterModel(core_pb2.RegisterModelRequest(model=ndwi_model())).id
    narrow = ndwi_model(name="ndwi-narrow-nir")
    narrow.input.bands[:] = ["green", "nir08"]  # trained on Landsat 8 / Sentinel-2 B8A
    ids["ndwi-narrow-nir"] = stub.RegisterModel(core_pb2.RegisterModelRequest(model=narrow)).id
    yield Core(server, stub, ids)
    channel.close()
    server.stop(0)


@pytest.fixture
def offline_agent(stac_core, tmp_path):
    running = start_agent(agent_env(tmp_path, stac_core.address))
    yield running
    running.stop()


def scene_block(spec):
    return next(b for b in spec.blocks if b.HasField("dataset"))


def test_prompt_reads_month_dates_and_least_cloudy():
    intent = prompt.parse("water in the least cloudy scene of June 2024")
    assert intent.least_cloudy and intent.preferred_modality == ""  # clouds named, but not a reason for radar
    assert [str(d) for d in intent.constraints.date_range] == ["2024-06-01", "2024-06-30"]
    assert prompt.parse("clearest image in june").constraints.month == 6
    window = prompt.parse("floods between 2024-06-10 and 2024-07-01").constraints.date_range
    assert [str(d) for d in window] == ["2024-06-10", "2024-07-01"]


def test_offline_plan_picks_the_least_cloudy_june_scene(offline_agent, stac_core):
    answer = plan(offline_agent.stub, "map surface water in the least cloudy scene of June 2024")
    assert scene_block(answer.spec).dataset.dataset_id == stac_core.ids[JUNE_CLEAREST]
    assert stac_core.stub.ValidatePipeline(core_pb2.ValidatePipelineRequest(spec=answer.spec)).valid
    reason = next(r.reason for r in answer.rationale if r.block_id == "scene")
    assert JUNE_CLEAREST in reason and "5% cloud" in reason
    best = answer.recommendation.datasets[0]
    assert any("clearest scene" in r and "2024-06-19" in r for r in best.reasons)
    # Without the month, July's cloudless scene wins; June's cloudier one ranks last.
    anytime = plan(offline_agent.stub, "map surface water in the least cloudy scene")
    assert (
        scene_block(anytime.spec).dataset.dataset_id == stac_core.ids[stac_items.item_id(stac_items.DEFAULT_DATES[2])]
    )
    assert anytime.recommendation.datasets[-1].id == stac_core.ids[stac_items.item_id(stac_items.DEFAULT_DATES[0])]


def test_a_dataset_with_no_scene_in_the_dates_falls_short(offline_agent):
    answer = plan(offline_agent.stub, "map surface water in March 2023")
    assert not answer.recommendation.satisfied
    assert any("no scene" in s for s in answer.recommendation.datasets[0].shortfalls)


def test_near_equivalent_band_is_used_and_said(offline_agent, stac_core):
    answer = plan(
        offline_agent.stub,
        "map surface water",
        dataset_id=stac_core.ids[JUNE_CLEAREST],
        model_id=stac_core.ids["ndwi-narrow-nir"],
    )
    assert list(scene_block(answer.spec).dataset.bands) == ["green", "nir"]  # the item's names
    assert stac_core.stub.ValidatePipeline(core_pb2.ValidatePipelineRequest(spec=answer.spec)).valid
    reason = next(r.reason for r in answer.rationale if r.block_id == "scene")
    assert "nir stands in for nir08" in reason and "near equivalent" in reason


def test_gemini_reads_dates_and_clouds_and_sees_the_scenes(stac_core, tmp_path):
    fake = FakeGemini().start()
    reading = {
        "task": "segmentation", "sensors": [], "bands": [], "place": "", "keywords": ["surface water"],
        "start_date": "2024-06-01", "end_date": "2024-06-30", "least_cloudy": True,
    }  # fmt: skip
    spec = {
        "blocks": [
            {"id": "scene", "kind": "dataset",
             "dataset": {"dataset_id": stac_core.ids[JUNE_CLEAREST], "bands": ["green", "nir"]}},
            {"id": "tiles", "kind": "tile", "tile": {"tile_size_px": 256, "normalization": "REFLECTANCE"}},
            {"id": "water", "kind": "model", "model": {"model_id": stac_core.ids["ndwi-water"]}},
            {"id": "mosaic", "kind": "stitch", "stitch": {"blend": "CENTER"}},
            {"id": "out", "kind": "export",
             "export": {"uri": "file:///tmp/constellation-agent-test/june", "formats": ["COG"]}},
        ],
        "edges": [{"source_block_id": s, "target_block_id": t}
                  for s, t in (("scene", "tiles"), ("tiles", "water"), ("water", "mosaic"), ("mosaic", "out"))],
        "rationale": [{"block_id": "scene", "reason": "the clearest June scene"}],
    }  # fmt: skip
    fake.script = [json_reply(reading), text_reply("enough"), json_reply(spec)]
    env = agent_env(
        tmp_path,
        stac_core.address,
        GEMINI_API_KEY="test-key-stac",
        CONSTELLATION_AGENT_GEMINI_BASE_URL=fake.base_url,
        CONSTELLATION_AGENT_GEMINI_ATTEMPTS="1",
    )
    agent = start_agent(env)
    try:
        answer = plan(agent.stub, "water in the clearest June 2024 scene", planner=agent_pb2.PLANNER_GEMINI)
    finally:
        agent.stop()
        fake.stop()
    assert answer.recommendation.datasets[0].id == stac_core.ids[JUNE_CLEAREST]
    assert scene_block(answer.spec).dataset.dataset_id == stac_core.ids[JUNE_CLEAREST]
    shortlist = json.dumps(fake.requests[1].body)
    assert "1 scene(s) 2024-06-19..2024-06-19, least cloud 5%" in shortlist
    schema = fake.requests[0].body["generationConfig"]["responseSchema"]["properties"]
    assert {"start_date", "end_date", "least_cloudy"} <= set(schema)
