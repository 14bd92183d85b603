"""Envoy's admin interface, which listens only on a Unix socket with 0600 permissions (see envoy/envoy.yaml):
a process must run as the gateway's user to read its stats, let alone POST /quitquitquit.

`python -m gateway.admin SOCKET [PATH]` prints the answer to GET PATH (default /ready) and exits 0 on 200;
compose's health check and anyone debugging the gateway use it (or `curl --unix-socket SOCKET http://envoy/...`).
"""

from __future__ import annotations

import http.client
import socket
import sys
from pathlib import Path

SOCKET_NAME = "envoy-admin.sock"
# sockaddr_un's sun_path holds 108 bytes on Linux, the terminating NUL included.
MAX_SOCKET_PATH_BYTES = 107


def socket_path(run_dir: Path) -> Path:
    """The admin socket in a mesh's run folder; raises ValueError when the path is too long for a socket."""
    path = run_dir.resolve() / SOCKET_NAME
    if len(str(path).encode()) > MAX_SOCKET_PATH_BYTES:
        raise ValueError(
            f"Envoy's admin socket path {path} is longer than {MAX_SOCKET_PATH_BYTES} bytes; "
            "use a shorter CONSTELLATION_HOME"
        )
    return path


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout_s: float) -> None:
        super().__init__("envoy", timeout=timeout_s)
        self._path = str(path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def request(path: Path, method: str, url: str, timeout_s: float = 2.0) -> tuple[int, str]:
    """One admin request over the socket: (HTTP status, body). Raises OSError when nothing answers there."""
    connection = _UnixConnection(path, timeout_s)
    try:
        connection.request(method, url)
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        connection.close()


def main(argv: list[str]) -> int:
    if not 1 <= len(argv) <= 2:
        print("usage: python -m gateway.admin SOCKET [PATH]", file=sys.stderr)
        return 2
    try:
        status, body = request(Path(argv[0]), "GET", argv[1] if len(argv) > 1 else "/ready")
    except OSError as error:
        print(f"no answer on {argv[0]}: {error}", file=sys.stderr)
        return 1
    print(body, end="")
    return 0 if status == 200 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
