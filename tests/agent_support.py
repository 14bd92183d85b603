"""A core holding the labelled catalog and an agent server reading it."""

from __future__ import annotations

from pathlib import Path

import yaml

from agent_svc.server import build as build_agent
from constellation.agent.v1 import agent_pb2_grpc
from constellation.common.v1 import common_pb2
from constellation.core.v1 import core_pb2, core_pb2_grpc
from core_svc.server import build as build_core
from mesh import config
from mesh.services import insecure_channel

DATA = Path(__file__).resolve().parent / "data"


def load_catalog(core: core_pb2_grpc.CoreServiceStub, path: Path = DATA / "agent_catalog.yaml") -> dict[str, str]:
    """Register a catalog file (tests/data/agent_catalog.yaml by default); returns name -> id."""
    catalog = yaml.safe_load(path.read_text())
    ids = {}
    for d in catalog["datasets"]:
        bbox = common_pb2.BoundingBox(min_x=d["bbox"][0], min_y=d["bbox"][1], max_x=d["bbox"][2], max_y=d["bbox"][3], crs="EPSG:4326") if d.get("bbox") else None
        created = core.CreateDataset(core_pb2.CreateDatasetRequest(dataset=core_pb2.Dataset(
            name=d["name"], description=d.get("description", ""), uri=f"s3://scenes/{d['name']}.tif", sensor=d["sensor"],
            bands=d["bands"], resolution_m=d["resolution_m"], bbox=bbox, tags=d.get("tags", []))))
        ids[d["name"]] = created.id
    for m in catalog["models"]:
        created = core.RegisterModel(core_pb2.RegisterModelRequest(model=core_pb2.Model(
            name=m["name"], version="1.0.0", task=common_pb2.ModelTask.Value(f"MODEL_TASK_{m['task'].upper()}"),
            source=f"/srv/models/{m['name']}", tags=m.get("tags", []),
            card=common_pb2.ModelCard(description=m.get("description", ""), metrics=m.get("metrics", {})),
            input=common_pb2.ModelInputSpec(bands=m["bands"], tile_size_px=m["tile_size_px"], dtype="FP32", value_min=0, value_max=1),
            outputs=[common_pb2.ModelOutputSpec(name="out", dtype="FP32", shape=[1, m["tile_size_px"], m["tile_size_px"]])])))
        ids[m["name"]] = created.id
    return ids


class Mesh:
    """core (SQLite) + agent, in-process on free ports."""

    def __init__(self, home: Path, **agent_env: str) -> None:
        env = {"CONSTELLATION_HOME": str(home), "CONSTELLATION_CORE_PORT": "0", "CONSTELLATION_CORE_METRICS_PORT": "0",
               "DATABASE_URL": f"sqlite:///{home / 'core.db'}"}
        self.core_server = build_core(config.load("core", env))
        core_port = self.core_server.start()
        self.core_channel = insecure_channel(f"127.0.0.1:{core_port}")
        self.core = core_pb2_grpc.CoreServiceStub(self.core_channel)
        agent_env = {**env, "CONSTELLATION_AGENT_PORT": "0", "CONSTELLATION_AGENT_METRICS_PORT": "0",
                     "CONSTELLATION_CORE_ADDR": f"127.0.0.1:{core_port}", **agent_env}
        self.agent_server = build_agent(config.load("agent", agent_env), agent_env)
        agent_port = self.agent_server.start()
        self.agent_channel = insecure_channel(f"127.0.0.1:{agent_port}")
        self.agent = agent_pb2_grpc.AgentServiceStub(self.agent_channel)

    def close(self) -> None:
        self.agent_channel.close()
        self.core_channel.close()
        self.agent_server.stop(0)
        self.core_server.stop(0)
