"""The Gemini planner with the real google-genai SDK against a local HTTP server speaking generateContent."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest

from constellation.agent.v1 import agent_pb2
from constellation.core.v1 import core_pb2
from tests.agent_support import Mesh, load_catalog
from tests.conftest import rpc_error

API_KEY = "test-gemini-key-do-not-log-4711"
Reply = Callable[[dict], tuple[int, dict]]


def text(payload: object) -> tuple[int, dict]:
    body = payload if isinstance(payload, str) else json.dumps(payload)
    return 200, {"candidates": [{"content": {"role": "model", "parts": [{"text": body}]}, "finishReason": "STOP", "index": 0}]}


def function_call(name: str, **args: object) -> tuple[int, dict]:
    return 200, {"candidates": [{"content": {"role": "model", "parts": [{"functionCall": {"name": name, "args": args}}]}, "finishReason": "STOP", "index": 0}]}


def error(code: int, status: str) -> tuple[int, dict]:
    return code, {"error": {"code": code, "message": f"simulated {status}", "status": status}}


def function_results(request: dict) -> dict:
    """What the agent sent back for the tool calls, by function name."""
    found = {}
    for content in request["contents"]:
        for part in content.get("parts", []):
            if "functionResponse" in part:
                found[part["functionResponse"]["name"]] = part["functionResponse"]["response"]
    return found


class FakeGemini:
    """A real HTTP server on 127.0.0.1 answering POST /v1beta/models/{model}:generateContent from a script."""

    def __init__(self) -> None:
        self.script: list[Reply] = []
        self.requests: list[dict] = []
        self.paths: list[str] = []
        self.headers: list[dict] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append(body)
                fake.paths.append(self.path)
                fake.headers.append(dict(self.headers))
                status, reply = fake.script.pop(0)(body) if fake.script else error(500, "INTERNAL")
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture(scope="module")
def gemini():
    fake = FakeGemini()
    yield fake
    fake.close()


@pytest.fixture(scope="module")
def mesh(gemini, tmp_path_factory):
    under_test = Mesh(
        tmp_path_factory.mktemp("agent-gemini"),
        GEMINI_API_KEY=API_KEY,
        CONSTELLATION_GEMINI_BASE_URL=gemini.url,
        CONSTELLATION_GEMINI_MODEL="gemini-test",
        CONSTELLATION_GEMINI_BACKOFF_S="0.01",
        CONSTELLATION_GEMINI_ATTEMPTS="3",
    )
    under_test.ids = load_catalog(under_test.core)  # type: ignore[attr-defined]
    yield under_test
    under_test.close()


@pytest.fixture(autouse=True)
def fresh(gemini):
    gemini.script.clear()
    gemini.requests.clear()
    yield


def choose_from_tools(dataset: str, model: str) -> Reply:
    """The final answer, picking ids out of what the tools returned (so they came from core)."""

    def reply(request: dict) -> tuple[int, dict]:
        results = function_results(request)
        dataset_id = next(d["id"] for d in results["find_datasets"]["datasets"] if d["name"] == dataset)
        model_id = next(m["id"] for m in results["find_models"]["models"] if m["name"] == model)
        return text({"dataset_id": dataset_id, "model_id": model_id, "tile_size_px": 256, "overlap_px": 16, "vectorize": True,
                     "rationale": [{"block_id": "scene", "reason": "covers Olinda"}, {"block_id": "model", "reason": "NDWI water"}]})

    return reply


def plan(mesh, prompt: str = "map surface water in the Olinda scene") -> agent_pb2.PlanPipelineResponse:  # type: ignore[no-untyped-def]
    return mesh.agent.PlanPipeline(agent_pb2.PlanPipelineRequest(prompt=prompt, planner=agent_pb2.PLANNER_GEMINI))


def test_a_plan_through_function_calls_that_reach_core(mesh, gemini, caplog):
    caplog.set_level(logging.DEBUG)
    gemini.script += [
        lambda r: function_call("find_datasets", text="olinda"),
        lambda r: function_call("find_models", task="segmentation"),
        choose_from_tools("olinda-landsat7", "ndwi-water"),
    ]
    answer = plan(mesh)
    assert answer.planner == agent_pb2.PLANNER_GEMINI
    assert answer.spec.blocks[0].dataset.dataset_id == mesh.ids["olinda-landsat7"]
    assert answer.spec.blocks[2].model.model_id == mesh.ids["ndwi-water"]
    assert mesh.core.ValidatePipeline(core_pb2.ValidatePipelineRequest(spec=answer.spec)).valid
    assert ("scene", "covers Olinda") in [(r.block_id, r.reason) for r in answer.rationale]
    # The SDK really spoke the API: path, key header, tools, structured output.
    assert gemini.paths[0] == "/v1beta/models/gemini-test:generateContent"
    assert gemini.headers[0].get("x-goog-api-key") == API_KEY
    first = gemini.requests[0]
    assert {f["name"] for f in first["tools"][0]["functionDeclarations"]} == {"find_datasets", "find_models"}
    assert first["generationConfig"]["responseMimeType"] == "application/json" and "responseSchema" in first["generationConfig"]
    found = function_results(gemini.requests[1])["find_datasets"]["datasets"]
    assert [d["name"] for d in found] == ["olinda-landsat7"]
    assert API_KEY not in " ".join(r.getMessage() for r in caplog.records) and API_KEY not in str(answer)


def test_malformed_json_and_made_up_ids_are_repaired(mesh, gemini):
    gemini.script += [
        lambda r: function_call("find_datasets", text="olinda"),
        lambda r: function_call("find_models", task="segmentation"),
        lambda r: text("{\"dataset_id\": \"ds_1\", \"model_id\": "),  # cut off
        lambda r: text({"dataset_id": "ds_invented", "model_id": "mdl_invented", "rationale": []}),
        choose_from_tools("olinda-landsat7", "ndwi-water"),
    ]
    answer = plan(mesh)
    assert answer.spec.blocks[0].dataset.dataset_id == mesh.ids["olinda-landsat7"]
    repairs = [c["parts"][0].get("text", "") for r in gemini.requests for c in r["contents"][-1:] if c["role"] == "user"]
    assert any("not JSON in the schema" in t for t in repairs)
    assert any("unknown id(s) ds_invented, mdl_invented" in t for t in repairs)


def test_repairs_are_bounded(mesh, gemini):
    gemini.script += [lambda r: text("not json")] * 3
    failed = rpc_error(plan, mesh)
    assert failed.code() == grpc.StatusCode.UNAVAILABLE and "after 2 repair(s)" in failed.details()
    assert len(gemini.requests) == 3


def test_429_and_500_are_retried(mesh, gemini):
    gemini.script += [
        lambda r: error(429, "RESOURCE_EXHAUSTED"),
        lambda r: error(500, "INTERNAL"),
        lambda r: function_call("find_datasets", text="olinda"),
        lambda r: function_call("find_models", task="segmentation"),
        choose_from_tools("olinda-landsat7", "ndwi-water"),
    ]
    assert plan(mesh).spec.blocks[0].dataset.dataset_id == mesh.ids["olinda-landsat7"]
    assert len(gemini.requests) == 5


def test_persistent_failure_is_unavailable(mesh, gemini):
    gemini.script += [lambda r: error(503, "UNAVAILABLE")] * 3
    failed = rpc_error(plan, mesh)
    assert failed.code() == grpc.StatusCode.UNAVAILABLE and "Gemini answered 503 after 3 attempt(s)" in failed.details()
    assert API_KEY not in failed.details()


def test_client_errors_are_not_retried(mesh, gemini):
    gemini.script += [lambda r: error(400, "INVALID_ARGUMENT")] * 3
    failed = rpc_error(plan, mesh)
    assert failed.code() == grpc.StatusCode.UNAVAILABLE and "400 after 1 attempt" in failed.details()
    assert len(gemini.requests) == 1


def test_with_a_key_the_default_planner_is_gemini_and_offline_can_still_be_asked_for(mesh, gemini):
    offline = mesh.agent.PlanPipeline(agent_pb2.PlanPipelineRequest(prompt="map surface water in the Olinda scene", planner=agent_pb2.PLANNER_OFFLINE))
    assert offline.planner == agent_pb2.PLANNER_OFFLINE and gemini.requests == []
