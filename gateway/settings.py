"""The gateway's settings: Envoy's ports, workers and limits at the door, and what the console's static server
serves."""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field

from mesh.config import (
    DEFAULT_GATEWAY_PORT,
    EnvSettings,
    auth_field,
    comma_list,
    env_field,
    generated_admin_key,
    home_path,
    parse_api_keys,
    secret_field,
    tls_dir,
)

WEB_DIST = Path(__file__).resolve().parent.parent / "web" / "dist"


class GatewaySettings(EnvSettings):
    port: int = env_field(
        "CONSTELLATION_GATEWAY_PORT", DEFAULT_GATEWAY_PORT, "gRPC, gRPC-web and the console", ge=0, le=65535
    )
    admin_port: int = env_field(
        "CONSTELLATION_GATEWAY_ADMIN_PORT",
        0,
        "deprecated and ignored: Envoy's admin is the Unix socket run/envoy-admin.sock (0600) under "
        "CONSTELLATION_HOME; `python -m gateway.admin` talks to it",
        ge=0,
        le=65535,
    )
    hosts_raw: str = env_field(
        "CONSTELLATION_GATEWAY_HOSTS",
        "",
        "Host names the gateway answers besides localhost, 127.0.0.1 and [::1] (each with and without its port), "
        "comma separated, e.g. `mesh.example.org,mesh.example.org:443`; any other Host gets 403",
    )
    cors_origins_raw: str = env_field(
        "CONSTELLATION_GATEWAY_CORS_ORIGINS",
        "",
        "origins allowed to call the gateway from a browser besides its own (http://localhost:PORT, "
        "http://127.0.0.1:PORT), comma separated, e.g. `http://localhost:5173` for the Vite dev server",
    )
    rate_limit_per_address: int = env_field(
        "CONSTELLATION_GATEWAY_RATE_LIMIT_PER_ADDRESS",
        500,
        "requests per second one client address may make (a burst of as many); 0: no limit",
        ge=0,
    )
    rate_limit_per_key: int = env_field(
        "CONSTELLATION_GATEWAY_RATE_LIMIT_PER_KEY",
        500,
        "requests per second one API key (x-api-key or authorization) may make (a burst of as many); 0: no limit",
        ge=0,
    )
    max_connections: int = env_field(
        "CONSTELLATION_GATEWAY_MAX_CONNECTIONS",
        4096,
        "client connections the gateway holds at once; more are closed on accept",
        ge=1,
    )
    max_request_mb: float = env_field(
        "CONSTELLATION_GATEWAY_MAX_REQUEST_MB",
        4.0,
        "largest request body the gateway lets through, MiB (never more than CONSTELLATION_MAX_MESSAGE_MB); "
        "larger ones get HTTP 413 or gRPC RESOURCE_EXHAUSTED",
        gt=0,
    )
    stream_idle_timeout_s: float = env_field(
        "CONSTELLATION_GATEWAY_STREAM_IDLE_TIMEOUT_S",
        300.0,
        "a request or stream with no traffic either way for this long is closed (Watch streams: "
        "CONSTELLATION_GATEWAY_WATCH_IDLE_TIMEOUT_S)",
        gt=0,
    )
    watch_idle_timeout_s: float = env_field(
        "CONSTELLATION_GATEWAY_WATCH_IDLE_TIMEOUT_S",
        0.0,
        "a Watch stream with no event for this long is closed (the client sees INTERNAL: RST_STREAM); 0: never, "
        "as services send no heartbeat (keepalives close the streams of clients that are gone)",
        ge=0,
    )
    tls_dir_raw: str = env_field(
        "CONSTELLATION_TLS_DIR",
        "",
        "the mesh's certificates: the gateway serves HTTPS and gRPC over TLS with gateway.crt (ALPN h2, http/1.1) "
        "and calls services and the console with mTLS; empty: plaintext",
    )
    require_client_cert: bool = env_field(
        "CONSTELLATION_GATEWAY_REQUIRE_CLIENT_CERT",
        False,
        "with TLS, also require clients to present a certificate from the mesh's CA (mTLS at the door; browsers "
        "then need client.crt installed)",
    )
    workers: int = env_field("CONSTELLATION_GATEWAY_WORKERS", 1, "Envoy worker threads (--concurrency)", ge=1)
    console_port: int = env_field(
        "CONSTELLATION_CONSOLE_PORT", 0, "the console's static server on 127.0.0.1 (0: a free port)", ge=0
    )
    web_root_raw: str = env_field("CONSTELLATION_CONSOLE_WEB_ROOT", "", "the built console (default web/dist)")
    export_uri: str = env_field(
        "CONSTELLATION_AGENT_EXPORT_URI", "", "the agent's export destination: a file:/// one is what /files/ serves"
    )
    home_raw: str = env_field("CONSTELLATION_HOME", "", "local state; /files/ serves its outputs/ by default")
    api_keys_raw: str = secret_field("CONSTELLATION_API_KEYS", "the mesh's API keys")
    api_key_raw: str = secret_field("CONSTELLATION_API_KEY", "one more admin key")
    auth: Literal["on", "off"] = auth_field()
    login_ttl_s: float = env_field(
        "CONSTELLATION_CONSOLE_LOGIN_TTL_S",
        3600.0,
        "how long a console login link (`constellation up`, `constellation login-link`) stays valid, seconds; "
        "each link works once",
        gt=0,
    )
    generated_admin_key: str = Field(
        default="",
        repr=False,
        description="the key in $CONSTELLATION_HOME/credentials/admin.key (set by load(), not read)",
    )

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None) -> GatewaySettings:
        """from_env(env) with the generated admin key when no key is configured; raises ConfigError when
        authentication is on and there is no key at all."""
        settings = cls.from_env(env)
        generated = generated_admin_key(settings.auth, settings.configured_api_keys, settings.home)
        return settings.model_copy(update={"generated_admin_key": generated}) if generated else settings

    @property
    def web_root(self) -> Path:
        return Path(self.web_root_raw) if self.web_root_raw else WEB_DIST

    @property
    def outputs_dir(self) -> Path:
        """Where runs write local results: the agent's file:// export destination, else $CONSTELLATION_HOME/outputs."""
        if self.export_uri.startswith("file:///"):
            return Path(urllib.parse.unquote(urllib.parse.urlparse(self.export_uri).path))
        return (self.home / "outputs").resolve()

    @property
    def tls_dir(self) -> Path | None:
        return tls_dir(self.tls_dir_raw)

    @property
    def hosts(self) -> list[str]:
        return [host.lower() for host in comma_list(self.hosts_raw)]

    @property
    def cors_origins(self) -> list[str]:
        return [origin.rstrip("/") for origin in comma_list(self.cors_origins_raw)]

    @property
    def home(self) -> Path:
        return home_path(self.home_raw)

    @property
    def configured_api_keys(self) -> dict[str, str]:
        return parse_api_keys(self.api_keys_raw, self.api_key_raw)

    @property
    def api_keys(self) -> set[str]:
        """The keys the console's /files/ accepts, whatever their role (reading run outputs is a Get): the
        configured ones, else the generated admin key; empty when authentication is off."""
        if self.auth == "off":
            return set()
        return set(self.configured_api_keys) or ({self.generated_admin_key} if self.generated_admin_key else set())


