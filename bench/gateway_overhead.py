"""What the Envoy gateway costs: core's GetDataset and ListDatasets (page of 50), direct vs through Envoy.

    .venv/bin/python bench/gateway_overhead.py [--seconds 30] [--concurrency 4]

Starts core (SQLite, log level WARNING so logging does not dominate) and the
real Envoy, seeds 200 datasets, then for each RPC alternates direct and
gateway rounds (three each, `seconds` in total per path and RPC) so machine
noise hits both alike. Prints requests/s, p50 and p99 per path and the
gateway/direct ratios. Targets: Envoy adds < 1 ms at p50 and keeps >= 80% of
direct throughput.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "gen" / "python")]

import grpc

from constellation.core.v1 import core_pb2, core_pb2_grpc
from constellation_sdk.client import Client
from gateway import admin
from gateway import supervisor as gateway
from gateway.settings import GatewaySettings
from mesh.services import insecure_channel
from tests.conftest import TEST_STORAGE_ROOTS
from tests.pg import free_port

ROUNDS = 3


def wait_serving(address: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    with Client(address) as client:
        while not client.serving():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{address} not serving")
            time.sleep(0.1)


def load(
    address: str,
    call: str,
    request,
    seconds: float,
    concurrency: int,
    connect: Callable[[str], grpc.Channel] = insecure_channel,
) -> list[float]:
    """Run `concurrency` closed-loop clients on one channel (from `connect`) for `seconds`; every latency in s."""
    channel = connect(address)
    method = getattr(core_pb2_grpc.CoreServiceStub(channel), call)
    method(request)  # warm the connection
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    stop = time.perf_counter() + seconds

    def worker(out: list[float]) -> None:
        while True:
            started = time.perf_counter()
            if started >= stop:
                return
            method(request)
            out.append(time.perf_counter() - started)

    threads = [threading.Thread(target=worker, args=(out,)) for out in latencies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    channel.close()
    return [x for out in latencies for x in out]


def summary(latencies: list[float], seconds: float) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "rps": len(ordered) / seconds,
        "p50_ms": statistics.median(ordered) * 1000,
        "p99_ms": ordered[int(len(ordered) * 0.99) - 1] * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0, help="per RPC and path, split over alternating rounds")
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    os.environ.update(TEST_STORAGE_ROOTS)  # the catalog entries it makes name scenes under the test roots

    work = Path(tempfile.mkdtemp(prefix="constellation-bench-"))
    core_port, gateway_port = free_port(), free_port()
    env = {
        **os.environ,
        "CONSTELLATION_HOME": str(work),
        "CONSTELLATION_CORE_PORT": str(core_port),
        "CONSTELLATION_CORE_METRICS_PORT": "0",
        "CONSTELLATION_LOG_LEVEL": "WARNING",
        "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'gen' / 'python'}",
    }
    env.pop("DATABASE_URL", None)
    core = subprocess.Popen([sys.executable, "-m", "core_svc"], env=env, stderr=open(work / "core.log", "wb"))
    envoy = None
    try:
        direct = f"127.0.0.1:{core_port}"
        wait_serving(direct)
        unused = f"127.0.0.1:{free_port()}"
        config = work / "envoy.yaml"
        admin_socket = admin.socket_path(work)
        config.write_text(
            gateway.render_config(
                gateway_port,
                admin_socket,
                {"core": direct, "hosting": unused, "orchestrator": unused, "agent": unused},
                # The bench measures the proxy, not the door's rate limits.
                GatewaySettings(rate_limit_per_address=0, rate_limit_per_key=0),
            )
        )
        envoy = gateway.start_envoy(config, work / "envoy.log")
        gateway.wait_ready(admin_socket, process=envoy)
        via_gateway = f"127.0.0.1:{gateway_port}"

        with insecure_channel(direct) as channel:
            stub = core_pb2_grpc.CoreServiceStub(channel)
            ids = [
                stub.CreateDataset(
                    core_pb2.CreateDatasetRequest(
                        dataset=core_pb2.Dataset(
                            name=f"scene-{i:03d}",
                            uri=f"s3://scenes/{i}.tif",
                            sensor="sentinel-2",
                            bands=["blue", "green", "red", "nir"],
                            resolution_m=10,
                            tags=["bench"],
                        )
                    )
                ).id
                for i in range(200)
            ]
        cases = {
            "GetDataset": core_pb2.GetDatasetRequest(id=ids[100]),
            "ListDatasets(50)": core_pb2.ListDatasetsRequest(page_size=50),
        }
        print(
            f"core at {direct}, envoy at {via_gateway}; {args.concurrency} client threads, {args.seconds:.0f}s "
            "per RPC and path"
        )
        print(f"{'rpc':<18}{'path':<9}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}")
        for name, request in cases.items():
            call = name.split("(")[0]
            samples: dict[str, list[float]] = {"direct": [], "envoy": []}
            for _ in range(ROUNDS):
                for path, address in (("direct", direct), ("envoy", via_gateway)):
                    samples[path] += load(address, call, request, args.seconds / ROUNDS, args.concurrency)
            results = {path: summary(lat, args.seconds) for path, lat in samples.items()}
            for path, r in results.items():
                print(f"{name:<18}{path:<9}{r['rps']:>9.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}")
            ratio = results["envoy"]["rps"] / results["direct"]["rps"]
            added = results["envoy"]["p50_ms"] - results["direct"]["p50_ms"]
            verdict = "ok" if ratio >= 0.8 and added < 1.0 else "MISSES TARGET"
            print(f"{name:<18}envoy/direct throughput {ratio:.2f}, p50 added {added:+.2f} ms  [{verdict}]")
    finally:
        if envoy is not None:
            envoy.terminate()
            envoy.wait(10)
        core.terminate()
        core.wait(15)


if __name__ == "__main__":
    main()
