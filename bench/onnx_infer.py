"""ModelInfer throughput of water-mlp (onnxruntime) served by hosting, against in-process onnxruntime, in one run.

    .venv/bin/python bench/onnx_infer.py [--seconds 30] [--rounds 10] [--callers 1] [--no-docker]

Requests are batches of 8 real tiles, 6x256x256 uint8 digital numbers
(3 MiB; the model's declared input), cut from the 2048² scene (scripts/make_scenes.py, made once under
build/scenes); replies are 8x1x256x256 float32 (2 MiB). Arms:

  (a) WaterMlp.predict() in this process: the same model.py, session
      options and thread count the server uses (the compute ceiling);
  (b) water-mlp packaged by hosting and deployed on the local runtime (its
      own venv and process), called with our client;
  (c) the same on the Docker runtime, when an engine answers.

water-mlp is compute-bound (three 1x1 convolutions over every pixel), so the
target is served >= 80% of in-process. The arms alternate in --rounds rounds
of --seconds/--rounds each; figures are medians over rounds, and each ratio
is the median of the rounds' ratios, so load from other processes hits every
arm alike.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "gen" / "python")]

import docker
import numpy as np
import rasterio
from hosting import package_and_wait
from model_infer import TILES, median, rate

from clients.inference import InferenceClient
from constellation.hosting.v1 import hosting_pb2
from model_runtime.memory import tune_malloc
from scripts.make_scenes import default_folder, make_scene, scene_name
from tests.hosting_support import STATE, HostingUnderTest, require_docker

WATER_MLP = ROOT / "examples" / "models" / "water-mlp"
NAME = "water-mlp"
TILE = 256


def scene_tiles() -> np.ndarray:
    """TILES tiles along a row of the 2048² scene that crosses the coast."""
    path = make_scene(2048, default_folder() / scene_name(2048))
    with rasterio.open(path) as scene:
        windows = [rasterio.windows.Window(col, 0, TILE, TILE) for col in range(0, TILES * TILE, TILE)]
        return np.stack([scene.read(window=w) for w in windows])


def in_process_model():
    spec = importlib.util.spec_from_file_location("water_mlp_model", WATER_MLP / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.WaterMlp()
    model.load()
    return model


def deploy(hosting: HostingUnderTest, model_id: str, runtime: int) -> str:
    before = hosting.hosting.store.events(model_id)[-1].sequence
    hosting.stub.DeployModel(hosting_pb2.DeployModelRequest(model_id=model_id, runtime=runtime))
    events = hosting.wait_for(
        model_id, STATE.Value("DEPLOYMENT_STATE_HEALTHY"), STATE.Value("DEPLOYMENT_STATE_FAILED"), after=before
    )
    if events[-1].state != STATE.Value("DEPLOYMENT_STATE_HEALTHY"):
        raise RuntimeError(events[-1].message)
    return hosting.stub.GetModelStatus(hosting_pb2.GetModelStatusRequest(model_id=model_id)).endpoints[0].address


def docker_answers() -> bool:
    try:
        docker.from_env().ping()
        return True
    except docker.errors.DockerException:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0, help="per arm, split over the rounds")
    parser.add_argument(
        "--rounds", type=int, default=10, help="short rounds keep the arms' conditions alike on a busy machine"
    )
    parser.add_argument("--callers", type=int, default=1, help="closed-loop callers per served arm")
    parser.add_argument("--no-docker", action="store_true", help="skip the Docker runtime even if an engine answers")
    args = parser.parse_args()
    tune_malloc()
    use_docker = not args.no_docker and docker_answers()
    if use_docker:
        require_docker()  # builds the base image if it is missing
    batch = scene_tiles()
    model = in_process_model()
    expected = model.predict(batch)
    work = Path(tempfile.mkdtemp(prefix="constellation-bench-onnx-"))
    # One hosting service per runtime, so both deployments stay up and the arms can alternate.
    hostings = {
        "local runtime": (
            HostingUnderTest(work / "local", CONSTELLATION_HOSTING_DOCKER="off"),
            hosting_pb2.RUNTIME_LOCAL,
        )
    }
    if use_docker:
        hostings["docker"] = (HostingUnderTest(work / "docker"), hosting_pb2.RUNTIME_DOCKER)
    clients: dict[str, InferenceClient] = {}
    try:
        for label, (hosting, runtime) in hostings.items():
            seconds_to_ready, build_s, model_id = package_and_wait(hosting, WATER_MLP, NAME)
            clients[label] = InferenceClient(deploy(hosting, model_id, runtime))
            print(f"{label}: packaged in {seconds_to_ready:.1f} s (build {build_s:.1f} s), deployed")
            if not np.allclose(
                clients[label].infer(NAME, batch, timeout=60)["water_probability"], expected, rtol=0, atol=1e-6
            ):
                raise RuntimeError(f"{label} answers differently from in-process onnxruntime")

        arms = {"in-process onnxruntime": lambda: model.predict(batch)}
        for label, client in clients.items():
            arms[f"served, {label}"] = lambda client=client: client.infer(NAME, batch, timeout=60)
        figures: dict[str, list[float]] = {label: [] for label in arms}
        for _ in range(args.rounds):
            for label, call in arms.items():
                callers = 1 if label.startswith("in-process") else args.callers
                figures[label].append(rate(call, args.seconds / args.rounds, callers))

        baseline = figures["in-process onnxruntime"]
        print(
            f"ModelInfer, batches of {TILES} x 6x256x256 uint8, {args.callers} caller(s), median of {args.rounds} "
            "rounds (tiles/s):"
        )
        for label, values in figures.items():
            ratios = [v / b for v, b in zip(values, baseline, strict=True)]
            ratio = median(ratios)
            verdict = (
                ""
                if label.startswith("in-process")
                else f" (rounds {min(ratios):.2f}-{max(ratios):.2f})   "
                f"[{'ok' if ratio >= 0.8 else 'MISSES TARGET'}: >= 0.80]"
            )
            print(f"   {label:<28} {median(values):8.1f}   {ratio:5.2f} of in-process{verdict}")
    finally:
        for client in clients.values():
            client.close()
        for hosting, _ in hostings.values():
            for hosted in hosting.hosting.list():
                hosting.hosting.delete(hosted.id)
            hosting.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