class TileSettings(EnvSettings):
    """The map's tile server (gateway/tiles.py), run by the gateway supervisor beside the console server."""

    enabled: bool = env_field(
        "CONSTELLATION_TILES", True, "serve map tiles of run results and scenes at /tiles/ (false: /tiles/ is a 404)"
    )
    max_size_px: int = env_field(
        "CONSTELLATION_TILES_MAX_SIZE_PX",
        512,
        "largest tile edge a request may ask for (tilesize), pixels",
        ge=64,
        le=4096,
    )
    threads: int = env_field(
        "CONSTELLATION_TILES_THREADS",
        8,
        "tiles rendered at once (reads of COGs run on this many threads)",
        ge=1,
        le=256,
    )
    cache_max_age_s: int = env_field(
        "CONSTELLATION_TILES_CACHE_MAX_AGE_S",
        300,
        "how long a browser may reuse a tile (Cache-Control, private)",
        ge=0,
    )
    max_geojson_mb: int = env_field(
        "CONSTELLATION_TILES_MAX_GEOJSON_MB",
        32,
        "largest GeoJSON output /tiles/geojson reprojects for the map, MiB",
        ge=1,
    )
    s3_endpoint: str = env_field(
        "CONSTELLATION_S3_ENDPOINT_URL", "", "S3-compatible endpoint for s3:// COGs (the orchestrator's setting)"
    )
    aws_s3_endpoint: str = env_field("AWS_ENDPOINT_URL_S3", "", "used when CONSTELLATION_S3_ENDPOINT_URL is empty")

    @property
    def s3_endpoint_url(self) -> str:
        return self.s3_endpoint or self.aws_s3_endpoint
