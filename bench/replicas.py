"""Throughput of a compute-bound model with 1, 2 and 4 replicas on Docker Swarm, as ratios to 1 replica.

    .venv/bin/python bench/replicas.py [--seconds 15] [--concurrency 8]

A model whose predict() is CPU work (repeated 64x64 matrix products and tanh per tile) is packaged by a
real hosting, deployed on the swarm runtime with `resources.cpu: 1` (each replica is limited to one
core by Swarm), scaled to 1, 2 and 4 replicas, and driven the way the orchestrator's model step drives a
model: `clients.inference.InferenceClient.run` round-robin over the deployment's endpoints with a fixed
number of requests in flight (--concurrency, the same for every count, so the only change is the
replicas). Tiles/s over --seconds after a warm-up; the ratio is against 1 replica in the same run.
The machine's core count and load average are printed: on 2 cores the curve flattens past 2 replicas,
and other work on the machine lowers every figure.

Needs the Docker engine and the base image; makes the engine a one-node swarm if it is not one and
leaves the swarm again at the end (only if it made it).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "gen" / "python")]

from clients.inference import InferenceClient
from constellation.hosting.v1 import hosting_pb2
from tests.hosting_support import STATE, HostingUnderTest, require_docker

TILE = 64
BATCH = 4
MODEL = f"""
import numpy as np

W = np.random.default_rng(0).standard_normal(({TILE}, {TILE})).astype(np.float32) / 8


class Busy:
    def load(self) -> None:
        pass

    def predict(self, batch: np.ndarray) -> np.ndarray:
        out = np.empty_like(batch)
        for i, tile in enumerate(batch):
            y = tile[0]
            for _ in range(400):
                y = np.tanh(y @ W)
            out[i, 0] = y
        return out
"""


def make_model(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "model.py").write_text(MODEL)
    manifest = {
        "name": "busy",
        "version": "1.0.0",
        "task": "segmentation",
        "entrypoint": "model:Busy",
        "input": {"bands": ["nir"], "tile_size_px": TILE, "dtype": "FP32", "value_range": [0, 1]},
        "outputs": [{"name": "busy", "dtype": "FP32", "shape": [1, TILE, TILE]}],
        "requirements": ["numpy>=1.26"],
        "resources": {"cpu": 1, "memory": "512m"},
        "batching": {"max_batch_size": BATCH, "max_queue_delay_ms": 0},
    }
    (folder / "constellation.yaml").write_text(yaml.safe_dump(manifest))
    return folder


def throughput(endpoints: list[str], seconds: float, concurrency: int) -> float:
    """Tiles/s through the model step's client over `endpoints`, after a warm-up of a few batches."""
    batch = np.random.default_rng(1).random((BATCH, 1, TILE, TILE), dtype=np.float32)
    with InferenceClient(endpoints, "busy", output_name="busy") as client:
        client.describe()
        for _ in client.run(((i, batch) for i in range(2 * len(endpoints) * concurrency)), concurrency):
            pass
        stop = time.monotonic() + seconds
        started, answered = time.monotonic(), 0

        def batches():
            while time.monotonic() < stop:
                yield 0, batch

        for _ in client.run(batches(), concurrency):
            answered += 1
        return answered * BATCH / (time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    engine = require_docker()
    made = engine.info()["Swarm"]["LocalNodeState"] == "inactive"
    if made:
        subprocess.run(["docker", "swarm", "init", "--advertise-addr", "127.0.0.1"], check=True, capture_output=True)
    work = Path(tempfile.mkdtemp(prefix="bench-replicas-"))
    hosting = HostingUnderTest(
        work / "home",
        CONSTELLATION_HOSTING_SWARM="on",
        CONSTELLATION_HOSTING_READY_TIMEOUT_S="120",
        CONSTELLATION_HOSTING_MODEL_ROOTS=str(work),
    )
    model_id = ""
    try:
        status = hosting.package(make_model(work / "busy"), name="busy")
        model_id = status.model_id
        events = hosting.wait_for(
            model_id, STATE.Value("DEPLOYMENT_STATE_READY"), STATE.Value("DEPLOYMENT_STATE_FAILED")
        )
        assert events[-1].state == STATE.Value("DEPLOYMENT_STATE_READY"), events[-1].message
        after = events[-1].sequence
        print(f"cores: {os.cpu_count()}, load average before: {os.getloadavg()[0]:.1f}")
        print(
            f"{'replicas':>8} {'tiles/s':>9} {'vs 1':>6}  "
            f"(batches of {BATCH} {TILE}x{TILE} tiles, {args.concurrency} in flight)"
        )
        baseline = 0.0
        for replicas in (1, 2, 4):
            hosting.stub.DeployModel(
                hosting_pb2.DeployModelRequest(model_id=model_id, replicas=replicas, runtime=hosting_pb2.RUNTIME_SWARM)
            )
            events = hosting.wait_for(
                model_id,
                STATE.Value("DEPLOYMENT_STATE_HEALTHY"),
                STATE.Value("DEPLOYMENT_STATE_FAILED"),
                after=after,
            )
            assert events[-1].state == STATE.Value("DEPLOYMENT_STATE_HEALTHY"), events[-1].message
            after = events[-1].sequence
            endpoints = [
                e.address
                for e in hosting.stub.GetModelStatus(hosting_pb2.GetModelStatusRequest(model_id=model_id)).endpoints
            ]
            assert len(endpoints) == replicas, endpoints
            rate = throughput(endpoints, args.seconds, args.concurrency)
            baseline = baseline or rate
            print(f"{replicas:>8} {rate:>9.1f} {rate / baseline:>5.2f}x  load average {os.getloadavg()[0]:.1f}")
    finally:
        if model_id:
            hosting.hosting.delete(model_id)
        hosting.close()
        if made:
            subprocess.run(["docker", "swarm", "leave", "--force"], check=True, capture_output=True)


if __name__ == "__main__":
    main()
