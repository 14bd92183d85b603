"""Settings from environment variables, parsed once at start-up.

Every variable has a default that works on a laptop with nothing else
running; `CONSTELLATION_` prefixes ours, ecosystem names (DATABASE_URL) keep
theirs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

# Service name -> (default gRPC port, default metrics port).
DEFAULT_PORTS: dict[str, tuple[int, int]] = {
    "core": (50051, 9101),
    "hosting": (50052, 9102),
    "orchestrator": (50053, 9103),
    "agent": (50054, 9104),
}
DEFAULT_GATEWAY_PORT = 8080
DEFAULT_GATEWAY_ADMIN_PORT = 9901


class ConfigError(ValueError):
    """An environment variable holds a value the service cannot use."""


def _int(env: dict[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None


def _float(env: dict[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None


def home_dir(env: dict[str, str] | None = None) -> Path:
    """Where local state (SQLite database, logs, pids) lives."""
    env = dict(os.environ) if env is None else env
    return Path(env.get("CONSTELLATION_HOME") or Path.home() / ".constellation").expanduser()


@dataclass(frozen=True)
class Settings:
    service: str
    host: str
    port: int
    metrics_port: int
    home: Path
    database_url: str
    # API keys that may call the service, each with its role ("admin" or
    # "reader"). Empty: authentication is off.
    api_keys: dict[str, str] = field(default_factory=dict)
    log_level: str = "INFO"
    log_format: str = "json"
    max_message_bytes: int = 64 * 1024 * 1024
    shutdown_grace_s: float = 10.0
    health_interval_s: float = 2.0
    max_workers: int = 32
    # Addresses (host:port) of the other services, for cross-service calls.
    peers: dict[str, str] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def parse_api_keys(raw: str) -> dict[str, str]:
    """`key` or `key:role`, comma separated; a key without a role is an admin."""
    keys: dict[str, str] = {}
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        key, _, role = item.partition(":")
        role = role or "admin"
        if role not in ("admin", "reader"):
            raise ConfigError(f"CONSTELLATION_API_KEYS: role must be admin or reader, got {role!r}")
        keys[key] = role
    return keys


def load(service: str, env: dict[str, str] | None = None) -> Settings:
    env = dict(os.environ) if env is None else env
    if service not in DEFAULT_PORTS:
        raise ConfigError(f"unknown service {service!r}")
    prefix = f"CONSTELLATION_{service.upper()}_"
    grpc_port, metrics_port = DEFAULT_PORTS[service]
    home = home_dir(env)
    api_keys = parse_api_keys(env.get("CONSTELLATION_API_KEYS", ""))
    if env.get("CONSTELLATION_API_KEY"):
        api_keys[env["CONSTELLATION_API_KEY"]] = "admin"
    host = env.get("CONSTELLATION_HOST", "127.0.0.1")
    peers = {
        name: env.get(f"CONSTELLATION_{name.upper()}_ADDR", f"{host}:{_int(env, f'CONSTELLATION_{name.upper()}_PORT', ports[0])}")
        for name, ports in DEFAULT_PORTS.items()
        if name != service
    }
    return Settings(
        service=service,
        host=host,
        port=_int(env, prefix + "PORT", grpc_port),
        metrics_port=_int(env, prefix + "METRICS_PORT", metrics_port),
        home=home,
        database_url=env.get("DATABASE_URL") or f"sqlite:///{home / 'core.db'}",
        api_keys=api_keys,
        log_level=env.get("CONSTELLATION_LOG_LEVEL", "INFO").upper(),
        log_format=env.get("CONSTELLATION_LOG_FORMAT", "json"),
        max_message_bytes=_int(env, "CONSTELLATION_MAX_MESSAGE_MB", 64) * 1024 * 1024,
        shutdown_grace_s=_float(env, "CONSTELLATION_SHUTDOWN_GRACE_S", 10.0),
        health_interval_s=_float(env, "CONSTELLATION_HEALTH_INTERVAL_S", 2.0),
        max_workers=_int(env, "CONSTELLATION_MAX_WORKERS", 32),
        peers=peers,
    )
