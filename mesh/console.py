"""The web console's static side: the built page (web/dist) at `/` and run outputs read-only at `/files/`.

Envoy cannot serve files, so the gateway supervisor (mesh/gateway.py) runs
this small HTTP server beside Envoy and Envoy routes every non-gRPC path to
it: one address serves the page and the API. `/files/<path>` serves only
regular files under the outputs folder (the local export destination); any
path that resolves outside it (`..`, symlinks) is a 404. `/console.json`
tells the page which `file://` prefix maps to `/files/`.
"""

from __future__ import annotations

import json
import mimetypes
import os
import threading
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from mesh import config

WEB_DIST = Path(__file__).resolve().parent.parent / "web" / "dist"

NOT_BUILT = b"""<!doctype html><meta charset="utf-8"><title>Constellation</title>
<body style="font-family:sans-serif;margin:3em">
<h1>Constellation</h1><p>The gateway is up, but the web console is not built.
Run <code>make web</code> and reload this page.</p></body>
"""


def outputs_dir(env: dict[str, str]) -> Path:
    """Where runs write local results: the agent's file:// export destination, else $CONSTELLATION_HOME/outputs."""
    export_uri = env.get("CONSTELLATION_AGENT_EXPORT_URI", "").strip()
    if export_uri.startswith("file:///"):
        return Path(urllib.parse.unquote(urllib.parse.urlparse(export_uri).path))
    return (config.home_dir(env) / "outputs").resolve()


def _inside(root: Path, relative: str) -> Path | None:
    """The regular file at root/relative, or None when it is missing or escapes root."""
    try:
        root = root.resolve()
        candidate = (root / relative.lstrip("/")).resolve()
    except (OSError, RuntimeError, ValueError):
        return None
    if not candidate.is_relative_to(root) or not candidate.is_file():
        return None
    return candidate


class ConsoleHandler(BaseHTTPRequestHandler):
    server_version = "constellation-console"
    web_root: Path = WEB_DIST
    files_root: Path = Path("/nonexistent")

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass  # Envoy logs access; keep the supervisor's log for errors.

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
        self._serve(head=True)

    def do_GET(self) -> None:  # noqa: N802
        self._serve(head=False)

    def _serve(self, head: bool) -> None:
        path = urllib.parse.unquote(urllib.parse.urlparse(self.path).path)
        if path == "/console.json":
            body = json.dumps({"outputs_uri": self.files_root.resolve().as_uri()}).encode()
            return self._send(HTTPStatus.OK, body, "application/json", head, cache="no-store")
        if path.startswith("/files/"):
            found = _inside(self.files_root, path.removeprefix("/files/"))
            if found is None:
                return self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain", head)
            return self._send_file(found, head, cache="no-store")
        if path in ("", "/"):
            path = "/index.html"
        found = _inside(self.web_root, path)
        if found is None:
            if path == "/index.html":
                return self._send(HTTPStatus.OK, NOT_BUILT, "text/html; charset=utf-8", head, cache="no-store")
            return self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain", head)
        # Vite names assets by content hash; the page itself must always be fresh.
        cache = "public, max-age=31536000, immutable" if path.startswith("/assets/") else "no-cache"
        self._send_file(found, head, cache=cache)

    def _send_file(self, path: Path, head: bool, cache: str) -> None:
        media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if path.suffix in (".geojson",):
            media_type = "application/geo+json"
        self._send(HTTPStatus.OK, b"" if head else path.read_bytes(), media_type, head, cache=cache, length=path.stat().st_size)

    def _send(self, status: HTTPStatus, body: bytes, media_type: str, head: bool, cache: str = "no-cache", length: int | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", media_type)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.send_header("Cache-Control", cache)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        if not head:
            self.wfile.write(body)


def serve(port: int, web_root: Path, files_root: Path) -> ThreadingHTTPServer:
    """Start the console server on 127.0.0.1:port (0 picks a free one) in a daemon thread."""
    handler = type("BoundConsoleHandler", (ConsoleHandler,), {"web_root": web_root, "files_root": files_root})
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="console", daemon=True).start()
    return server


def serve_from_env(env: dict[str, str] | None = None) -> ThreadingHTTPServer:
    env = dict(os.environ) if env is None else env
    web_root = Path(env.get("CONSTELLATION_CONSOLE_WEB_ROOT") or WEB_DIST)
    port = int(env.get("CONSTELLATION_CONSOLE_PORT") or 0)
    return serve(port, web_root, outputs_dir(env))
