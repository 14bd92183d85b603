"""The offline planner against a labelled catalog and prompt set; bad input."""

from __future__ import annotations

import grpc
import pytest
import yaml

from constellation.agent.v1 import agent_pb2
from constellation.common.v1 import common_pb2
from constellation.core.v1 import core_pb2
from mesh.errors import field_violations
from tests.agent_support import DATA, Mesh, load_catalog
from tests.conftest import rpc_error

PROMPTS = yaml.safe_load((DATA / "agent_prompts.yaml").read_text())


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    under_test = Mesh(tmp_path_factory.mktemp("agent"))
    under_test.ids = load_catalog(under_test.core)  # type: ignore[attr-defined]
    yield under_test
    under_test.close()


def test_labelled_prompts_top1_accuracy_and_every_plan_validates(mesh, capsys):
    names = {v: k for k, v in mesh.ids.items()}
    dataset_hits = model_hits = possible = impossible_right = impossible = 0
    misses = []
    for case in PROMPTS:
        answer = mesh.agent.Recommend(agent_pb2.RecommendRequest(prompt=case["prompt"]))
        plan = mesh.agent.PlanPipeline(agent_pb2.PlanPipelineRequest(prompt=case["prompt"]))
        check = mesh.core.ValidatePipeline(core_pb2.ValidatePipelineRequest(spec=plan.spec))
        assert check.valid, (case["prompt"], [p.description for p in check.problems])
        assert plan.planner == agent_pb2.PLANNER_OFFLINE and plan.rationale
        if case.get("satisfied") is False:
            impossible += 1
            if not answer.satisfied:
                impossible_right += 1
                assert answer.datasets and answer.models, "an impossible ask still gets the nearest alternatives"
                assert any(c.shortfalls for c in [answer.datasets[0], answer.models[0]]), case["prompt"]
                assert "Nothing in the catalog meets every constraint" in answer.summary
            else:
                misses.append((case["prompt"], "said satisfied"))
            continue
        possible += 1
        top_dataset, top_model = names[answer.datasets[0].id], names[answer.models[0].id]
        dataset_hits += top_dataset == case["dataset"]
        model_hits += top_model == case["model"]
        if (top_dataset, top_model) != (case["dataset"], case["model"]):
            misses.append((case["prompt"], f"{top_dataset} + {top_model}"))
        planned = {b.WhichOneof("config"): b for b in plan.spec.blocks}
        assert names[planned["dataset"].dataset.dataset_id] == top_dataset and names[planned["model"].model.model_id] == top_model
    with capsys.disabled():
        print(
            f"\noffline planner on {len(PROMPTS)} labelled prompts: top-1 dataset {dataset_hits}/{possible} ({dataset_hits / possible:.0%}), "
            f"top-1 model {model_hits}/{possible} ({model_hits / possible:.0%}), impossible asks recognised {impossible_right}/{impossible}"
        )
        for prompt, got in misses:
            print(f"  miss: {prompt!r} -> {got}")
    assert len(PROMPTS) >= 30
    assert dataset_hits / possible >= 0.9 and model_hits / possible >= 0.9 and impossible_right == impossible


def test_recommend_explains_matches_and_shortfalls(mesh):
    answer = mesh.agent.Recommend(agent_pb2.RecommendRequest(prompt="map surface water in the Olinda scene", max_results=3))
    assert answer.satisfied and len(answer.datasets) == 3 and len(answer.models) == 3
    top = answer.datasets[0]
    assert top.name == "olinda-landsat7" and "covers Olinda" in top.reasons and 0 < top.score <= 1
    assert answer.models[0].name == "ndwi-water" and "does segmentation" in answer.models[0].reasons
    assert any("does not cover Olinda" in s for c in answer.datasets[1:] for s in c.shortfalls)
    assert answer.datasets[0].score >= answer.datasets[1].score


def test_structured_constraints_override_the_prompt(mesh):
    constraints = agent_pb2.Constraints(sensors=["sentinel-2"], task=common_pb2.MODEL_TASK_SEGMENTATION, max_resolution_m=10)
    answer = mesh.agent.Recommend(agent_pb2.RecommendRequest(prompt="map surface water in the Olinda scene", constraints=constraints))
    assert not answer.satisfied  # Olinda is Landsat 7 at 28.5 m: nothing fits both
    assert any("not sentinel-2" in s for c in answer.datasets for s in c.shortfalls)


def test_pins_are_honoured_and_checked(mesh):
    plan = mesh.agent.PlanPipeline(agent_pb2.PlanPipelineRequest(prompt="map water", dataset_id=mesh.ids["planet-venice"]))
    assert plan.spec.blocks[0].dataset.dataset_id == mesh.ids["planet-venice"]
    assert ("scene", "pinned by the request") in [(r.block_id, r.reason) for r in plan.rationale]
    unknown = rpc_error(mesh.agent.PlanPipeline, agent_pb2.PlanPipelineRequest(prompt="map water", model_id="mdl_nope"))
    assert unknown.code() == grpc.StatusCode.INVALID_ARGUMENT and [v.field for v in field_violations(unknown)] == ["model_id"]
    clash = rpc_error(mesh.agent.PlanPipeline, agent_pb2.PlanPipelineRequest(prompt="x", dataset_id=mesh.ids["s1-rotterdam-port"], model_id=mesh.ids["ndwi-water"]))
    assert clash.code() == grpc.StatusCode.FAILED_PRECONDITION and "green, nir" in clash.details()


