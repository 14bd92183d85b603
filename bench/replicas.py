"""Throughput of a compute-bound model with 1, 2 and 4 replicas on Docker Swarm, as ratios to 1 replica.

    .venv/bin/python bench/replicas.py [--seconds 15] [--concurrency 8] [--rounds 3]

A model whose predict() is CPU work (repeated 64x64 matrix products and tanh per tile) is packaged by a
real hosting, deployed on the swarm runtime with `resources.cpu: 1` (each replica is limited to one
core by Swarm), scaled to 1, 2 and 4 replicas, and driven the way the orchestrator's model step drives a
model: `clients.inference.InferenceClient.run` round-robin over the deployment's endpoints with a fixed
number of requests in flight (--concurrency, the same for every count, so the only change is the
replicas). Tiles/s over --seconds after a warm-up, in --rounds rounds of 1, 2, 4 replicas (a change in the
machine's load then hits every count); medians, and their ratio to 1 replica in the same run.
The machine's core count and load average are printed: on 2 cores the curve flattens past 2 replicas,
and other work on the machine lowers every figure.

Needs the Docker engine and the base image; makes the engine a one-node swarm if it is not one and
leaves the swarm again at the end (only if it made it).
"""

from __future__ import annotations

import argparse
import os
import statistics
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

COUNTS = (1, 2, 4)
WAIT_S = 30.0  # the model step's default wait_s
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


def throughput(endpoints: list[str], seconds: float, concurrency: int) -> tuple[float, int]:
    """(tiles/s, retries) through the model step's client over `endpoints`, after a warm-up of a few batches;
    transient failures are retried for WAIT_S as the step retries them."""
    batch = np.random.default_rng(1).random((BATCH, 1, TILE, TILE), dtype=np.float32)
    retries = 0

    def heard(error: Exception, wait_s: float) -> None:
        nonlocal retries
        retries += 1

    with InferenceClient(endpoints, "busy", output_name="busy") as client:
        client.describe()
        warm_up = ((i, batch) for i in range(2 * len(endpoints) * concurrency))
        for _ in client.run(warm_up, concurrency, retry_for_s=WAIT_S, on_retry=heard):
            pass
        stop = time.monotonic() + seconds
        started, answered = time.monotonic(), 0

        def batches():
            while time.monotonic() < stop:
                yield 0, batch

        for _ in client.run(batches(), concurrency, retry_for_s=WAIT_S, on_retry=heard):
            answered += 1
        return answered * BATCH / (time.monotonic() - started), retries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
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
        rates: dict[int, list[float]] = {n: [] for n in COUNTS}
        for round_ in range(args.rounds):  # 1, 2, 4, 1, 2, 4...: a change in the machine's load hits every count
            for replicas in COUNTS:
                hosting.stub.DeployModel(
                    hosting_pb2.DeployModelRequest(
                        model_id=model_id, replicas=replicas, runtime=hosting_pb2.RUNTIME_SWARM
                    )
                )
                events = hosting.wait_for(
                    model_id,
                    STATE.Value("DEPLOYMENT_STATE_HEALTHY"),
                    STATE.Value("DEPLOYMENT_STATE_FAILED"),
                    after=after,
                )
                assert events[-1].state == STATE.Value("DEPLOYMENT_STATE_HEALTHY"), events[-1].message
                after = events[-1].sequence
                status = hosting.stub.GetModelStatus(hosting_pb2.GetModelStatusRequest(model_id=model_id))
                endpoints = [e.address for e in status.endpoints]
                assert len(endpoints) == replicas, endpoints
                rate, retries = throughput(endpoints, args.seconds, args.concurrency)
                rates[replicas].append(rate)
                print(
                    f"round {round_ + 1}: {replicas} replica(s) {rate:.1f} tiles/s, {retries} retried, "
                    f"load average {os.getloadavg()[0]:.1f}"
                )
        print(
            f"{'replicas':>8} {'tiles/s':>9} {'vs 1':>6}  (median of {args.rounds} rounds; batches of {BATCH} "
            f"{TILE}x{TILE} tiles, {args.concurrency} in flight)"
        )
        baseline = statistics.median(rates[1])
        for replicas in COUNTS:
            rate = statistics.median(rates[replicas])
            print(f"{replicas:>8} {rate:>9.1f} {rate / baseline:>5.2f}x")
    finally:
        if model_id:
            hosting.hosting.delete(model_id)
        hosting.close()
        if made:
            subprocess.run(["docker", "swarm", "leave", "--force"], check=True, capture_output=True)


if __name__ == "__main__":
    main()
