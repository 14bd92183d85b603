"""The Gemini planner: the real google-genai SDK against a fake Gemini on 127.0.0.1 (no Google server is ever called).

Covers a normal plan, a function-calling round trip that reaches core, malformed JSON and an invalid spec
repaired through the loop, 429/500 retried, persistent failure -> UNAVAILABLE, a refused key, and that the key
never shows up in logs or answers.
"""

from __future__ import annotations

import logging

import grpc
import pytest

from constellation.agent.v1 import agent_pb2
from constellation.core.v1 import core_pb2
from tests.agent_fixtures import (  # noqa: F401 - fixtures, pytest passes them by name
    FakeGemini,
    RunningAgent,
    agent_env,
    call_reply,
    catalog_core,
    error_reply,
    json_reply,
    plan,
    recommend,
    start_agent,
    text_reply,
)
from tests.conftest import rpc_error

KEY = "test-key-3f9a1c7e5b2d4e6f"
MODEL = "gemini-test-model"
WATER_READING = {
    "task": "segmentation",
    "sensors": [],
    "bands": [],
    "place": "Lake Victoria",
    "bbox": {"min_x": 31.5, "min_y": -3.1, "max_x": 34.9, "max_y": 0.6},
    "max_resolution_m": 0,
    "max_latency_ms": 0,
    "min_accuracy": 0,
    "keywords": ["surface water", "lake"],
    "wants_vectors": True,
}


def water_spec(ids: dict[str, str], dataset: str = "l8-lake-victoria-2023", model: str = "ndwi-water") -> dict:
    """The spec as Gemini would return it in SPEC_SCHEMA's shape (block kinds, enum names without prefixes)."""
    return {
        "blocks": [
            {
                "id": "scene",
                "label": "Lake Victoria",
                "kind": "dataset",
                "dataset": {"dataset_id": ids[dataset], "bands": ["green", "nir"]},
            },
            {
                "id": "tiles",
                "kind": "tile",
                "tile": {"tile_size_px": 256, "overlap_px": 16, "normalization": "REFLECTANCE"},
            },
            {"id": "water", "kind": "model", "model": {"model_id": ids[model], "batch_size": 8}},
            {"id": "mosaic", "kind": "stitch", "stitch": {"blend": "MEAN"}},
            {"id": "polygons", "kind": "vectorize", "vectorize": {"threshold": 0.5, "simplify_tolerance_m": 30}},
            {
                "id": "out",
                "kind": "export",
                "export": {"uri": "file:///tmp/constellation-agent-test/water", "formats": ["COG", "GEOJSON"]},
            },
        ],
        "edges": [
            {"source_block_id": "scene", "target_block_id": "tiles"},
            {"source_block_id": "tiles", "target_block_id": "water"},
            {"source_block_id": "water", "target_block_id": "mosaic"},
            {"source_block_id": "mosaic", "target_block_id": "polygons"},
            {"source_block_id": "mosaic", "target_block_id": "out"},
            {"source_block_id": "polygons", "target_block_id": "out"},
        ],
        "rationale": [
            {"block_id": b, "reason": f"why {b}"} for b in ("scene", "tiles", "water", "mosaic", "polygons", "out")
        ],
    }


@pytest.fixture
def fake():
    server = FakeGemini().start()
    yield server
    server.stop()


@pytest.fixture
def gemini_agent(catalog_core, fake, tmp_path):
    env = agent_env(
        tmp_path,
        catalog_core.address,
        GEMINI_API_KEY=KEY,
        CONSTELLATION_AGENT_GEMINI_MODEL=MODEL,
        CONSTELLATION_AGENT_GEMINI_BASE_URL=fake.base_url,
        CONSTELLATION_AGENT_GEMINI_ATTEMPTS="3",
        CONSTELLATION_AGENT_GEMINI_BACKOFF_S="0.01",
        CONSTELLATION_AGENT_GEMINI_TIMEOUT_S="10",
        CONSTELLATION_AGENT_GEMINI_MAX_REPAIRS="2",
    )
    running = start_agent(env)
    yield running
    running.stop()


