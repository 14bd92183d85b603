"""Agent test support: a core filled from tests/data/agent_catalog.yaml, the agent server on port 0,
and a fake Gemini: a real HTTP server on 127.0.0.1 that speaks POST /v1beta/models/{model}:generateContent."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent_svc.server import build as build_agent
from constellation.agent.v1 import agent_pb2, agent_pb2_grpc
from constellation.common.v1 import common_pb2
from constellation.core.v1 import core_pb2, core_pb2_grpc
from core_svc.server import build as build_core
from mesh import config
from tests.conftest import key_channel, service_env

DATA = Path(__file__).parent / "data"
TASKS = {
    "classification": common_pb2.MODEL_TASK_CLASSIFICATION,
    "segmentation": common_pb2.MODEL_TASK_SEGMENTATION,
    "detection": common_pb2.MODEL_TASK_DETECTION,
    "regression": common_pb2.MODEL_TASK_REGRESSION,
}


def load_catalog(core: core_pb2_grpc.CoreServiceStub, path: Path = DATA / "agent_catalog.yaml") -> dict[str, str]:
    """Create every dataset and model of the YAML catalog in core; returns name -> id."""
    data = yaml.safe_load(path.read_text())
    ids: dict[str, str] = {}
    for d in data["datasets"]:
        box = common_pb2.BoundingBox(
            min_x=d["bbox"][0], min_y=d["bbox"][1], max_x=d["bbox"][2], max_y=d["bbox"][3], crs="EPSG:4326"
        )
        created = core.CreateDataset(
            core_pb2.CreateDatasetRequest(
                dataset=core_pb2.Dataset(
                    name=d["name"],
                    description=d["description"],
                    uri=d["uri"],
                    sensor=d["sensor"],
                    bands=d["bands"],
                    resolution_m=d["resolution_m"],
                    bbox=box,
                    tags=d["tags"],
                )
            )
        )
        ids[d["name"]] = created.id
    for m in data["models"]:
        tile = m["tile_size_px"]
        registered = core.RegisterModel(
            core_pb2.RegisterModelRequest(
                model=core_pb2.Model(
                    name=m["name"],
                    version="1.0.0",
                    task=TASKS[m["task"]],
                    source=f"/srv/models/{m['name']}",
                    card=common_pb2.ModelCard(
                        description=m["description"],
                        data_used=m["data_used"],
                        metrics=m["metrics"],
                        license="Apache-2.0",
                    ),
                    input=common_pb2.ModelInputSpec(
                        bands=m["bands"], tile_size_px=tile, dtype="FP32", value_min=0, value_max=1
                    ),
                    outputs=[common_pb2.ModelOutputSpec(name="prediction", dtype="FP32", shape=[1, tile, tile])],
                    tags=m["tags"],
                )
            )
        )
        ids[m["name"]] = registered.id
    return ids


@dataclass
class Core:
    server: Any
    stub: core_pb2_grpc.CoreServiceStub
    ids: dict[str, str]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"


@pytest.fixture(scope="module")
def catalog_core(tmp_path_factory) -> Iterator[Core]:
    """Core on SQLite holding the labelled catalog, shared by a test module (agent tests only read it)."""
    tmp = tmp_path_factory.mktemp("agent-core")
    server = build_core(config.load("core", service_env(tmp, DATABASE_URL=f"sqlite:///{tmp / 'core.db'}")))
    server.start()
    channel = key_channel(f"127.0.0.1:{server.port}")
    stub = core_pb2_grpc.CoreServiceStub(channel)
    yield Core(server, stub, load_catalog(stub))
    channel.close()
    server.stop(0)


def agent_env(tmp_path: Path, core_address: str, **extra: str) -> dict[str, str]:
    env = service_env(
        tmp_path,
        CONSTELLATION_AGENT_PORT="0",
        CONSTELLATION_AGENT_METRICS_PORT="0",
        CONSTELLATION_CORE_ADDR=core_address,
        CONSTELLATION_AGENT_CATALOG_TTL_S="0",
        CONSTELLATION_AGENT_EXPORT_URI="file:///tmp/constellation-agent-test",
    )
    env.update(extra)
    return env


@dataclass
class RunningAgent:
    server: Any
    stub: agent_pb2_grpc.AgentServiceStub
    channel: Any

    def stop(self) -> None:
        self.channel.close()
        self.server.stop(0)


def start_agent(env: dict[str, str]) -> RunningAgent:
    server = build_agent(config.load("agent", env), env)
    server.start()
    channel = key_channel(f"127.0.0.1:{server.port}")
    return RunningAgent(server, agent_pb2_grpc.AgentServiceStub(channel), channel)


# -- fake Gemini -------------------------------------------------------------

Reply = dict[str, Any] | tuple[int, dict[str, Any]]


def text_reply(text: str) -> Reply:
    return {
        "candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 10, "totalTokenCount": 20},
        "modelVersion": "fake-gemini",
    }


def json_reply(data: Any) -> Reply:
    return text_reply(json.dumps(data))


def call_reply(name: str, args: dict[str, Any]) -> Reply:
    return {
        "candidates": [
            {
                "content": {"role": "model", "parts": [{"functionCall": {"name": name, "args": args}}]},
                "finishReason": "STOP",
                "index": 0,
            }
        ],
        "modelVersion": "fake-gemini",
    }


def error_reply(code: int, status: str, message: str = "fake failure") -> Reply:
    return code, {"error": {"code": code, "message": message, "status": status}}


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def phase(self) -> str:
        """'reading', 'tools' or 'spec': which of the planner's calls this was."""
        config_ = self.body.get("generationConfig") or {}
        schema = config_.get("responseSchema") or {}
        if "blocks" in (schema.get("properties") or {}):
            return "spec"
        if self.body.get("tools"):
            return "tools"
        return "reading"

    def text(self) -> str:
        return json.dumps(self.body)


@dataclass
class FakeGemini:
    """Replies come from `script` in order, or from `responder(recorded)` when set; every request is recorded."""

    script: list[Reply] = field(default_factory=list)
    responder: Callable[[Recorded], Reply] | None = None
    requests: list[Recorded] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def reply(self, recorded: Recorded) -> Reply:
        if self.responder is not None:
            return self.responder(recorded)
        if not self.script:
            return error_reply(500, "INTERNAL", "the fake's script ran out")
        return self.script.pop(0)

    def start(self) -> FakeGemini:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server's name
                length = int(self.headers.get("content-length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                recorded = Recorded(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                fake.requests.append(recorded)
                if not self.path.endswith(":generateContent"):
                    reply: Reply = error_reply(404, "NOT_FOUND", f"no route {self.path}")
                else:
                    reply = fake.reply(recorded)
                status, payload = reply if isinstance(reply, tuple) else (200, reply)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-gemini", daemon=True
        ).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def phases(self) -> list[str]:
        return [r.phase for r in self.requests]


def recommend(stub: agent_pb2_grpc.AgentServiceStub, prompt: str, **kwargs: Any) -> agent_pb2.RecommendResponse:
    return stub.Recommend(agent_pb2.RecommendRequest(prompt=prompt, **kwargs), timeout=30)


def plan(stub: agent_pb2_grpc.AgentServiceStub, prompt: str, **kwargs: Any) -> agent_pb2.PlanPipelineResponse:
    return stub.PlanPipeline(agent_pb2.PlanPipelineRequest(prompt=prompt, **kwargs), timeout=30)
