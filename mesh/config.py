"""Settings from environment variables, parsed once at start-up.

Every service has one settings class built on `EnvSettings` (pydantic-settings):
each field names its environment variable (`validation_alias`) and carries a
description, and `docs/settings.md` is generated from the classes
(`python scripts/settings_doc.py`). Every variable has a default that works on
a laptop with nothing else running; `CONSTELLATION_` prefixes ours, ecosystem
names (DATABASE_URL, GEMINI_API_KEY) keep theirs. An empty variable counts as
unset.

This module holds the base class and the bootstrap's own settings
(`Settings`: ports, home, database, keys, logs, limits), which every service
reads through `load(service)`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from mesh import credentials
from mesh.identity import canonical_role
from mesh.tls import TlsError, TlsFiles

# Service name -> (default gRPC port, default metrics port).
DEFAULT_PORTS: dict[str, tuple[int, int]] = {
    "core": (50051, 9101),
    "hosting": (50052, 9102),
    "orchestrator": (50053, 9103),
    "agent": (50054, 9104),
}
DEFAULT_GATEWAY_PORT = 8080


class ConfigError(ValueError):
    """An environment variable holds a value the service cannot use."""


def env_field(name: str, default: Any, description: str, **constraints: Any) -> Any:
    """A settings field read from the environment variable `name`."""
    return Field(default, validation_alias=name, description=description, **constraints)


def secret_field(name: str, description: str) -> Any:
    """A settings field read from `name` that never shows in repr() or logs (keys, passwords, URLs with them)."""
    return Field("", validation_alias=name, description=description, repr=False)


def _describe(error: ValidationError, aliases: dict[str, str]) -> str:
    problems = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"])
        name = aliases.get(where, where)
        problems.append(
            f"{name}: {item['msg']}, got {item['input']!r}" if "input" in item else f"{name}: {item['msg']}"
        )
    return "; ".join(problems)


class EnvSettings(BaseSettings):
    """A service's settings: one field per environment variable, immutable once read."""

    model_config = SettingsConfigDict(
        frozen=True, extra="ignore", env_ignore_empty=True, validate_by_name=True, validate_by_alias=True
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Values come only from from_env() or the constructor: pydantic-settings would otherwise also read a
        variable named like each field that has no alias (HOME into `home`, SERVICE into `service`)."""
        return (init_settings,)

    @classmethod
    def env_names(cls) -> dict[str, str]:
        """Field name -> environment variable."""
        return {
            name: str(f.validation_alias) for name, f in cls.model_fields.items() if isinstance(f.validation_alias, str)
        }

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **values: Any) -> Self:
        """Read every field from `env` (default: the process environment); `values` (by field name) win.
        Raises ConfigError naming the variable when a value does not fit."""
        env = os.environ if env is None else env
        names = cls.env_names()
        read = {field: env[var].strip() for field, var in names.items() if env.get(var, "").strip()}
        try:
            return cls.model_validate({**read, **values})
        except ValidationError as error:
            raise ConfigError(_describe(error, {field: var for field, var in names.items()})) from None


def comma_list(raw: str) -> list[str]:
    """The items of a comma-separated setting, stripped, empty ones dropped."""
    return [item for item in (part.strip() for part in raw.split(",")) if item]


def home_path(raw: str) -> Path:
    """The mesh's home from the value of CONSTELLATION_HOME ("" for the default, ~/.constellation)."""
    return Path(raw or Path.home() / ".constellation").expanduser()


def home_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where local state (SQLite database, logs, pids) lives."""
    env = os.environ if env is None else env
    return home_path(env.get("CONSTELLATION_HOME", ""))


def tls_dir(raw: str) -> Path | None:
    """The certificates folder from the value of CONSTELLATION_TLS_DIR; None (plaintext) when it is empty."""
    return Path(raw).expanduser() if raw else None


def parse_api_keys(raw: str, extra_admin_key: str = "") -> dict[str, str]:
    """`key` or `key:role`, comma separated (CONSTELLATION_API_KEYS); a key without a role is an admin, and so is
    `extra_admin_key` (CONSTELLATION_API_KEY) when set."""
    keys: dict[str, str] = {}
    for item in comma_list(raw):
        key, _, role = item.partition(":")
        try:
            keys[key] = canonical_role(role or "admin")
        except ValueError as error:
            raise ConfigError(f"CONSTELLATION_API_KEYS: {error}") from None
    if extra_admin_key:
        keys[extra_admin_key] = "admin"
    return keys


def auth_field() -> Any:
    return env_field(
        "CONSTELLATION_AUTH",
        "on",
        "on: every call but health and reflection needs an API key: those in CONSTELLATION_API_KEYS, else the "
        "generated $CONSTELLATION_HOME/credentials/admin.key; off: anyone who reaches a port may call anything "
        "(a WARNING at every start)",
    )


def generated_admin_key(auth: str, configured_keys: dict[str, str], home: Path) -> str:
    """The generated admin key a part of the mesh accepts: "" when authentication is off or keys are configured;
    raises ConfigError when it needs one and there is none, or the file is not private."""
    if auth == "off" or configured_keys:
        return ""
    try:
        key = credentials.read_admin_key(home)
    except credentials.CredentialError as error:
        raise ConfigError(str(error)) from None
    if key is None:
        raise ConfigError(
            f"no API key: {credentials.admin_key_path(home)} does not exist and CONSTELLATION_API_KEYS is empty. "
            "Start the mesh with `constellation up` (it makes the key), or set CONSTELLATION_API_KEYS, or set "
            "CONSTELLATION_AUTH=off to run without authentication"
        )
    return key


def _port(service: str, kind: str, default: int) -> Any:
    return env_field(
        f"CONSTELLATION_{service.upper()}_{kind}",
        default,
        f"{kind.replace('_', ' ').lower()} of {service}",
        ge=0,
        le=65535,
    )


class Settings(EnvSettings):
    """The bootstrap's settings, shared by every service (`load(service)` picks that service's ports)."""

    service: str = Field("", description="which service these settings are for (set by load(), not read)")
    host: str = env_field("CONSTELLATION_HOST", "127.0.0.1", "address every service binds and its peers are found on")
    home_raw: str = env_field(
        "CONSTELLATION_HOME", "", "local state: SQLite database, logs, pids, outputs (default ~/.constellation)"
    )
    database_url_raw: str = secret_field(
        "DATABASE_URL", "SQLAlchemy URL of the service database (default SQLite under the home)"
    )
    api_keys_raw: str = secret_field(
        "CONSTELLATION_API_KEYS",
        "`key` or `key:role` (viewer, editor or admin; reader means viewer), comma separated; empty: the "
        "generated admin key (see CONSTELLATION_AUTH)",
    )
    api_key_raw: str = secret_field("CONSTELLATION_API_KEY", "one more admin key")
    auth: Literal["on", "off"] = auth_field()
    generated_admin_key: str = Field(
        default="",
        repr=False,
        description="the key in $CONSTELLATION_HOME/credentials/admin.key (set by load(), not read)",
    )
    tls_dir_raw: str = env_field(
        "CONSTELLATION_TLS_DIR",
        "",
        "the mesh's certificates (`constellation certs`): services serve mTLS and call each other with their own "
        "certificate, and accept only the peers mesh/peers.py lists; empty: plaintext, no peer identities",
    )
    service_key_raw: str = secret_field(
        "CONSTELLATION_SERVICE_KEY",
        "the key services present to each other (identity `service`; the same on every service); empty: the "
        "home's credentials/service.key, else one derived from the first admin key",
    )
    auth_cache_s: float = env_field(
        "CONSTELLATION_AUTH_CACHE_S",
        5.0,
        "how long hosting, the orchestrator and the agent remember core's answer about a user's API key, "
        "seconds: a revoked or expired key, or a disabled user, stops working there within this time; 0: ask "
        "core at every call",
        ge=0,
    )
    log_level_raw: str = env_field("CONSTELLATION_LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING or ERROR")
    log_format: str = env_field("CONSTELLATION_LOG_FORMAT", "json", "json (one object a line) or text")
    max_message_mb: int = env_field(
        "CONSTELLATION_MAX_MESSAGE_MB", 64, "largest gRPC message a service sends or takes, MiB", ge=1
    )
    shutdown_grace_s: float = env_field(
        "CONSTELLATION_SHUTDOWN_GRACE_S", 10.0, "how long SIGTERM waits for calls in flight", ge=0
    )
    health_interval_s: float = env_field(
        "CONSTELLATION_HEALTH_INTERVAL_S", 2.0, "how often a service checks its dependencies", gt=0
    )
    max_request_mb: int = env_field(
        "CONSTELLATION_MAX_REQUEST_MB",
        4,
        "largest request a service takes, MiB (model endpoints' tensors do not pass through services)",
        ge=1,
    )
    max_workers: int = env_field("CONSTELLATION_MAX_WORKERS", 64, "gRPC worker threads per service", ge=2)
    max_streams: int = env_field(
        "CONSTELLATION_MAX_STREAMS",
        0,
        "streaming calls (Watch*) a service serves at once, each holding a worker thread; more get "
        "RESOURCE_EXHAUSTED. Below CONSTELLATION_MAX_WORKERS, so unary calls and health checks keep threads; "
        "0: three quarters of them",
        ge=0,
    )
    lease_ttl_s: float = env_field(
        "CONSTELLATION_LEASE_TTL_S",
        6.0,
        "how long a replica's lease on a run or a deployment lasts unrenewed (mesh.leases): when the replica "
        "dies, another takes its work over within this time plus CONSTELLATION_LEASE_RENEW_S, seconds",
        gt=0,
    )
    lease_renew_s: float = env_field(
        "CONSTELLATION_LEASE_RENEW_S",
        2.0,
        "how often a replica renews its leases and looks for expired ones to take over, seconds; at most a "
        "third of CONSTELLATION_LEASE_TTL_S",
        gt=0,
    )
    core_port: int = _port("core", "PORT", DEFAULT_PORTS["core"][0])
    hosting_port: int = _port("hosting", "PORT", DEFAULT_PORTS["hosting"][0])
    orchestrator_port: int = _port("orchestrator", "PORT", DEFAULT_PORTS["orchestrator"][0])
    agent_port: int = _port("agent", "PORT", DEFAULT_PORTS["agent"][0])
    core_metrics_port: int = _port("core", "METRICS_PORT", DEFAULT_PORTS["core"][1])
    hosting_metrics_port: int = _port("hosting", "METRICS_PORT", DEFAULT_PORTS["hosting"][1])
    orchestrator_metrics_port: int = _port("orchestrator", "METRICS_PORT", DEFAULT_PORTS["orchestrator"][1])
    agent_metrics_port: int = _port("agent", "METRICS_PORT", DEFAULT_PORTS["agent"][1])
    core_addr: str = env_field(
        "CONSTELLATION_CORE_ADDR",
        "",
        "host:port where peers reach core (default host:core port); several, comma separated, for replicas: "
        "calls are balanced round robin over them",
    )
    hosting_addr: str = env_field(
        "CONSTELLATION_HOSTING_ADDR", "", "host:port where peers reach hosting (or its replicas')"
    )
    orchestrator_addr: str = env_field(
        "CONSTELLATION_ORCHESTRATOR_ADDR", "", "host:port where peers reach the orchestrator (or its replicas')"
    )
    agent_addr: str = env_field(
        "CONSTELLATION_AGENT_ADDR", "", "host:port where peers reach the agent (or its replicas')"
    )

    SERVICES: ClassVar[tuple[str, ...]] = tuple(DEFAULT_PORTS)

    @model_validator(mode="after")
    def _streams_leave_workers(self) -> Self:
        if self.max_streams and self.max_streams >= self.max_workers:
            raise ValueError(
                f"CONSTELLATION_MAX_STREAMS ({self.max_streams}) must be below CONSTELLATION_MAX_WORKERS "
                f"({self.max_workers}): streams hold their thread, and health checks need one"
            )
        return self

    @model_validator(mode="after")
    def _renew_well_before_expiry(self) -> Self:
        if self.lease_renew_s * 3 > self.lease_ttl_s:
            raise ValueError(
                f"CONSTELLATION_LEASE_RENEW_S ({self.lease_renew_s}) must be at most a third of "
                f"CONSTELLATION_LEASE_TTL_S ({self.lease_ttl_s}): a lease is renewed well before it expires"
            )
        return self

    @property
    def home(self) -> Path:
        return home_path(self.home_raw)

    @property
    def database_url(self) -> str:
        return self.database_url_raw or f"sqlite:///{self.home / 'core.db'}"

    @property
    def configured_api_keys(self) -> dict[str, str]:
        """The operator's keys (CONSTELLATION_API_KEYS, CONSTELLATION_API_KEY), each with its role."""
        return parse_api_keys(self.api_keys_raw, self.api_key_raw)

    @property
    def api_keys(self) -> dict[str, str]:
        """API keys that may call the service, each with its role (viewer, editor or admin): the configured ones,
        else the generated admin key. Empty: authentication is off."""
        if self.auth == "off":
            return {}
        return self.configured_api_keys or ({self.generated_admin_key: "admin"} if self.generated_admin_key else {})

    @property
    def tls_dir(self) -> Path | None:
        """The certificates folder; None: plaintext."""
        return tls_dir(self.tls_dir_raw)

    @property
    def service_key(self) -> str:
        """The key services present to each other (read at start-up): CONSTELLATION_SERVICE_KEY, else the home's
        credentials/service.key (made by `constellation up`; refused unless private), else one derived from the
        first admin key, so that a mesh configured only with CONSTELLATION_API_KEYS still agrees on it; "" when
        there is none (authentication off)."""
        if self.service_key_raw:
            return self.service_key_raw
        try:
            stored = credentials.read_key(credentials.service_key_path(self.home))
        except credentials.CredentialError as error:
            raise ConfigError(str(error)) from None
        if stored:
            return stored
        admin = next((key for key, role in self.api_keys.items() if role == "admin"), "")
        return hmac.new(admin.encode(), b"constellation service key", hashlib.sha256).hexdigest() if admin else ""

    @property
    def log_level(self) -> str:
        return self.log_level_raw.upper()

    @property
    def max_message_bytes(self) -> int:
        return self.max_message_mb * 1024 * 1024

    @property
    def stream_limit(self) -> int:
        """Streams served at once: max_streams, or three quarters of the worker threads."""
        return self.max_streams or max(1, self.max_workers * 3 // 4)

    @property
    def max_request_bytes(self) -> int:
        return self.max_request_mb * 1024 * 1024

    @property
    def port(self) -> int:
        return int(getattr(self, f"{self.service}_port"))

    @property
    def metrics_port(self) -> int:
        return int(getattr(self, f"{self.service}_metrics_port"))

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def peers(self) -> dict[str, str]:
        """Addresses (host:port) of the other services, for cross-service calls."""
        return {
            name: getattr(self, f"{name}_addr") or f"{self.host}:{getattr(self, f'{name}_port')}"
            for name in self.SERVICES
            if name != self.service
        }


def load(service: str, env: Mapping[str, str] | None = None) -> Settings:
    if service not in DEFAULT_PORTS:
        raise ConfigError(f"unknown service {service!r}")
    settings = Settings.from_env(env, service=service)
    if settings.tls_dir is not None:
        try:
            TlsFiles(settings.tls_dir, service).check()
        except TlsError as error:
            raise ConfigError(f"CONSTELLATION_TLS_DIR: {error}") from None
    # A bad role, no key with authentication on, or a credential file others could read fails at start-up, not at
    # the first call.
    generated = generated_admin_key(settings.auth, settings.configured_api_keys, settings.home)
    settings = settings.model_copy(update={"generated_admin_key": generated}) if generated else settings
    settings.service_key  # noqa: B018
    return settings


def load_or_exit(service: str) -> Settings:
    """load(service) from the process environment for a service's main: a setting that does not fit (or a missing
    key) ends the process with the message, not a traceback."""
    try:
        return load(service)
    except ConfigError as error:
        raise SystemExit(f"{service} cannot start: {error}") from None
