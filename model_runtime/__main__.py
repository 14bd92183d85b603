"""python -m model_runtime --model-dir DIR [--host 127.0.0.1] [--port 8001] [--workers 16]

Each flag defaults to an environment variable, then to a value that works locally:
CONSTELLATION_MODEL_DIR, CONSTELLATION_MODEL_HOST (127.0.0.1), CONSTELLATION_MODEL_PORT
(8001; 0 picks a free port, logged on start), CONSTELLATION_MODEL_WORKERS (16).

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
from model_runtime.server import ModelServer

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
    args = parser.parse_args(argv)
    if args.model_dir is None:
        parser.error("--model-dir (or CONSTELLATION_MODEL_DIR) is required")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s model_runtime %(levelname)s %(message)s")
    try:
        server = ModelServer(args.model_dir, args.host, args.port, args.workers)
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
    log.info("serving %s:%s on %s:%d", server.model.manifest.name, server.model.manifest.version, args.host, port)
    stop.wait()
    failed = server.model.error is not None
    server.stop(0 if failed else 5.0)
    if failed:
        log.error("exiting: the model failed to load (%s)", type(server.model.error).__name__)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
