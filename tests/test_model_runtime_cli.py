"""`python -m model_runtime` as hosting runs it: a real process, its port, its exit codes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import grpc
import numpy as np
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients.inference import InferenceClient

ROOT = Path(__file__).resolve().parent.parent
NDWI = ROOT / "examples" / "models" / "ndwi-water"


def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "model_runtime", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stderr=subprocess.PIPE,
        text=True,
    )


def serving_port(process: subprocess.Popen, timeout_s: float = 30) -> int:
    """The port from the 'serving NAME:VERSION on HOST:PORT' log line."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        match = re.search(r"serving \S+ on 127\.0\.0\.1:(\d+)", line)
        if match:
            return int(match.group(1))
        assert line or process.poll() is None, f"model_runtime exited with {process.returncode}"
    raise AssertionError("model_runtime never logged its port")


def test_cli_serves_the_sample_model_and_stops_cleanly_on_sigterm():
    process = start("--port", "0", env={"CONSTELLATION_MODEL_DIR": str(NDWI)})  # the folder from the environment
    try:
        port = serving_port(process)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + 10
            while health.Check(health_pb2.HealthCheckRequest()).status != health_pb2.HealthCheckResponse.SERVING:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        example = np.load(NDWI / "example_input.npy")
        with InferenceClient(f"127.0.0.1:{port}") as client:
            probability = client.infer("ndwi-water", example)["water_probability"]
        assert probability.shape == (1, 1, 256, 256)
        assert (probability[0, 0, :, :128] > 0.5).all() and (
            probability[0, 0, :, 128:] < 0.5
        ).all()  # water left, land right
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        process.kill()
        process.wait()


def test_cli_exits_2_listing_every_manifest_problem(tmp_path):
    (tmp_path / "constellation.yaml").write_text(yaml.safe_dump({"name": "Bad", "task": "x"}))
    result = subprocess.run(
        [sys.executable, "-m", "model_runtime", "--model-dir", str(tmp_path), "--port", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    for field in ("name", "version", "task", "entrypoint", "input.bands", "input.dtype", "outputs"):
        assert f"constellation.yaml: {field}: " in result.stderr


def test_cli_exits_3_when_the_model_fails_to_load(tmp_path):
    (tmp_path / "model.py").write_text(
        textwrap.dedent("""
        class Model:
            def load(self):
                raise FileNotFoundError("weights.pt is missing")
    """)
    )
    (tmp_path / "constellation.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "broken",
                "version": "1",
                "task": "regression",
                "entrypoint": "model:Model",
                "input": {"bands": ["red"], "tile_size_px": 4, "dtype": "FP32"},
                "outputs": [{"name": "out", "dtype": "FP32", "shape": [1]}],
            }
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "model_runtime", "--model-dir", str(tmp_path), "--port", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 3
    assert "weights.pt is missing" in result.stderr and "the model failed to load" in result.stderr


def test_cli_exits_1_when_the_port_is_taken():
    process = start("--model-dir", str(NDWI), "--port", "0")
    try:
        port = serving_port(process)
        result = subprocess.run(
            [sys.executable, "-m", "model_runtime", "--model-dir", str(NDWI), "--port", str(port)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 1 and f"could not bind 127.0.0.1:{port}" in result.stderr
    finally:
        process.kill()
        process.wait()


def test_the_benchmark_runs_end_to_end():
    """bench/model_infer.py with tiny rounds: every arm answers (numbers checked against predict() inside)."""
    result = subprocess.run(
        [sys.executable, "bench/model_infer.py", "--seconds", "0.2", "--rounds", "1", "--models", "ndwi4"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for arm in (
        "(a) predict() in-process",
        "(b) plain grpcio",
        "(c) runtime, our client",
        "(d) runtime, tritonclient",
        "(c)/(b)",
    ):
        assert arm in result.stdout
