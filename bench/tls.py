"""What TLS costs: the gateway with TLS and mTLS vs plaintext, the auth check per call, ModelInfer over mTLS.

    .venv/bin/python bench/tls.py [--seconds 12] [--concurrency 4] [--rounds 3]

All in one run, each figure against a baseline measured in the same run, in
alternating rounds (medians over rounds) so load from other processes hits
every arm alike:

1. Gateway: core (SQLite, log level WARNING) behind the real Envoy, three ways:
   plaintext everywhere; TLS from the client to Envoy and mTLS from Envoy to
   core (`constellation up --tls`); the same with Envoy also requiring a client
   certificate (CONSTELLATION_GATEWAY_REQUIRE_CLIENT_CERT). `concurrency`
   closed-loop callers on one channel call GetDataset; requests/s, p50, and
   the ratio and p50 added against plaintext. Then a new connection per call
   (handshake included), p50 per path.
2. Auth check: `MeshInterceptor` around a no-op GetDataset handler in this
   process, without API keys and with 3 keys (best of alternating repeats);
   µs per call, and the difference. Then the mTLS peer check (`mesh.peers`)
   alone, µs per call.
3. ModelInfer: `python -m model_runtime` serving bench/model_infer.py's ndwi4
   model twice (plaintext, and mTLS with a certificate of the mesh's CA), called
   with clients.inference in batches of 8 tiles of 4x256x256 float32 (8 MiB
   in, 2 MiB out); tiles/s and the mTLS/plaintext ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "gen" / "python")]

import grpc

from bench.gateway_overhead import load, summary
from bench.model_infer import TILES, rate, start_server, stop_server, tiles, write_model
from clients.inference import InferenceClient
from constellation.core.v1 import core_pb2, core_pb2_grpc
from constellation_sdk.client import Client
from gateway import admin
from gateway import supervisor as gateway
from gateway.settings import GatewaySettings
from mesh import certs, peers
from mesh.interceptors import MeshInterceptor
from mesh.services import channel_options
from mesh.tls import TlsFiles, peer_name
from tests.conftest import TEST_STORAGE_ROOTS
from tests.pg import free_port

PATHS = ("plaintext", "tls", "mtls")
REPEATS = 15


def wait_serving(address: str, tls_dir: Path | None, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    with Client(address, tls_dir=tls_dir) as client:
        while not client.serving():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{address} not serving")
            time.sleep(0.1)


def channel_to(address: str, tls_dir: Path | None) -> grpc.Channel:
    if tls_dir is None:
        return grpc.insecure_channel(address, options=channel_options())
    return grpc.secure_channel(address, TlsFiles(tls_dir, "client").channel_credentials(), options=channel_options())


def connect_and_call(address: str, tls_dir: Path | None, request, calls: int) -> list[float]:
    """Seconds for a new channel's first GetDataset (TCP, the TLS handshake if any, HTTP/2 setup, the call)."""
    latencies = []
    for _ in range(calls):
        started = time.perf_counter()
        with channel_to(address, tls_dir) as channel:
            core_pb2_grpc.CoreServiceStub(channel).GetDataset(request, timeout=10)
        latencies.append(time.perf_counter() - started)
    return latencies


