"""The offline planner through the real agent server and a real core: accuracy on the labelled prompts,
valid specs, impossible requests answered with alternatives, pins, bad input and a missing core."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agent_svc import catalog_client
from constellation.agent.v1 import agent_pb2
from constellation.common.v1 import common_pb2
from constellation.core.v1 import core_pb2
from mesh.errors import field_violations
from tests.agent_fixtures import DATA, RunningAgent, agent_env, catalog_core, plan, recommend, start_agent  # noqa: F401 - fixtures, pytest passes them by name
from tests.conftest import rpc_error

PROMPTS = yaml.safe_load((DATA / "agent_prompts.yaml").read_text())["prompts"]
HOLDOUT = yaml.safe_load((DATA / "agent_prompts_holdout.yaml").read_text())["prompts"]
TASK_ENUM = {"segmentation": common_pb2.MODEL_TASK_SEGMENTATION, "detection": common_pb2.MODEL_TASK_DETECTION}
# Floors at or below the measured figures (printed by the test), so a regression fails the suite. The main
# set was labelled before the planner was written and then used while building it (first run: dataset
# 100%, model 92.5%); the held-out set was written afterwards and never tuned on (dataset 13/14, model
# 12/14, satisfied 15/16 on its first and only run), hence its lower floor.
FLOORS = {"agent_prompts.yaml": 0.9, "agent_prompts_holdout.yaml": 0.8}


@pytest.fixture(scope="module")
def agent(catalog_core, tmp_path_factory):
    running = start_agent(agent_env(tmp_path_factory.mktemp("agent"), catalog_core.address))
    yield running
    running.stop()


def constraints_of(entry: dict) -> agent_pb2.Constraints:
    raw = entry.get("constraints") or {}
    c = agent_pb2.Constraints(
        sensors=raw.get("sensors", []),
        bands=raw.get("bands", []),
        max_resolution_m=raw.get("max_resolution_m", 0),
        max_latency_ms=raw.get("max_latency_ms", 0),
        min_accuracy=raw.get("min_accuracy", 0),
    )
    if "task" in raw:
        c.task = TASK_ENUM[raw["task"]]
    if "region" in raw:
        c.region.CopyFrom(
            common_pb2.BoundingBox(
                min_x=raw["region"][0], min_y=raw["region"][1], max_x=raw["region"][2], max_y=raw["region"][3]
            )
        )
    return c


def as_list(value) -> list[str]:
    return [] if value is None else [value] if isinstance(value, str) else list(value)


@pytest.mark.parametrize("name, prompts", [("agent_prompts.yaml", PROMPTS), ("agent_prompts_holdout.yaml", HOLDOUT)])
def test_labelled_prompts_rank_the_right_dataset_and_model_first_and_every_plan_validates(
    agent: RunningAgent, catalog_core, name: str, prompts: list[dict]
):
    assert len(PROMPTS) >= 30
    hits = {"dataset": [0, 0], "model": [0, 0], "satisfied": [0, 0]}
    misses: list[str] = []
    plans = 0
    for entry in prompts:
        answer = recommend(agent.stub, entry["prompt"], constraints=constraints_of(entry))
        assert answer.planner == agent_pb2.PLANNER_OFFLINE and answer.summary
        for kind, got in (("dataset", answer.datasets[0].name), ("model", answer.models[0].name)):
            wanted = as_list(entry.get(kind))
            if wanted:
                hits[kind][1] += 1
                hits[kind][0] += got in wanted
                if got not in wanted:
                    misses.append(f"{kind}: {entry['prompt'][:60]!r} -> {got}, labelled {wanted}")
        wanted_satisfied = entry.get("satisfied", True)
        hits["satisfied"][1] += 1
        hits["satisfied"][0] += answer.satisfied == wanted_satisfied
        if answer.satisfied != wanted_satisfied:
            misses.append(f"satisfied: {entry['prompt'][:60]!r} -> {answer.satisfied}")
        for candidate in [*answer.datasets, *answer.models]:
            assert 0 <= candidate.score <= 1 and candidate.reasons
        scores = [c.score for c in answer.datasets]
        assert scores == sorted(scores, reverse=True)

        # Every prompt the catalog can serve gets a plan, and core's own ValidatePipeline accepts it.
        if wanted_satisfied:
            planned = plan(agent.stub, entry["prompt"], constraints=constraints_of(entry))
            check = catalog_core.stub.ValidatePipeline(core_pb2.ValidatePipelineRequest(spec=planned.spec))
            assert check.valid, (entry["prompt"], list(check.problems))
            assert {r.block_id for r in planned.rationale} == {b.id for b in planned.spec.blocks}
            assert planned.spec.blocks[0].dataset.dataset_id == answer.datasets[0].id
            plans += 1

    rates = {k: hit / total for k, (hit, total) in hits.items()}
    print(
        f"\noffline planner on {len(prompts)} labelled prompts of {name}: top-1 dataset "
        f"{hits['dataset'][0]}/{hits['dataset'][1]} "
        f"({rates['dataset']:.1%}), top-1 model {hits['model'][0]}/{hits['model'][1]} ({rates['model']:.1%}), "
        f"satisfied flag {hits['satisfied'][0]}/{hits['satisfied'][1]} ({rates['satisfied']:.1%}); {plans} plans, "
        "all valid"
    )
    for miss in misses:
        print("  miss", miss)
    assert min(rates.values()) >= FLOORS[name], misses


def test_plan_explains_every_block_and_follows_the_model(agent: RunningAgent, catalog_core):
    answer = plan(agent.stub, "Map surface water in the Rhine delta as polygons")
    spec = answer.spec
    kinds = [b.WhichOneof("config") for b in spec.blocks]
    assert kinds == ["dataset", "tile", "model", "stitch", "vectorize", "export"]
    model = catalog_core.stub.GetModel(core_pb2.GetModelRequest(id=spec.blocks[2].model.model_id))
    assert list(spec.blocks[0].dataset.bands) == list(model.input.bands)
    assert spec.blocks[1].tile.tile_size_px == model.input.tile_size_px
    assert spec.blocks[1].tile.normalization == common_pb2.NORMALIZATION_REFLECTANCE
    assert common_pb2.EXPORT_FORMAT_GEOJSON in spec.blocks[5].export.formats
    assert spec.blocks[5].export.uri.startswith("file:///tmp/constellation-agent-test/")
    assert answer.recommendation.satisfied and answer.planner == agent_pb2.PLANNER_OFFLINE
    assert all(r.reason for r in answer.rationale)


def test_radar_plan_standardises_backscatter_and_raster_only_skips_vectors(agent: RunningAgent):
    answer = plan(agent.stub, "flood extent in Bangladesh from radar, raster only")
    blocks = {b.WhichOneof("config"): b for b in answer.spec.blocks}
    assert blocks["tile"].tile.normalization == common_pb2.NORMALIZATION_Z_SCORE
    assert "vectorize" not in blocks


def test_impossible_request_is_an_answer_with_nearest_alternatives(agent: RunningAgent):
    answer = recommend(agent.stub, "Detect ships near Tokyo")
    assert not answer.satisfied
    assert answer.datasets and answer.models
    assert all(any("Tokyo" in s for s in d.shortfalls) for d in answer.datasets)
    assert "Nothing in the catalog meets every constraint" in answer.summary


def test_structured_constraints_override_the_prompt(agent: RunningAgent, catalog_core):
    # The prompt names Sentinel-2; the structured constraint asks for Sentinel-1 and wins.
    answer = recommend(
        agent.stub, "flooding seen by Sentinel-2", constraints=agent_pb2.Constraints(sensors=["sentinel-1"])
    )
    assert answer.datasets[0].name.startswith("s1-") and "sensor sentinel-1, as asked" in answer.datasets[0].reasons
    slow = recommend(agent.stub, "building footprints in Seattle", constraints=agent_pb2.Constraints(max_latency_ms=40))
    assert slow.models[0].name == "building-yolo"
    assert any("over 40 ms" in s for m in slow.models[1:] for s in m.shortfalls)


def test_pinned_dataset_and_model_are_used(agent: RunningAgent, catalog_core):
    ids = catalog_core.ids
    answer = plan(agent.stub, "water", dataset_id=ids["l8-lake-victoria-2023"], model_id=ids["unet-water"])
    assert answer.spec.blocks[0].dataset.dataset_id == ids["l8-lake-victoria-2023"]
    assert answer.spec.blocks[2].model.model_id == ids["unet-water"]
    missing = rpc_error(plan, agent.stub, "water", dataset_id="ds_missing")
    assert missing.code() == grpc.StatusCode.NOT_FOUND and "ds_missing" in missing.details()
    clash = rpc_error(
        plan, agent.stub, "water", dataset_id=ids["s1-bangladesh-floods-2024"], model_id=ids["ndwi-water"]
    )
    assert clash.code() == grpc.StatusCode.FAILED_PRECONDITION and "lacks green, nir" in clash.details()


@pytest.mark.parametrize(
    "prompt, problem", [("", "is required"), ("   ", "is required"), ("x" * 4001, "4001 characters")]
)
def test_empty_or_over_long_prompt_is_invalid_argument(agent: RunningAgent, prompt: str, problem: str):
    for call in (recommend, plan):
        error = rpc_error(call, agent.stub, prompt)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        [violation] = field_violations(error)
        assert violation.field == "prompt" and problem in violation.description


def test_prompt_of_exactly_4000_characters_is_accepted(agent: RunningAgent):
    prompt = ("map surface water in the Rhine delta " * 200)[:4000]
    assert recommend(agent.stub, prompt).datasets


def test_bad_constraints_are_invalid_argument_with_field_violations(agent: RunningAgent):
    bad = agent_pb2.Constraints(
        min_accuracy=1.5, max_latency_ms=-1, region=common_pb2.BoundingBox(min_x=10, min_y=0, max_x=5, max_y=1)
    )
    error = rpc_error(recommend, agent.stub, "water", constraints=bad, max_results=500)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = {v.field for v in field_violations(error)}
    assert fields == {"constraints.min_accuracy", "constraints.max_latency_ms", "constraints.region", "max_results"}


def test_gemini_requested_without_a_key_is_failed_precondition(agent: RunningAgent):
    for call in (recommend, plan):
        error = rpc_error(call, agent.stub, "map water", planner=agent_pb2.PLANNER_GEMINI)
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "GEMINI_API_KEY" in error.details()


def test_unspecified_planner_without_a_key_is_offline(agent: RunningAgent):
    assert recommend(agent.stub, "map water").planner == agent_pb2.PLANNER_OFFLINE


def test_max_results_limits_each_list(agent: RunningAgent):
    answer = recommend(agent.stub, "water", max_results=2)
    assert len(answer.datasets) == 2 and len(answer.models) == 2
    assert len(recommend(agent.stub, "water").datasets) == 5


def test_catalog_is_read_page_by_page(agent: RunningAgent, monkeypatch):
    monkeypatch.setattr(catalog_client, "PAGE_SIZE", 4)
    answer = recommend(agent.stub, "glacier ice in Greenland", max_results=50)
    assert len(answer.datasets) == 25 and len(answer.models) == 21
    assert answer.datasets[0].name == "l8-greenland-west-2022"


def test_empty_catalog_says_so_and_cannot_plan(tmp_path):
    from core_svc.server import build as build_core
    from mesh import config
    from tests.conftest import service_env

    core = build_core(
        config.load("core", service_env(tmp_path / "core", DATABASE_URL=f"sqlite:///{tmp_path / 'core.db'}"))
    )
    core.start()
    agent = start_agent(agent_env(tmp_path, f"127.0.0.1:{core.port}"))
    try:
        answer = recommend(agent.stub, "map water")
        assert not answer.satisfied and not answer.datasets and "no datasets" in answer.summary
        error = rpc_error(plan, agent.stub, "map water")
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "register some in core" in error.details()
    finally:
        agent.stop()
        core.stop(0)


def test_core_down_is_unavailable_and_health_not_serving(tmp_path):
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    agent = start_agent(agent_env(tmp_path, f"127.0.0.1:{port}", CONSTELLATION_AGENT_CORE_TIMEOUT_S="2"))
    try:
        error = rpc_error(recommend, agent.stub, "map water")
        assert error.code() == grpc.StatusCode.UNAVAILABLE and f"127.0.0.1:{port}" in error.details()
        health = health_pb2_grpc.HealthStub(agent.channel).Check(health_pb2.HealthCheckRequest(service=""))
        assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        agent.stop()


def test_health_is_serving_when_core_answers(agent: RunningAgent):
    health = health_pb2_grpc.HealthStub(agent.channel).Check(
        health_pb2.HealthCheckRequest(service="constellation.agent.v1.AgentService")
    )
    assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_labelled_set_is_not_the_parser(tmp_path):
    """Guard for honesty: the labelled prompts and catalog live in data files, not in agent_svc."""
    source = "".join(p.read_text() for p in Path("agent_svc").rglob("*.py"))
    for entry in PROMPTS + HOLDOUT:
        assert entry["prompt"] not in source
