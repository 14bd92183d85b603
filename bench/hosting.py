"""Hosting's figures, each against a baseline measured in the same run.

    .venv/bin/python bench/hosting.py [--seconds 10] [--deploys 5]

1. Image size of the ndwi-water model (target <= 300 MB).
2. Rebuild after a code-only change: PackageModel -> READY, and the image
   build alone (target <= 15 s).
3. Deploy of a built image to the first successful inference, median of
   --deploys runs (target <= 3 s).
4. ModelInfer throughput, batches of 8 tiles of 256x256x4 float32, for a
   4-band NDWI model: predict() in-process; a plain grpcio server moving the
   same bytes with no compute (the transport ceiling); our runtime in a
   Docker container with our client and with tritonclient; the same on the
   local runtime. NDWI is memory-bound, so the target is >= 80% of the plain
   grpcio figure.

Needs the Docker engine and the base image (scripts/make_base_image.sh).
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "gen" / "python")]

from model_infer import NDWI4  # the same 4-band NDWI model the runtime benchmark uses

from clients.inference import InferenceClient
from constellation.hosting.v1 import hosting_pb2
from mesh.services import channel_options
from model_runtime.memory import tune_malloc
from tests.hosting_support import STATE, HostingUnderTest, require_docker

OPTIONS = channel_options(1 << 28)


def make_ndwi4(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "model.py").write_text(NDWI4)
    manifest = {
        "name": "ndwi4",
        "version": "1.0.0",
        "task": "segmentation",
        "entrypoint": "model:Ndwi4",
        "input": {
            "bands": ["blue", "green", "red", "nir"],
            "tile_size_px": 256,
            "dtype": "FP32",
            "value_range": [0, 1],
        },
        "outputs": [{"name": "water_probability", "dtype": "FP32", "shape": [1, 256, 256]}],
        "requirements": ["numpy>=1.26"],
        "batching": {"max_batch_size": 32, "max_queue_delay_ms": 0},
    }
    (folder / "constellation.yaml").write_text(yaml.safe_dump(manifest))
    return folder


def tiles() -> np.ndarray:
    return np.random.default_rng(0).uniform(0.01, 0.6, size=(8, 4, 256, 256)).astype(np.float32)


def rate(call, seconds: float, concurrency: int = 1) -> float:
    """Tiles/s of `concurrency` closed-loop callers, each sending batches of 8."""
    call()
    counts = [0] * concurrency
    start = time.perf_counter()

    def loop(slot: int) -> None:
        while time.perf_counter() - start < seconds:
            call()
            counts[slot] += 8

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.perf_counter() - start)


def in_process(folder: Path, seconds: float) -> float:
    spec = importlib.util.spec_from_file_location("ndwi4_model", folder / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model, batch = module.Ndwi4(), tiles()
    return rate(lambda: model.predict(batch), seconds)


def our_client(address: str, seconds: float, concurrency: int = 1) -> float:
    batch = tiles()
    with InferenceClient(address) as client:
        return rate(lambda: client.infer("ndwi4", batch), seconds, concurrency)


def plain_grpcio(seconds: float, concurrency: int = 1) -> float:
    """The transport ceiling: same request and response sizes, raw bytes, no protobuf, no compute."""
    reply = np.zeros((8, 1, 256, 256), np.float32).tobytes()
    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Call": grpc.unary_unary_rpc_method_handler(lambda request, context: reply)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(4), options=OPTIONS)
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    payload = tiles().tobytes()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=OPTIONS) as channel:
            call = channel.unary_unary("/bench.Echo/Call")
            return rate(lambda: call(payload), seconds, concurrency)
    finally:
        server.stop(0)


def triton(address: str, seconds: float) -> float:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "triton_loop.py"), address, "ndwi4", str(seconds)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0:
        raise RuntimeError(result.stderr)
    return float(result.stdout.strip())


def package_and_wait(hosting: HostingUnderTest, folder: Path, name: str) -> tuple[float, float, str]:
    """Seconds to READY, seconds spent building, model id."""
    existing = hosting.hosting.store.find(name, "1.0.0")
    after = hosting.hosting.store.events(existing.id)[-1].sequence if existing else 0
    start = time.perf_counter()
    status = hosting.package(folder, name=name)
    events = hosting.wait_for(
        status.model_id, STATE.Value("DEPLOYMENT_STATE_READY"), STATE.Value("DEPLOYMENT_STATE_FAILED"), after=after
    )
    total = time.perf_counter() - start
    if events[-1].state != STATE.Value("DEPLOYMENT_STATE_READY"):
        raise RuntimeError(events[-1].message)
    stamp = {STATE.Name(e.state): e.time.ToDatetime() for e in reversed(events)}
    build = (stamp["DEPLOYMENT_STATE_VALIDATING"] - stamp["DEPLOYMENT_STATE_BUILDING"]).total_seconds()
    return total, build, status.model_id


def deploy_to_first_inference(hosting: HostingUnderTest, model_id: str, runtime: int) -> float:
    before = hosting.hosting.store.events(model_id)[-1].sequence  # wait for this deploy's HEALTHY, not an earlier one
    start = time.perf_counter()
    hosting.stub.DeployModel(hosting_pb2.DeployModelRequest(model_id=model_id, runtime=runtime))
    hosting.wait_for(model_id, STATE.Value("DEPLOYMENT_STATE_HEALTHY"), after=before)
    address = hosting.stub.GetModelStatus(hosting_pb2.GetModelStatusRequest(model_id=model_id)).endpoints[0].address
    our_client_once(address)
    return time.perf_counter() - start


def our_client_once(address: str) -> None:
    with InferenceClient(address) as client:
        client.infer("ndwi4", tiles()[:1], timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="per throughput measurement")
    parser.add_argument("--deploys", type=int, default=5)
    args = parser.parse_args()
    tune_malloc()
    engine = require_docker()
    work = Path(tempfile.mkdtemp(prefix="constellation-bench-hosting-"))
    hosting = HostingUnderTest(work / "home")
    try:
        folder = make_ndwi4(work / "ndwi4")
        first, first_build, model_id = package_and_wait(hosting, folder, "ndwi4")
        image = hosting.stub.GetModelStatus(hosting_pb2.GetModelStatusRequest(model_id=model_id)).image
        size_mb = engine.images.get(image).attrs["Size"] / 1e6
        print(f"1. image {image}: {size_mb:.0f} MB (target <= 300 MB)")
        with open(folder / "model.py", "a") as code:
            code.write("\n# a code-only change\n")
        again, build, _ = package_and_wait(hosting, folder, "ndwi4")
        print(
            f"2. first package {first:.1f} s (build {first_build:.1f} s); after a code-only change: package "
            f"{again:.1f} s, build {build:.1f} s (target <= 15 s)"
        )

        times = [deploy_to_first_inference(hosting, model_id, hosting_pb2.RUNTIME_DOCKER) for _ in range(args.deploys)]
        print(
            f"3. docker: deploy to first inference median {statistics.median(times):.2f} s over {len(times)} (min "
            f"{min(times):.2f}, max {max(times):.2f}; target <= 3 s)"
        )
        address = hosting.stub.GetModelStatus(hosting_pb2.GetModelStatusRequest(model_id=model_id)).endpoints[0].address

        figures = {
            "predict() in-process": in_process(folder, args.seconds),
            "plain grpcio, same bytes, no compute": plain_grpcio(args.seconds),
            "runtime in docker, our client": our_client(address, args.seconds),
            "runtime in docker, tritonclient": triton(address, args.seconds),
            "plain grpcio, 2 callers": plain_grpcio(args.seconds, 2),
            "runtime in docker, our client, 2 callers": our_client(address, args.seconds, 2),
        }
        local_times = [
            deploy_to_first_inference(hosting, model_id, hosting_pb2.RUNTIME_LOCAL) for _ in range(min(3, args.deploys))
        ]
        print(f"   local: deploy to first inference median {statistics.median(local_times):.2f} s")
        local = hosting.stub.GetModelStatus(hosting_pb2.GetModelStatusRequest(model_id=model_id)).endpoints[0].address
        figures["runtime on local runtime, our client"] = our_client(local, args.seconds)
        print("4. ModelInfer, batches of 8 x 256x256x4 float32 (tiles/s):")
        ceiling, in_proc = figures["plain grpcio, same bytes, no compute"], figures["predict() in-process"]
        for label, value in figures.items():
            print(
                f"   {label:<40} {value:8.0f}   {value / ceiling:5.2f} of plain grpcio   {value / in_proc:5.2f} "
                "of in-process"
            )
        for label, baseline in (
            ("runtime in docker, our client", "plain grpcio, same bytes, no compute"),
            ("runtime in docker, tritonclient", "plain grpcio, same bytes, no compute"),
            ("runtime in docker, our client, 2 callers", "plain grpcio, 2 callers"),
        ):
            ratio = figures[label] / figures[baseline]
            print(f"   {label}: {ratio:.2f} of {baseline} [{'ok' if ratio >= 0.8 else 'MISSES TARGET'}]")
    finally:
        for model in hosting.hosting.list():
            hosting.hosting.delete(model.id)
        hosting.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