def test_normal_plan_uses_structured_output_and_returns_a_valid_spec(
    gemini_agent: RunningAgent, fake: FakeGemini, catalog_core
):
    fake.script = [
        json_reply(WATER_READING),
        text_reply("I have what I need."),
        json_reply(water_spec(catalog_core.ids)),
    ]
    answer = plan(gemini_agent.stub, "map the water of Lake Victoria", planner=agent_pb2.PLANNER_GEMINI)

    assert answer.planner == agent_pb2.PLANNER_GEMINI and answer.recommendation.planner == agent_pb2.PLANNER_GEMINI
    assert catalog_core.stub.ValidatePipeline(core_pb2.ValidatePipelineRequest(spec=answer.spec)).valid
    assert [b.id for b in answer.spec.blocks] == ["scene", "tiles", "water", "mosaic", "polygons", "out"]
    assert [r.reason for r in answer.rationale][0] == "why scene"
    assert answer.recommendation.datasets[0].name == "l8-lake-victoria-2023"

    assert fake.phases() == ["reading", "tools", "spec"]
    for request in fake.requests:
        assert request.path == f"/v1beta/models/{MODEL}:generateContent"
        assert request.headers["x-goog-api-key"] == KEY
    for request in (fake.requests[0], fake.requests[2]):
        generation = request.body["generationConfig"]
        assert generation["responseMimeType"] == "application/json" and generation["responseSchema"]["type"] == "OBJECT"
    declared = {f["name"] for f in fake.requests[1].body["tools"][0]["functionDeclarations"]}
    assert declared == {"search_datasets", "search_models", "get_dataset", "get_model"}


def test_function_calls_reach_core_and_their_answers_go_back(
    gemini_agent: RunningAgent, fake: FakeGemini, catalog_core
):
    lake = catalog_core.ids["l8-lake-victoria-2023"]
    fake.script = [
        json_reply(WATER_READING),
        call_reply("search_models", {"task": "segmentation", "tag": "water"}),
        call_reply("get_dataset", {"id": lake}),
        call_reply("get_model", {"id": "mdl_does_not_exist"}),
        text_reply("ndwi-water on the Landsat scene fits."),
        json_reply(water_spec(catalog_core.ids)),
    ]
    answer = plan(gemini_agent.stub, "map the water of Lake Victoria", planner=agent_pb2.PLANNER_GEMINI)
    assert answer.spec.blocks[2].model.model_id == catalog_core.ids["ndwi-water"]
    assert fake.phases() == ["reading", "tools", "tools", "tools", "tools", "spec"]

    def function_responses(request) -> list[dict]:
        return [p["functionResponse"] for c in request.body["contents"] for p in c["parts"] if "functionResponse" in p]

    first = function_responses(fake.requests[2])
    assert first[0]["name"] == "search_models"
    # core's ListModels with task = "segmentation" AND tag = "water": exactly the water segmentation models
    assert sorted(m["name"] for m in first[0]["response"]["models"]) == ["ndwi-water", "sar-flood-unet", "unet-water"]
    second = function_responses(fake.requests[3])[-1]
    assert (
        second["response"]["dataset"]["name"] == "l8-lake-victoria-2023"
        and second["response"]["dataset"]["sensor"] == "landsat-8"
    )
    third = function_responses(fake.requests[4])[-1]
    assert "NOT_FOUND" in third["response"]["error"]
    # the spec call carries the whole conversation, tool answers included
    assert len(function_responses(fake.requests[5])) == 3


def test_malformed_json_and_an_invalid_spec_are_repaired_through_the_loop(
    gemini_agent: RunningAgent, fake: FakeGemini, catalog_core
):
    broken = water_spec(catalog_core.ids)
    broken["blocks"][0]["dataset"]["dataset_id"] = "ds_made_up"
    fake.script = [
        text_reply('{"task": "segmentation", "keywords": ["water"'),  # reading cut off
        json_reply(WATER_READING),
        text_reply("done"),
        text_reply("```json\n{not json at all\n```"),
        json_reply(broken),
        json_reply(water_spec(catalog_core.ids)),
    ]
    answer = plan(gemini_agent.stub, "map the water of Lake Victoria", planner=agent_pb2.PLANNER_GEMINI)
    assert answer.spec.blocks[0].dataset.dataset_id == catalog_core.ids["l8-lake-victoria-2023"]
    assert fake.phases() == ["reading", "reading", "tools", "spec", "spec", "spec"]
    assert "not valid JSON" in fake.requests[1].text()
    assert "not valid JSON" in fake.requests[4].text()
    # core's own validation problem went back to the model
    assert "ValidatePipeline" in fake.requests[5].text() and "no dataset has id 'ds_made_up'" in fake.requests[5].text()