def start_core(work: Path, name: str, tls_dir: Path | None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {
        **os.environ,
        "CONSTELLATION_HOME": str(work / name),
        "CONSTELLATION_CORE_PORT": str(port),
        "CONSTELLATION_CORE_METRICS_PORT": "0",
        "CONSTELLATION_LOG_LEVEL": "WARNING",
        "CONSTELLATION_TLS_DIR": str(tls_dir or ""),
        "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'gen' / 'python'}",
    }
    env.pop("DATABASE_URL", None)
    log = open(work / f"{name}.log", "wb")  # noqa: SIM115 -- the process keeps it until it ends
    process = subprocess.Popen([sys.executable, "-m", "core_svc"], env=env, stderr=log)
    address = f"127.0.0.1:{port}"
    wait_serving(address, tls_dir)
    return process, address


def start_envoy(work: Path, name: str, core: str, tls_dir: Path | None, require_client_cert: bool):
    port, unused = free_port(), f"127.0.0.1:{free_port()}"
    folder = work / name
    folder.mkdir()
    socket = admin.socket_path(folder)
    settings = GatewaySettings(
        rate_limit_per_address=0,  # the bench measures the proxy, not the door's rate limits
        rate_limit_per_key=0,
        tls_dir_raw=str(tls_dir or ""),
        require_client_cert=require_client_cert,
    )
    config = folder / "envoy.yaml"
    addresses = {"core": core, "hosting": unused, "orchestrator": unused, "agent": unused}
    config.write_text(gateway.render_config(port, socket, addresses, settings))
    env = {**os.environ, "CONSTELLATION_TLS_DIR": str(tls_dir or "")}
    process = gateway.start_envoy(config, folder / "envoy.log", env)
    gateway.wait_ready(socket, process=process)
    return process, f"127.0.0.1:{port}"


def seed(address: str, tls_dir: Path | None) -> str:
    with channel_to(address, tls_dir) as channel:
        stub = core_pb2_grpc.CoreServiceStub(channel)
        dataset = core_pb2.Dataset(
            name="bench-scene", uri="s3://scenes/1.tif", sensor="sentinel-2", bands=["red", "nir"], resolution_m=10
        )
        return stub.CreateDataset(core_pb2.CreateDatasetRequest(dataset=dataset)).id


def bench_gateway(work: Path, tls_dir: Path, args: argparse.Namespace) -> None:
    started: list[subprocess.Popen] = []
    try:
        plain_core, plain_address = start_core(work, "core-plain", None)
        tls_core, tls_address = start_core(work, "core-tls", tls_dir)
        started += [plain_core, tls_core]
        envoys = {
            "plaintext": (start_envoy(work, "envoy-plain", plain_address, None, False), None),
            "tls": (start_envoy(work, "envoy-tls", tls_address, tls_dir, False), tls_dir),
            "mtls": (start_envoy(work, "envoy-mtls", tls_address, tls_dir, True), tls_dir),
        }
        started += [process for (process, _), _ in envoys.values()]
        requests = {
            "plaintext": core_pb2.GetDatasetRequest(id=seed(plain_address, None)),
            "tls": core_pb2.GetDatasetRequest(id=seed(tls_address, tls_dir)),
        }
        requests["mtls"] = requests["tls"]
        slice_s = args.seconds / args.rounds
        samples: dict[str, list[dict[str, float]]] = {path: [] for path in PATHS}
        handshakes: dict[str, list[float]] = {path: [] for path in PATHS}
        for _ in range(args.rounds):
            for path, ((_, address), folder) in envoys.items():
                latencies = load(
                    address,
                    "GetDataset",
                    requests[path],
                    slice_s,
                    args.concurrency,
                    lambda target, folder=folder: channel_to(target, folder),
                )
                samples[path].append(summary(latencies, slice_s))
                handshakes[path] += connect_and_call(address, folder, requests[path], 20)
        print(
            f"\n1. gateway: GetDataset through Envoy, {args.concurrency} callers on one channel, "
            f"{args.rounds} rounds of {slice_s:g} s per path; medians over rounds"
        )
        print(
            f"   {'path':<11}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'vs plaintext':>15}{'p50 added':>11}"
            f"{'new conn p50':>14}"
        )
        base = samples["plaintext"]
        for path in PATHS:
            rps = statistics.median(s["rps"] for s in samples[path])
            p50 = statistics.median(s["p50_ms"] for s in samples[path])
            p99 = statistics.median(s["p99_ms"] for s in samples[path])
            ratio = statistics.median(s["rps"] / b["rps"] for s, b in zip(samples[path], base, strict=True))
            added = statistics.median(s["p50_ms"] - b["p50_ms"] for s, b in zip(samples[path], base, strict=True))
            connect = statistics.median(handshakes[path]) * 1000
            print(f"   {path:<11}{rps:>8.0f}{p50:>9.2f}{p99:>9.2f}{ratio:>15.2f}{added:>+10.2f}{connect:>11.2f} ms")
    finally:
        for process in reversed(started):
            process.terminate()
            process.wait(15)


class _Context:
    """The part of grpc.ServicerContext the interceptor and the peer check use."""

    def __init__(self, auth: dict[str, list[bytes]] | None = None) -> None:
        self._auth = auth or {}

    def send_initial_metadata(self, metadata: object) -> None:
        pass

    def code(self) -> None:
        return None

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._auth


def bench_auth(calls: int) -> None:
    method = "/constellation.core.v1.CoreService/GetDataset"
    request = core_pb2.GetDatasetRequest(id="ds_0123456789abcdef")
    reply = core_pb2.Dataset()
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: reply)
    keys = {"viewer-key-0123456789": "viewer", "editor-key-0123456789": "editor", "admin-key-0123456789": "admin"}
    metadata = (("authorization", "Bearer admin-key-0123456789"), ("x-request-id", "bench-1"))
    details = type("Details", (), {"method": method, "invocation_metadata": metadata})()
    context = _Context()

    def per_call(interceptor: MeshInterceptor) -> Callable[[], object]:
        def call() -> object:
            return interceptor.intercept_service(lambda _: handler, details).unary_unary(request, context)

        return call

    arms = {"no keys": per_call(MeshInterceptor("core", {})), "3 keys": per_call(MeshInterceptor("core", keys))}
    peer_context = _Context({"transport_security_type": [b"ssl"], "peer_uri": [b"spiffe://constellation/gateway"]})
    arms["peer check"] = lambda: peers.denial(method, peer_name(peer_context))
    results: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(REPEATS):
        for name, call in arms.items():
            results[name].append(timeit.timeit(call, number=calls) / calls * 1e6)
    # The fastest repeat is the one least disturbed by other processes (timeit's own advice).
    none, keyed = min(results["no keys"]), min(results["3 keys"])
    print(f"\n2. auth check: MeshInterceptor around a no-op GetDataset, best of {REPEATS} x {calls} calls, alternating")
    print(f"   whole interceptor without API keys {none:7.2f} µs per call")
    print(f"   whole interceptor with 3 API keys  {keyed:7.2f} µs per call   (key check: {keyed - none:+.2f} µs)")
    print(f"   mTLS peer check (mesh.peers)       {min(results['peer check']):7.2f} µs per call")