@pytest.mark.parametrize(("prompt", "words"), [("", "is empty"), ("   ", "is empty"), ("x" * 4001, "at most 4000")])
def test_bad_prompts_are_invalid_argument(mesh, prompt, words):
    for call, request in ((mesh.agent.Recommend, agent_pb2.RecommendRequest(prompt=prompt)), (mesh.agent.PlanPipeline, agent_pb2.PlanPipelineRequest(prompt=prompt))):
        error = rpc_error(call, request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and words in error.details()
        assert [v.field for v in field_violations(error)] == ["prompt"]


def test_gemini_without_a_key_says_what_to_set(mesh):
    error = rpc_error(mesh.agent.PlanPipeline, agent_pb2.PlanPipelineRequest(prompt="map water", planner=agent_pb2.PLANNER_GEMINI))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "GEMINI_API_KEY" in error.details()


@pytest.fixture(scope="module")
def independent(tmp_path_factory):
    under_test = Mesh(tmp_path_factory.mktemp("agent-independent"))
    under_test.ids = load_catalog(under_test.core, DATA / "independent" / "agent_catalog.yaml")  # type: ignore[attr-defined]
    yield under_test
    under_test.close()


def as_set(value) -> set[str]:  # type: ignore[no-untyped-def]
    return set(value) if isinstance(value, list) else {value}


def constraints_message(raw: dict) -> agent_pb2.Constraints:
    message = agent_pb2.Constraints(sensors=raw.get("sensors", []), bands=raw.get("bands", []),
                                    max_resolution_m=raw.get("max_resolution_m", 0), max_latency_ms=raw.get("max_latency_ms", 0),
                                    min_accuracy=raw.get("min_accuracy", 0))
    if raw.get("task"):
        message.task = common_pb2.ModelTask.Value(f"MODEL_TASK_{raw['task'].upper()}")
    if raw.get("region"):
        x0, y0, x1, y1 = raw["region"]
        message.region.CopyFrom(common_pb2.BoundingBox(min_x=x0, min_y=y0, max_x=x1, max_y=y1, crs="EPSG:4326"))
    return message


@pytest.mark.parametrize(
    ("prompts", "floors"),
    [
        # 44 prompts another session wrote before any planner existed; two general
        # ranking changes were made after reading its misses.
        ("agent_prompts.yaml", (0.85, 0.85, 0.5)),
        # 16 more from that session, never used for tuning: the out-of-sample figure.
        ("agent_prompts_holdout.yaml", (0.75, 0.55, 0.5)),
    ],
)
def test_independent_labelled_set(independent, capsys, prompts, floors):
    cases = yaml.safe_load((DATA / "independent" / prompts).read_text())["prompts"]
    names = {v: k for k, v in independent.ids.items()}
    scores = {"dataset": [0, 0], "model": [0, 0], "impossible": [0, 0]}
    misses = []
    for case in cases:
        request = agent_pb2.RecommendRequest(prompt=case["prompt"], constraints=constraints_message(case.get("constraints") or {}))
        answer = independent.agent.Recommend(request)
        plan = independent.agent.PlanPipeline(agent_pb2.PlanPipelineRequest(prompt=case["prompt"], constraints=request.constraints))
        assert independent.core.ValidatePipeline(core_pb2.ValidatePipelineRequest(spec=plan.spec)).valid, case["prompt"]
        if case.get("satisfied") is False:
            scores["impossible"][1] += 1
            scores["impossible"][0] += not answer.satisfied
            if answer.satisfied:
                misses.append((case["prompt"], "said satisfied"))
            continue
        for kind, top in (("dataset", answer.datasets[0].id), ("model", answer.models[0].id)):
            if kind in case:
                scores[kind][1] += 1
                hit = names[top] in as_set(case[kind])
                scores[kind][0] += hit
                if not hit:
                    misses.append((case["prompt"], f"{kind} {names[top]}, labelled {sorted(as_set(case[kind]))}"))
    with capsys.disabled():
        print(f"\noffline planner on independent/{prompts}: " + ", ".join(f"{k} {h}/{n} ({h / n:.0%})" for k, (h, n) in scores.items()))
        for prompt, got in misses:
            print(f"  miss: {prompt[:80]!r} -> {got}")
    # Floors a little under today's figures: they catch regressions, they do not claim the target.
    for kind, floor in zip(("dataset", "model", "impossible"), floors, strict=True):
        assert scores[kind][0] / scores[kind][1] >= floor, (kind, scores[kind])