def test_repairs_run_out_as_failed_precondition(gemini_agent: RunningAgent, fake: FakeGemini):
    fake.responder = lambda request: (
        json_reply(WATER_READING)
        if request.phase == "reading"
        else (text_reply("no tools needed") if request.phase == "tools" else text_reply("{]"))
    )
    error = rpc_error(plan, gemini_agent.stub, "map water", planner=agent_pb2.PLANNER_GEMINI)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "after 2 repairs" in error.details()
    assert fake.phases().count("spec") == 3  # the first try and two repairs


def test_429_and_500_are_retried(gemini_agent: RunningAgent, fake: FakeGemini):
    fake.script = [error_reply(429, "RESOURCE_EXHAUSTED"), error_reply(500, "INTERNAL"), json_reply(WATER_READING)]
    answer = recommend(gemini_agent.stub, "map the water of Lake Victoria", planner=agent_pb2.PLANNER_GEMINI)
    assert answer.planner == agent_pb2.PLANNER_GEMINI and answer.satisfied
    assert answer.datasets[0].name == "l8-lake-victoria-2023"
    assert len(fake.requests) == 3


def test_persistent_failure_is_unavailable(gemini_agent: RunningAgent, fake: FakeGemini):
    fake.responder = lambda request: error_reply(503, "UNAVAILABLE", "overloaded")
    for call in (recommend, plan):
        fake.requests.clear()
        error = rpc_error(call, gemini_agent.stub, "map water", planner=agent_pb2.PLANNER_GEMINI)
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert "after 3 attempts" in error.details() and "503" in error.details()
        assert len(fake.requests) == 3


def test_a_refused_key_is_failed_precondition_without_retries_or_the_key(gemini_agent: RunningAgent, fake: FakeGemini):
    fake.responder = lambda request: error_reply(403, "PERMISSION_DENIED", f"API key {KEY} not valid")
    error = rpc_error(recommend, gemini_agent.stub, "map water", planner=agent_pb2.PLANNER_GEMINI)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "GEMINI_API_KEY" in error.details()
    assert KEY not in error.details() and len(fake.requests) == 1


def test_gemini_answers_when_no_planner_is_named_and_a_key_is_set(gemini_agent: RunningAgent, fake: FakeGemini):
    fake.script = [json_reply(WATER_READING)]
    answer = recommend(gemini_agent.stub, "map the water of Lake Victoria")
    assert answer.planner == agent_pb2.PLANNER_GEMINI and "read by Gemini" in answer.summary
    # the offline planner stays available by name
    assert (
        recommend(gemini_agent.stub, "map water", planner=agent_pb2.PLANNER_OFFLINE).planner
        == agent_pb2.PLANNER_OFFLINE
    )
    assert len(fake.requests) == 1


def test_the_key_never_reaches_logs_or_answers(gemini_agent: RunningAgent, fake: FakeGemini, catalog_core, caplog):
    caplog.set_level(logging.DEBUG)
    fake.script = [
        error_reply(429, "RESOURCE_EXHAUSTED", f"quota for key {KEY}"),
        json_reply(WATER_READING),
        call_reply("search_datasets", {"sensor": "landsat-8"}),
        text_reply("ok"),
        text_reply("{bad"),
        json_reply(water_spec(catalog_core.ids)),
    ]
    answer = plan(gemini_agent.stub, "map the water of Lake Victoria", planner=agent_pb2.PLANNER_GEMINI)
    fake.responder = lambda request: error_reply(500, "INTERNAL", f"boom {KEY}")
    error = rpc_error(recommend, gemini_agent.stub, "map water", planner=agent_pb2.PLANNER_GEMINI)
    assert KEY not in str(answer) and KEY not in error.details()
    assert caplog.records and KEY not in caplog.text
    assert all(KEY not in str(getattr(r, "__dict__", {})) for r in caplog.records)