def bench_infer(work: Path, tls_dir: Path, args: argparse.Namespace) -> None:
    folder = write_model(work / "ndwi4", "ndwi4")
    endpoint = TlsFiles(tls_dir, "hosting")
    servers = {
        "plaintext": start_server([sys.executable, "-m", "model_runtime", "--model-dir", str(folder), "--port", "0"]),
        "mtls": start_server(
            [
                sys.executable,
                "-m",
                "model_runtime",
                "--model-dir",
                str(folder),
                "--port",
                "0",
                "--tls-cert",
                str(endpoint.cert),
                "--tls-key",
                str(endpoint.key),
                "--tls-client-ca",
                str(endpoint.ca),
            ]
        ),
    }
    credentials = {"plaintext": None, "mtls": TlsFiles(tls_dir, "orchestrator").channel_credentials()}
    clients = {
        path: InferenceClient(address, "ndwi4", credentials=credentials[path]) for path, (_, address) in servers.items()
    }
    try:
        batch = tiles()
        for client in clients.values():
            client.wait_ready(60)
        slice_s = args.infer_seconds / args.rounds
        arms: dict[str, list[float]] = {path: [] for path in servers}
        for _ in range(args.rounds):
            for path, client in clients.items():
                arms[path].append(rate(lambda c=client: c.infer("ndwi4", batch), slice_s))
        ratio = statistics.median(m / p for m, p in zip(arms["mtls"], arms["plaintext"], strict=True))
        print(
            f"\n3. ModelInfer: model_runtime serving ndwi4, batches of {TILES} tiles (8 MiB in, 2 MiB out), "
            f"1 caller, {args.rounds} rounds of {slice_s:g} s per path; medians"
        )
        for path, values in arms.items():
            print(f"   {path:<10} {statistics.median(values):7.0f} tiles/s")
        print(f"   mtls/plaintext throughput {ratio:.2f}")
    finally:
        for client in clients.values():
            client.close()
        for process, _ in servers.values():
            stop_server(process)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=12.0, help="gateway: per path, split over the rounds")
    parser.add_argument("--infer-seconds", type=float, default=9.0, help="ModelInfer: per path, split over the rounds")
    parser.add_argument("--concurrency", type=int, default=4, help="gateway callers")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--auth-calls", type=int, default=5000, help="per repeat of each auth arm")
    args = parser.parse_args()
    os.environ.update(TEST_STORAGE_ROOTS)
    with tempfile.TemporaryDirectory(prefix="constellation-bench-tls-") as name:
        work = Path(name)
        tls_dir = work / "certs"
        certs.issue(tls_dir)
        print(f"{os.cpu_count()} CPU(s); certificates: ECDSA P-256 from `constellation certs`")
        bench_gateway(work, tls_dir, args)
        bench_auth(args.auth_calls)
        bench_infer(work, tls_dir, args)


if __name__ == "__main__":
    main()
