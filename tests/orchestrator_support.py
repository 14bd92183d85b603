"""Real servers for the orchestrator's tests: an S3-compatible server (moto in server mode, a subprocess),
KServe V2 model endpoints (model_runtime subprocesses) that can be killed and restarted on the same port,
and the orchestrator itself (in-process, port 0) on a Dagster instance in a temp dir (SQLite or PostgreSQL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import requests

from constellation.common.v1 import common_pb2 as c
from constellation.orchestrator.v1 import orchestrator_pb2 as pb
from constellation.orchestrator.v1 import orchestrator_pb2_grpc as pb_grpc
from inference import grpc_predict_v2_pb2 as v2
from inference import grpc_predict_v2_pb2_grpc as v2_grpc
from mesh import config
from mesh.services import insecure_channel, with_api_key
from orchestrator_svc.server import build
from tests.conftest import TEST_AUTH, TEST_STORAGE_ROOTS
from tests.orchestrator_scenes import BANDS, write_scene
from tests.pg import create_database_with_password, free_port

ROOT = Path(__file__).resolve().parent.parent
NDWI_DIR = ROOT / "examples" / "models" / "ndwi-water"
TERMINAL = {c.RUN_STATE_SUCCEEDED, c.RUN_STATE_FAILED, c.RUN_STATE_CANCELED}


# --------------------------------------------------------------------------- S3 (moto server)


class S3Server:
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(workdir / "moto.log", "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(self.url, timeout=1)
                break
            except requests.RequestException:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"moto server did not start: {(workdir / 'moto.log').read_text()[-2000:]}"
                    ) from None
                time.sleep(0.1)

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        self.log.close()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    """moto's S3 on 127.0.0.1; the AWS_* variables point boto3 (here and in run workers) at it."""
    server = S3Server(tmp_path_factory.mktemp("moto"))
    saved = {
        k: os.environ.get(k)
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL")
    }
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=server.url,
    )
    try:
        yield server
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


# --------------------------------------------------------------------------- model endpoints


def slow_model_dir(folder: Path, delay_s: float) -> Path:
    """The NDWI sample model, `delay_s` slower per predict() call, in its own folder (same name and I/O)."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest = (
        (NDWI_DIR / "constellation.yaml")
        .read_text()
        .replace("entrypoint: model:NdwiWater", "entrypoint: slow_model:SlowNdwiWater")
    )
    manifest = "\n".join(line for line in manifest.splitlines() if not line.startswith("example_input"))
    (folder / "constellation.yaml").write_text(manifest + "\n")
    (folder / "slow_model.py").write_text(
        textwrap.dedent(
            f"""
            import importlib.util
            import time

            spec = importlib.util.spec_from_file_location("ndwi_sample", {str(NDWI_DIR / "model.py")!r})
            sample = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(sample)


            class SlowNdwiWater(sample.NdwiWater):
                def predict(self, batch):
                    time.sleep({delay_s})
                    return super().predict(batch)
            """
        )
    )
    return folder


class ModelEndpoint:
    """`python -m model_runtime` serving a model folder on a fixed port, so it can die and come back there.
    The one place tests start endpoints: switch the command here to use another V2 server."""

    def __init__(self, model_dir: Path, workdir: Path) -> None:
        self.model_dir, self.workdir = model_dir, workdir
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> ModelEndpoint:
        self.starts += 1
        log = open(self.workdir / f"endpoint-{self.port}-{self.starts}.log", "wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "model_runtime",
                "--model-dir",
                str(self.model_dir),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        log.close()
        channel = grpc.insecure_channel(self.address)
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        deadline = time.monotonic() + 30
        try:
            while True:
                try:
                    if stub.ModelReady(v2.ModelReadyRequest(name="ndwi-water"), timeout=1).ready:
                        return self
                except grpc.RpcError:
                    pass
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"model endpoint did not start (exit {self.process.poll()})")
                time.sleep(0.05)
        finally:
            channel.close()

    def kill(self) -> None:
        """Dies at once, mid-request (SIGKILL)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture(scope="module")
def ndwi_endpoint(tmp_path_factory) -> Iterator[ModelEndpoint]:
    endpoint = ModelEndpoint(NDWI_DIR, tmp_path_factory.mktemp("endpoint")).start()
    yield endpoint
    endpoint.stop()


@pytest.fixture
def slow_endpoint(tmp_path) -> Iterator[ModelEndpoint]:
    """NDWI at 0.4 s per request: slow enough to act on a run mid-step (9 tiles one at a time: ~3.6 s)."""
    endpoint = ModelEndpoint(slow_model_dir(tmp_path / "slow-ndwi", 0.4), tmp_path).start()
    yield endpoint
    endpoint.stop()


# --------------------------------------------------------------------------- the orchestrator


def orchestrator_env(home: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, **TEST_STORAGE_ROOTS, **TEST_AUTH}
    env.update(
        {
            "CONSTELLATION_HOME": str(home),
            "CONSTELLATION_ORCHESTRATOR_PORT": "0",
            "CONSTELLATION_ORCHESTRATOR_METRICS_PORT": "0",
            "CONSTELLATION_HEALTH_INTERVAL_S": "0.5",
            "CONSTELLATION_SHUTDOWN_GRACE_S": "1",
            "CONSTELLATION_LOG_LEVEL": "WARNING",
            "CONSTELLATION_ORCHESTRATOR_MODEL_RETRY_DELAY_S": "0.3",
            # a model step waits this long for an endpoint that stopped answering before its step is retried
            "CONSTELLATION_ORCHESTRATOR_INFER_WAIT_S": "2",
            "CONSTELLATION_ORCHESTRATOR_CANCEL_GRACE_S": "10",
        }
    )
    env.update(extra)
    return env


