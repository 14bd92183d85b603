"""Shared pieces for hosting tests: the Docker engine, the base image, a hosting server, waiting on streams."""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

import docker
import grpc
import pytest

from constellation.hosting.v1 import hosting_pb2, hosting_pb2_grpc
from hosting_svc.server import build
from mesh import config
from tests.conftest import TEST_AUTH, key_channel

ROOT = Path(__file__).resolve().parent.parent
NDWI = ROOT / "examples" / "models" / "ndwi-water"
# model sources hosting accepts in tests: the examples and pytest's temporary folders
MODEL_ROOTS = f"{ROOT / 'examples' / 'models'},{tempfile.gettempdir()}"
STATE = hosting_pb2.DeploymentState


def require_docker() -> docker.DockerClient:
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as error:
        pytest.fail(f"these tests need a running Docker engine (.ci/run starts dockerd): {error}")
    result = subprocess.run([str(ROOT / "scripts" / "make_base_image.sh")], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    return client


class HostingUnderTest:
    def __init__(self, home: Path, **env: str) -> None:
        self.env = {
            "CONSTELLATION_HOME": str(home),
            "CONSTELLATION_HOSTING_PORT": "0",
            "CONSTELLATION_HOSTING_METRICS_PORT": "0",
            "CONSTELLATION_HOSTING_READY_TIMEOUT_S": "10",
            "CONSTELLATION_HOSTING_MODEL_ROOTS": MODEL_ROOTS,
            **TEST_AUTH,
            **env,
        }
        self.server, self.hosting = build(config.load("hosting", self.env), self.env)
        self.hosting.settings = type(self.hosting.settings)(
            **{**self.hosting.settings.__dict__, "monitor_interval_s": 0.3}
        )
        port = self.server.start()
        self.channel = key_channel(f"127.0.0.1:{port}")
        self.stub = hosting_pb2_grpc.HostingServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()
        self.hosting.close()
        self.server.stop(0)

    def package(self, folder: Path = NDWI, name: str = "ndwi-water", version: str = "1.0.0") -> hosting_pb2.ModelStatus:
        return self.stub.PackageModel(
            hosting_pb2.PackageModelRequest(model_name=name, model_version=version, local_path=str(folder))
        )

    def wait_for(
        self, model_id: str, *states: int, after: int = 0, timeout_s: float = 300
    ) -> list[hosting_pb2.DeploymentEvent]:
        """Events from `after` until one reaches any of `states`; fails on timeout."""
        seen = []
        deadline = time.monotonic() + timeout_s
        stream = self.stub.WatchDeployment(
            hosting_pb2.WatchDeploymentRequest(model_id=model_id, after_sequence=after), timeout=timeout_s
        )
        try:
            for event in stream:
                seen.append(event)
                if event.state in states and event.message:  # a state change, not a log line
                    return seen
                if time.monotonic() > deadline:
                    break
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
        finally:
            stream.cancel()
        pytest.fail(
            f"never reached {[STATE.Name(s) for s in states]}; saw "
            f"{[(STATE.Name(e.state), e.message) for e in seen if not e.log_line]}"
        )


def state_path(events: list[hosting_pb2.DeploymentEvent]) -> list[str]:
    """The distinct states in order (consecutive repeats, e.g. build log lines, collapsed)."""
    path: list[str] = []
    for event in events:
        name = STATE.Name(event.state).removeprefix("DEPLOYMENT_STATE_")
        if not path or path[-1] != name:
            path.append(name)
    return path
