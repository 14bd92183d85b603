"""ModelInfer throughput of the model runtime against its two ceilings, all measured in one run.

    .venv/bin/python bench/model_infer.py [--seconds 6] [--rounds 3] [--callers 1] [--models ndwi4,ndwi4-smooth]

Requests are batches of 8 tiles of 4x256x256 float32 (8 MiB); replies are
8x1x256x256 float32 (2 MiB). For each model:

  (a) predict() called in this process on the same batch (the compute ceiling);
  (b) a plain grpcio server in its own process that answers every 8 MiB
      request with 2 MiB of bytes: no protobuf, no numpy, no compute (the
      transport ceiling; "echo" below sends the 8 MiB straight back);
  (c) `python -m model_runtime` in its own process, called with our client
      (clients.inference: raw_input_contents, zero-copy framing);
  (d) the same server called with the real tritonclient, in a subprocess
      (its generated inference.* messages collide with ours in one process).

Models: `ndwi4`, NDWI from the green and nir bands of 4-band tiles (memory-bound;
the figure to beat is (b)), and `ndwi4-smooth`, NDWI blurred by three passes
of a 17x17 box filter, then a sigmoid (compute-bound; the figure to beat is (a)). Every caller is a
closed loop: it sends the next batch when the previous reply has arrived.

The servers and the tritonclient process start once; the measurements then
alternate in --rounds rounds of --seconds/--rounds each, and the figures are
medians over rounds (ratios: the median of each round's ratio), so load from
other processes on the machine hits every arm alike. Server CPU per batch
(from /proc) is the figure least moved by such load: the runtime's CPU beside
predict() compares with the plain server's.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent import futures
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "gen" / "python")]

import numpy as np
import yaml

from mesh.services import channel_options

TILES, BANDS, SIZE = 8, 4, 256
GRPC_OPTIONS = channel_options(1 << 28)

NDWI4 = '''
import numpy as np


class Ndwi4:
    """NDWI from 4-band tiles (blue, green, red, nir): memory-bound, a few passes over the tile."""

    def predict(self, batch):
        green, nir = batch[:, 1:2], batch[:, 3:4]
        total = green + nir
        ndwi = np.divide(green - nir, total, out=np.zeros_like(total), where=total != 0)
        return 1.0 / (1.0 + np.exp(-10.0 * ndwi, dtype=np.float32))
'''

NDWI4_SMOOTH = '''
import numpy as np

RADIUS, PASSES = 8, 3


class Ndwi4Smooth:
    """NDWI, PASSES of a (2r+1)^2 box filter (about a Gaussian blur; summed shifted views,
    edge-padded) and a sigmoid: compute-bound, ~100 passes over each tile."""

    def predict(self, batch):
        green, nir = batch[:, 1:2], batch[:, 3:4]
        total = green + nir
        smooth = np.divide(green - nir, total, out=np.zeros_like(total), where=total != 0)
        size = smooth.shape[-1]
        for _ in range(PASSES):
            padded = np.pad(smooth, ((0, 0), (0, 0), (RADIUS, RADIUS), (RADIUS, RADIUS)), mode="edge")
            rows = np.zeros((*smooth.shape[:2], size + 2 * RADIUS, size), np.float32)
            for dx in range(2 * RADIUS + 1):
                rows += padded[..., dx : dx + size]
            smooth = np.zeros_like(smooth)
            for dy in range(2 * RADIUS + 1):
                smooth += rows[..., dy : dy + size, :]
            smooth *= 1.0 / (2 * RADIUS + 1) ** 2
        return 1.0 / (1.0 + np.exp(-10.0 * smooth, dtype=np.float32))
'''

MODELS = {"ndwi4": ("Ndwi4", NDWI4), "ndwi4-smooth": ("Ndwi4Smooth", NDWI4_SMOOTH)}


def tiles() -> np.ndarray:
    return np.random.default_rng(0).uniform(0.01, 0.6, size=(TILES, BANDS, SIZE, SIZE)).astype(np.float32)


def write_model(folder: Path, name: str) -> Path:
    class_name, code = MODELS[name]
    folder.mkdir(parents=True)
    (folder / "model.py").write_text(code)
    manifest = {
        "name": name,
        "version": "1.0.0",
        "task": "segmentation",
        "entrypoint": f"model:{class_name}",
        "input": {
            "bands": ["blue", "green", "red", "nir"],
            "tile_size_px": SIZE,
            "dtype": "FP32",
            "value_range": [0, 1],
        },
        "outputs": [{"name": "water_probability", "dtype": "FP32", "shape": [1, SIZE, SIZE]}],
        "requirements": ["numpy>=1.26"],
        "batching": {"max_batch_size": 32, "max_queue_delay_ms": 0},
    }
    (folder / "constellation.yaml").write_text(yaml.safe_dump(manifest))
    return folder


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def served(pid: int, call: Callable[[], float], cpu_ms: list[float], seconds: float) -> float:
    """call() -> tiles/s, also appending the server process's CPU ms per batch of TILES to cpu_ms."""
    before = process_cpu_s(pid)
    tiles_per_s = call()
    cpu_ms.append((process_cpu_s(pid) - before) * 1000 / max(tiles_per_s * seconds / TILES, 1))
    return tiles_per_s


