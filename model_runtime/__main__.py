"""python -m model_runtime --model-dir DIR [--host 127.0.0.1] [--port 8001] [--workers 16]
                          [--tls-cert PEM --tls-key PEM [--tls-client-ca PEM]]

Each flag defaults to an environment variable, then to a value that works locally:
CONSTELLATION_MODEL_DIR, CONSTELLATION_MODEL_HOST (127.0.0.1), CONSTELLATION_MODEL_PORT
(8001; 0 picks a free port, logged on start), CONSTELLATION_MODEL_WORKERS (16),
CONSTELLATION_MODEL_TLS_CERT / _TLS_KEY (serve TLS with this key pair; default plaintext) and
CONSTELLATION_MODEL_TLS_CLIENT_CA (then accept only clients with a certificate from this CA: mTLS).

Exit status: 0 after SIGTERM/SIGINT (graceful, in-flight calls get 5 s); 2 when
constellation.yaml is invalid (one `constellation.yaml: FIELD: PROBLEM` line per
problem on stderr); 3 when the model's import or load() fails (traceback logged);
1 when the address cannot be bound.
"""

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from model_runtime.manifest import ManifestError
from model_runtime.server import ModelServer, ServerTls

log = logging.getLogger("model_runtime")


def main(argv: list[str] | None = None) -> int:
    env = os.environ
    parser = argparse.ArgumentParser(
        prog="python -m model_runtime", description="Serve a model folder over the Open Inference Protocol (gRPC)."
    )
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=env.get("CONSTELLATION_MODEL_DIR"),
        help="folder holding constellation.yaml [CONSTELLATION_MODEL_DIR]",
    )
    parser.add_argument(
        "--host",
        default=env.get("CONSTELLATION_MODEL_HOST", "127.0.0.1"),
        help="address to bind, or unix:/path for a Unix socket [CONSTELLATION_MODEL_HOST, 127.0.0.1]",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(env.get("CONSTELLATION_MODEL_PORT", "8001")),
        help="port; 0 picks a free one [CONSTELLATION_MODEL_PORT, 8001]",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=int(env.get("CONSTELLATION_MODEL_WORKERS", "16")),
        help="gRPC worker threads [CONSTELLATION_MODEL_WORKERS, 16]",
    )
    for flag, variable, what in (
        ("--tls-cert", "CONSTELLATION_MODEL_TLS_CERT", "PEM certificate to serve TLS with"),
        ("--tls-key", "CONSTELLATION_MODEL_TLS_KEY", "its PEM private key"),
        ("--tls-client-ca", "CONSTELLATION_MODEL_TLS_CLIENT_CA", "PEM CA that clients' certificates must come from"),
    ):
        parser.add_argument(flag, type=Path, default=env.get(variable) or None, help=f"{what} [{variable}]")
    args = parser.parse_args(argv)
    if args.model_dir is None:
        parser.error("--model-dir (or CONSTELLATION_MODEL_DIR) is required")
    if (args.tls_cert is None) != (args.tls_key is None) or (args.tls_client_ca and not args.tls_cert):
        parser.error("--tls-cert and --tls-key go together, and --tls-client-ca needs them")
    tls = ServerTls(args.tls_cert, args.tls_key, args.tls_client_ca) if args.tls_cert else None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s model_runtime %(levelname)s %(message)s")
    try:
        server = ModelServer(args.model_dir, args.host, args.port, args.workers, tls)
    except ManifestError as error:
        for problem in error.problems:
            print(f"constellation.yaml: {problem.field}: {problem.description}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"model_runtime: {error}", file=sys.stderr)
        return 1
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server.on_load_failure = stop.set
    port = server.start()
    log.info(
        "serving %s:%s on %s:%d (%s)",
        server.model.manifest.name,
        server.model.manifest.version,
        args.host,
        port,
        "mtls" if args.tls_client_ca else "tls" if tls else "plaintext",
    )
    stop.wait()
    failed = server.model.error is not None
    server.stop(0 if failed else 5.0)
    if failed:
        log.error("exiting: the model failed to load (%s)", type(server.model.error).__name__)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
