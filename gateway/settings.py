"""The gateway's settings: Envoy's ports and workers, and what the console's static server serves."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

from mesh.config import (
    DEFAULT_GATEWAY_ADMIN_PORT,
    DEFAULT_GATEWAY_PORT,
    EnvSettings,
    env_field,
    home_dir,
    parse_api_keys,
    secret_field,
)

WEB_DIST = Path(__file__).resolve().parent.parent / "web" / "dist"


class GatewaySettings(EnvSettings):
    port: int = env_field(
        "CONSTELLATION_GATEWAY_PORT", DEFAULT_GATEWAY_PORT, "gRPC, gRPC-web and the console", ge=0, le=65535
    )
    admin_port: int = env_field(
        "CONSTELLATION_GATEWAY_ADMIN_PORT", DEFAULT_GATEWAY_ADMIN_PORT, "Envoy's admin port", ge=0, le=65535
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

    @property
    def web_root(self) -> Path:
        return Path(self.web_root_raw) if self.web_root_raw else WEB_DIST

    @property
    def outputs_dir(self) -> Path:
        """Where runs write local results: the agent's file:// export destination, else $CONSTELLATION_HOME/outputs."""
        if self.export_uri.startswith("file:///"):
            return Path(urllib.parse.unquote(urllib.parse.urlparse(self.export_uri).path))
        return (home_dir({"CONSTELLATION_HOME": self.home_raw}) / "outputs").resolve()

    @property
    def api_keys(self) -> set[str]:
        """The mesh's API keys, whatever their role: reading run outputs is a Get."""
        keys = set(parse_api_keys(self.api_keys_raw))
        if self.api_key_raw:
            keys.add(self.api_key_raw)
        return keys