def rate(call: Callable[[], object], seconds: float, callers: int = 1) -> float:
    """Tiles/s of `callers` closed loops, each sending batches of TILES; after two warm-up calls."""
    call()
    call()
    counts = [0] * callers
    start = time.perf_counter()

    def loop(slot: int) -> None:
        while time.perf_counter() - start < seconds:
            call()
            counts[slot] += TILES

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.perf_counter() - start)


def in_process_model(folder: Path, name: str) -> tuple[Callable[[], object], np.ndarray]:
    """predict() on the benchmark batch in this process, and its result."""
    spec = importlib.util.spec_from_file_location(f"bench_{name.replace('-', '_')}", folder / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model, batch = getattr(module, MODELS[name][0])(), tiles()
    batch.flags.writeable = False  # what the runtime hands predict()
    return (lambda: model.predict(batch)), model.predict(batch)


def serve_plain(reply_bytes: int) -> None:
    """The transport ceiling's server: raw bytes in, `reply_bytes` out (-1: the request itself)."""
    import grpc

    reply = bytes(reply_bytes) if reply_bytes >= 0 else None
    handler = grpc.method_handlers_generic_handler(
        "bench.Plain",
        {"Call": grpc.unary_unary_rpc_method_handler(lambda request, context: reply if reply is not None else request)},
    )
    server = grpc.server(futures.ThreadPoolExecutor(16), options=[*GRPC_OPTIONS, ("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"serving on 127.0.0.1:{port}", file=sys.stderr, flush=True)
    sys.stdin.read()  # until the parent closes our stdin
    server.stop(0)


def start_server(command: list[str]) -> tuple[subprocess.Popen, str]:
    """Start a server process; its address from the first 'serving ... on HOST:PORT' line on stderr."""
    process = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        match = re.search(r"serving .*?on (127\.0\.0\.1:\d+)", line)
        if match:
            threading.Thread(target=process.stderr.read, daemon=True).start()
            return process, match.group(1)
        if not line and process.poll() is not None:
            break
    process.kill()
    raise RuntimeError(f"{' '.join(command)} did not start")


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class Plain:
    """A plain grpcio server process and a channel to it."""

    def __init__(self, reply_bytes: int) -> None:
        import grpc

        self.process, address = start_server([sys.executable, __file__, "--serve-plain", str(reply_bytes)])
        self.channel = grpc.insecure_channel(address, options=GRPC_OPTIONS)
        self.call = self.channel.unary_unary("/bench.Plain/Call")
        self.payload = tiles().tobytes()

    def rate(self, seconds: float, callers: int) -> float:
        return rate(lambda: self.call(self.payload), seconds, callers)

    def close(self) -> None:
        self.channel.close()
        stop_server(self.process)


def wait_ready(address: str, name: str) -> None:
    from clients.inference import InferenceClient

    deadline = time.monotonic() + 60
    with InferenceClient(address) as client:
        while True:
            try:
                client.infer(name, tiles()[:1], timeout=5)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


def median(values: list[float]) -> float:
    return float(np.median(values))


def triton_worker(address: str, name: str, callers: int) -> None:
    """tritonclient's side, in its own process: for each SECONDS line on stdin, prints 'tiles/s checksum'."""
    import tritonclient.grpc as triton

    batch = tiles()
    request = triton.InferInput("tiles", list(batch.shape), "FP32")
    request.set_data_from_numpy(batch)
    outputs = [triton.InferRequestedOutput("water_probability")]
    own = threading.local()  # one client (one channel) per caller, like the other measurements

    def call() -> np.ndarray:
        if not hasattr(own, "client"):
            own.client = triton.InferenceServerClient(url=address)
        return own.client.infer(name, [request], outputs=outputs).as_numpy("water_probability")

    checksum = float(call().astype(np.float64).sum())
    for line in sys.stdin:
        print(rate(call, float(line), callers), checksum, flush=True)


class Tritonclient:
    def __init__(self, address: str, name: str, callers: int, expected: np.ndarray) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--triton-worker", address, name, str(callers)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.expected = float(expected.astype(np.float64).sum())
        self.size = expected.size

    def rate(self, seconds: float) -> float:
        self.process.stdin.write(f"{seconds}\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the tritonclient process exited with {self.process.wait()}")
        tiles_per_s, checksum = map(float, line.split())
        assert abs(checksum - self.expected) < 1e-6 * self.size, "tritonclient got different numbers"
        return tiles_per_s

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--seconds", type=float, default=6.0, help="per measured arm, split over the rounds (default 6)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    parser.add_argument("--callers", type=int, default=1, help="concurrent closed-loop callers (default 1)")
    parser.add_argument("--models", default="ndwi4,ndwi4-smooth", help=f"comma-separated, from {', '.join(MODELS)}")
    parser.add_argument("--serve-plain", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--triton-worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_plain is not None:
        return serve_plain(args.serve_plain)
    if args.triton_worker:
        address, name, callers = args.triton_worker
        return triton_worker(address, name, int(callers))

    from clients.inference import InferenceClient
    from model_runtime.memory import tune_malloc

    tune_malloc()  # what the runtime does at start; the client side benefits the same way
    slice_s, callers = args.seconds / args.rounds, args.callers
    print(
        f"ModelInfer, batches of {TILES} tiles of {BANDS}x{SIZE}x{SIZE} float32 ({tiles().nbytes >> 20} MiB), "
        f"{callers} caller(s), "
        f"{args.rounds} rounds of {slice_s:g} s per arm, {os.cpu_count()} CPU(s); medians over rounds"
    )
    plain, echo = Plain(TILES * 1 * SIZE * SIZE * 4), Plain(-1)
    work = tempfile.TemporaryDirectory(prefix="constellation-bench-infer-")
    try:
        for name in args.models.split(","):
            folder = write_model(Path(work.name) / name, name)
            predict, expected = in_process_model(folder, name)
            process, address = start_server(
                [sys.executable, "-m", "model_runtime", "--model-dir", str(folder), "--port", "0"]
            )
            triton = None
            try:
                wait_ready(address, name)
                client = InferenceClient(address)
                batch = tiles()
                np.testing.assert_allclose(
                    client.infer(name, batch)["water_probability"], expected, rtol=1e-6, atol=1e-6
                )
                triton = Tritonclient(address, name, callers, expected)
                arms: dict[str, list[float]] = {k: [] for k in ("a", "b", "echo", "c", "d")}
                cpu: dict[str, list[float]] = {k: [] for k in ("a", "b", "c", "d")}
                for _ in range(args.rounds):
                    before = time.process_time()  # only the caller thread is busy during (a)
                    arms["a"].append(rate(predict, slice_s))
                    cpu["a"].append((time.process_time() - before) * 1000 / max(arms["a"][-1] * slice_s / TILES, 1))
                    arms["b"].append(served(plain.process.pid, lambda: plain.rate(slice_s, callers), cpu["b"], slice_s))
                    arms["echo"].append(echo.rate(slice_s, callers))
                    arms["c"].append(
                        served(
                            process.pid,
                            lambda: rate(lambda: client.infer(name, batch), slice_s, callers),  # noqa: B023 -- called in this iteration
                            cpu["c"],
                            slice_s,
                        )
                    )
                    arms["d"].append(
                        served(process.pid, lambda: triton.rate(slice_s), cpu["d"], slice_s)  # noqa: B023 -- called here
                    )
                client.close()
            finally:
                if triton is not None:
                    triton.close()
                stop_server(process)
            a, b, e, c, d = (median(arms[k]) for k in ("a", "b", "echo", "c", "d"))

            def ratio(x: str, y: str) -> float:
                return median([p / q for p, q in zip(arms[x], arms[y], strict=True)])  # noqa: B023 -- used in this iteration

            print(f"{name}:")
            compute_ms = median(cpu["a"])
            print(
                f"  (a) predict() in-process                          {a:7.0f} tiles/s   CPU {compute_ms:5.1f} ms "
                "per batch"
            )
            print(
                f"  (b) plain grpcio, 8 MiB in / 2 MiB out, no work   {b:7.0f} tiles/s   server CPU "
                f"{median(cpu['b']):5.1f} ms per batch"
            )
            print(f"      plain grpcio echo, 8 MiB in / 8 MiB out       {e:7.0f} tiles/s")
            print(
                f"  (c) runtime, our client (raw_input_contents)      {c:7.0f} tiles/s   server CPU "
                f"{median(cpu['c']):5.1f} ms per batch"
                f" ({median(cpu['c']) - compute_ms:+.1f} ms beside predict)"
            )
            print(
                f"  (d) runtime, tritonclient (own process)           {d:7.0f} tiles/s   server CPU "
                f"{median(cpu['d']):5.1f} ms per batch"
                f" ({median(cpu['d']) - compute_ms:+.1f} ms beside predict)"
            )
            serial = [1 / (1 / x + 1 / y) for x, y in zip(arms["a"], arms["b"], strict=True)]
            print(
                f"      serial bound 1/(1/a + 1/b)                    {median(serial):7.0f} tiles/s"
                "   (one caller waits for each reply: transport and compute add up)"
            )
            print(
                f"      (c)/(b) {ratio('c', 'b'):.2f}  (c)/(a) {ratio('c', 'a'):.2f}  (d)/(b) "
                f"{ratio('d', 'b'):.2f}  (d)/(a) {ratio('d', 'a'):.2f}"
                f"  (c)/echo {ratio('c', 'echo'):.2f}  (d)/echo {ratio('d', 'echo'):.2f}"
                f"  (c)/serial {median([c / x for c, x in zip(arms['c'], serial, strict=True)]):.2f}"
            )
    finally:
        plain.close()
        echo.close()
        work.cleanup()


if __name__ == "__main__":
    main()
