"""The web console's static side: the built page (web/dist) at `/` and run outputs read-only at `/files/`.

Envoy cannot serve files, so the gateway supervisor (gateway/supervisor.py) runs
this small HTTP server beside Envoy and Envoy routes every non-gRPC path to
it: one address serves the page and the API. `/files/<path>` serves only
regular files under the outputs folder (the local export destination); any
path that resolves outside it (`..`, symlinks) is a 404. When the mesh has
API keys (CONSTELLATION_API_KEYS / CONSTELLATION_API_KEY), `/files/` wants one
too, in the `constellation_api_key` cookie the page sets (an <img> cannot send
headers). `/console.json` tells the page which `file://` prefix maps to
`/files/` and whether it needs a key. With the mesh's certificates
(CONSTELLATION_TLS_DIR) it serves HTTPS with the gateway's certificate and
takes only connections presenting that same certificate: Envoy's, the one hop
that reaches it.
"""

from __future__ import annotations

import hmac
import json
import mimetypes
import socket
import ssl
import threading
import urllib.parse
from collections.abc import Mapping
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from gateway.settings import WEB_DIST, GatewaySettings
from mesh.tls import SPIFFE_PREFIX, TlsFiles

NOT_BUILT = b"""<!doctype html><meta charset="utf-8"><title>Constellation</title>
<body style="font-family:sans-serif;margin:3em">
<h1>Constellation</h1><p>The gateway is up, but the web console is not built.
Run <code>make web</code> and reload this page.</p></body>
"""


KEY_COOKIE = "constellation_api_key"


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
    keys: frozenset[str] = frozenset()

    def log_message(self, format: str, *args: object) -> None:  # the base class's name
        pass  # Envoy logs access; keep the supervisor's log for errors.

    def do_HEAD(self) -> None:  # http.server's naming
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def _serve(self, head: bool) -> None:
        path = urllib.parse.unquote(urllib.parse.urlparse(self.path).path)
        if path == "/console.json":
            body = json.dumps({"outputs_uri": self.files_root.resolve().as_uri(), "auth": bool(self.keys)}).encode()
            return self._send(HTTPStatus.OK, body, "application/json", head, cache="no-store")
        if path.startswith("/files/"):
            if not self._key_ok():
                return self._send(
                    HTTPStatus.UNAUTHORIZED, b"an API key is required: set it in the console\n", "text/plain", head
                )
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

    def _key_ok(self) -> bool:
        if not self.keys:
            return True
        try:
            morsel = SimpleCookie(self.headers.get("Cookie", "")).get(KEY_COOKIE)
        except CookieError:
            return False
        presented = urllib.parse.unquote(morsel.value) if morsel else ""
        return any(hmac.compare_digest(presented.encode(), key.encode()) for key in self.keys)

    def _send_file(self, path: Path, head: bool, cache: str) -> None:
        media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if path.suffix in (".geojson",):
            media_type = "application/geo+json"
        self._send(
            HTTPStatus.OK, b"" if head else path.read_bytes(), media_type, head, cache=cache, length=path.stat().st_size
        )

    def _send(
        self,
        status: HTTPStatus,
        body: bytes,
        media_type: str,
        head: bool,
        cache: str = "no-cache",
        length: int | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", media_type)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.send_header("Cache-Control", cache)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        if not head:
            self.wfile.write(body)


HANDSHAKE_TIMEOUT_S = 10.0


def gateway_only_context(tls: TlsFiles) -> ssl.SSLContext:
    """Serve with the gateway's certificate; require a client certificate from the mesh's CA."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(tls.ca))
    context.load_cert_chain(str(tls.cert), str(tls.key))
    context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["http/1.1"])
    return context


class _TlsConsoleServer(ThreadingHTTPServer):
    """HTTPS whose handshake runs in the connection's own thread (a slow peer never stalls accept), and that serves
    only the peer whose certificate names the gateway."""

    context: ssl.SSLContext

    def finish_request(self, request: socket.socket | tuple[bytes, socket.socket], client_address: object) -> None:
        assert isinstance(request, socket.socket)
        request.settimeout(HANDSHAKE_TIMEOUT_S)
        try:
            wrapped = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return  # no certificate of the mesh's CA, or a broken handshake: nothing to serve
        names = dict(wrapped.getpeercert() or {}).get("subjectAltName", ())
        if ("URI", SPIFFE_PREFIX + "gateway") in names:
            wrapped.settimeout(None)
            super().finish_request(wrapped, client_address)
        wrapped.close()


def serve(
    port: int, web_root: Path, files_root: Path, keys: set[str] | None = None, tls: TlsFiles | None = None
) -> ThreadingHTTPServer:
    """Start the console server on 127.0.0.1:port (0 picks a free one) in a daemon thread; HTTPS for the gateway
    only with `tls`."""
    attributes = {"web_root": web_root, "files_root": files_root, "keys": frozenset(keys or ())}
    handler = type("BoundConsoleHandler", (ConsoleHandler,), attributes)
    server: ThreadingHTTPServer
    if tls is not None:
        server = _TlsConsoleServer(("127.0.0.1", port), handler)
        server.context = gateway_only_context(tls.check())
    else:
        server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="console", daemon=True).start()
    return server


def serve_from_env(env: Mapping[str, str] | None = None) -> ThreadingHTTPServer:
    settings = GatewaySettings.from_env(env)
    tls = TlsFiles(settings.tls_dir, "gateway") if settings.tls_dir else None
    return serve(settings.console_port, settings.web_root, settings.outputs_dir, settings.api_keys, tls)
