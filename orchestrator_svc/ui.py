"""`python -m orchestrator_svc.ui [--host 127.0.0.1] [--port 3000]`: dagster-webserver on the orchestrator's instance.

Reads the same settings as the orchestrator (CONSTELLATION_HOME,
CONSTELLATION_ORCHESTRATOR_DAGSTER_HOME, CONSTELLATION_DAGSTER_POSTGRES_URL),
writes the same dagster.yaml, and runs the webserver with DAGSTER_HOME
pointing at it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from orchestrator_svc import settings as orchestrator_settings
from orchestrator_svc.instance import ensure_instance_config


def command(host: str, port: int) -> list[str]:
    webserver = shutil.which("dagster-webserver", path=str(Path(sys.executable).parent)) or shutil.which(
        "dagster-webserver"
    )
    if webserver is None:
        raise SystemExit("dagster-webserver is not installed (it is in requirements.lock)")
    return [webserver, "-h", host, "-p", str(port), "-m", "orchestrator_svc.definitions"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator_svc.ui", description="Open the Dagster UI on the orchestrator's instance."
    )
    parser.add_argument("--host", default=os.environ.get("CONSTELLATION_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("CONSTELLATION_DAGSTER_UI_PORT", "3000")))
    args = parser.parse_args(argv)
    settings = orchestrator_settings.load()
    home = ensure_instance_config(settings)
    os.environ["DAGSTER_HOME"] = str(home)
    argv_ = command(args.host, args.port)
    print(f"Dagster UI for {home} on http://{args.host}:{args.port}", file=sys.stderr, flush=True)
    os.execv(argv_[0], argv_)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
