"""python -m model_runtime --model-dir DIR [--host 127.0.0.1] [--port 8001]"""

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from model_runtime.manifest import ManifestError
from model_runtime.server import ModelServer


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m model_runtime", description="Serve a model folder over the Open Inference Protocol (gRPC).")
    parser.add_argument("--model-dir", type=Path, required=True, help="folder holding constellation.yaml")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--workers", type=int, default=16, help="gRPC worker threads")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s model_runtime %(levelname)s %(message)s")
    try:
        server = ModelServer(args.model_dir, args.host, args.port, args.workers)
    except ManifestError as error:
        for problem in error.problems:
            print(f"constellation.yaml: {problem.field}: {problem.description}", file=sys.stderr)
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    port = server.start()
    logging.info("serving %s:%s on %s:%d", server.model.manifest.name, server.model.manifest.version, args.host, port)
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
