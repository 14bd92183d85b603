"""`python -m gateway`: the gateway alone, in the foreground (a container's command, under compose and on
Kubernetes).

Renders envoy.yaml from the settings into $CONSTELLATION_HOME (the listener on CONSTELLATION_HOST, the
services at CONSTELLATION_<SERVICE>_ADDR, names resolved by DNS; TLS with CONSTELLATION_TLS_DIR) and runs
Envoy under the supervisor, which also serves the console. `constellation up` starts the gateway its own way
(mesh_process.py).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

from gateway import admin, supervisor
from gateway.settings import GatewaySettings
from mesh import config


def render(env: Mapping[str, str] | None = None) -> Path:
    """Write envoy.yaml for the settings in `env` (default the process's) into their home; its path."""
    mesh = config.Settings.from_env(env)
    settings = GatewaySettings.from_env(env)
    settings = settings.model_copy(update={"max_request_mb": min(settings.max_request_mb, mesh.max_message_mb)})
    mesh.home.mkdir(parents=True, exist_ok=True)
    admin_socket = admin.socket_path(mesh.home)
    admin_socket.unlink(missing_ok=True)
    path = mesh.home / "envoy.yaml"
    path.write_text(supervisor.render_config(settings.port, admin_socket, mesh.peers, settings, listen_host=mesh.host))
    return path


def main() -> int:
    return supervisor.supervise(render())


if __name__ == "__main__":
    sys.exit(main())