class Orchestrator:
    """An orchestrator server in this process and a stub talking to it;
    `restart()` builds a new server on the same instance."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.server = None
        self.channel = None
        self.stub: pb_grpc.OrchestratorServiceStub
        self.start()

    def start(self) -> None:
        settings = config.load("orchestrator", self.env)
        self.server = build(settings, self.env)
        port = self.server.start()
        # The tests stand in for core, the orchestrator's caller: they present the mesh's service key.
        self.channel = with_api_key(insecure_channel(f"127.0.0.1:{port}"), settings.service_key)
        self.stub = pb_grpc.OrchestratorServiceStub(self.channel)

    def stop(self) -> None:
        if self.channel is not None:
            self.channel.close()
        if self.server is not None:
            self.server.stop(0)
        self.server = self.channel = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def wait(self, run_id: str, timeout_s: float = 90) -> pb.Run:
        deadline = time.monotonic() + timeout_s
        while True:
            run = self.stub.GetRun(pb.GetRunRequest(id=run_id))
            if run.state in TERMINAL:
                return run
            assert time.monotonic() < deadline, f"run {run_id} still {c.RunState.Name(run.state)} after {timeout_s}s"
            time.sleep(0.1)

    def events(self, run_id: str, after: int = 0, timeout_s: float = 90) -> list[c.RunEvent]:
        return list(self.stub.WatchRun(pb.WatchRunRequest(run_id=run_id, after_sequence=after), timeout=timeout_s))


@pytest.fixture(params=["sqlite", "postgresql"])
def dagster_storage(request) -> str:
    """ "" for SQLite under the temp home, else the URL of a fresh PostgreSQL database, with a password in it."""
    if request.param == "sqlite":
        return ""
    return create_database_with_password(request.getfixturevalue("postgres_admin_url"))


@pytest.fixture
def orchestrator(tmp_path, s3_server) -> Iterator[Orchestrator]:
    """On SQLite; tests that need both storages build their own from `dagster_storage`."""
    orch = Orchestrator(orchestrator_env(tmp_path / "home"))
    yield orch
    orch.stop()


# --------------------------------------------------------------------------- specs


def water_request(
    scene_uri: str,
    endpoint: str,
    export_uris: list[str],
    *,
    run_id: str = "",
    overlap_px: int = 32,
    batch_size: int = 4,
    max_concurrency: int = 2,
    blend: int = c.BLEND_MODE_MEAN,
    vector_crs: str = "EPSG:4326",
) -> pb.LaunchRunRequest:
    """dataset -> tile -> model -> stitch -> (vectorize) -> one export per URI, over the NDWI model."""
    blocks = [
        c.Block(
            id="scene", label="Ingest the scene", dataset=c.DatasetBlock(dataset_id="scene-1", bands=["green", "nir"])
        ),
        c.Block(
            id="tiles",
            tile=c.TileBlock(tile_size_px=256, overlap_px=overlap_px, normalization=c.NORMALIZATION_REFLECTANCE),
        ),
        c.Block(
            id="water", model=c.ModelBlock(model_id="ndwi", batch_size=batch_size, max_concurrency=max_concurrency)
        ),
        c.Block(id="mosaic", stitch=c.StitchBlock(blend=blend)),
        c.Block(
            id="polygons",
            vectorize=c.VectorizeBlock(threshold=0.5, simplify_tolerance_m=5, min_area_m2=0, crs=vector_crs),
        ),
    ]
    edges = [("scene", "tiles"), ("tiles", "water"), ("water", "mosaic"), ("mosaic", "polygons")]
    for i, uri in enumerate(export_uris):
        blocks.append(c.Block(id=f"out-{i}", export=c.ExportBlock(uri=uri)))
        edges += [("mosaic", f"out-{i}"), ("polygons", f"out-{i}")]
    return pb.LaunchRunRequest(
        run_id=run_id,
        spec=c.PipelineSpec(blocks=blocks, edges=[c.Edge(source_block_id=a, target_block_id=b) for a, b in edges]),
        datasets={"scene-1": pb.ResolvedDataset(uri=scene_uri, bands=BANDS)},
        models={
            "ndwi": pb.ResolvedModel(
                model_name="ndwi-water",
                model_version="1.0.0",
                endpoints=[endpoint],
                input=c.ModelInputSpec(
                    bands=["green", "nir"], tile_size_px=256, dtype="FP32", value_min=0, value_max=1
                ),
                outputs=[c.ModelOutputSpec(name="water_probability", dtype="FP32", shape=[1, 256, 256])],
                task=c.MODEL_TASK_SEGMENTATION,
                source="/srv/models/ndwi-water",
            )
        },
    )


@pytest.fixture(scope="session")
def scene_512(tmp_path_factory) -> Path:
    """A 512x512, 4-band uint16 GeoTIFF in EPSG:32725 with water and land."""
    return write_scene(tmp_path_factory.mktemp("scenes") / "scene-512.tif", 512)
