"""Core's settings, read once at start-up. The bootstrap's (ports, database, keys, logs) are
`mesh.config.Settings`; this class holds core's own variables and what its runs take from the
bootstrap (where hosting and the orchestrator are, the key core presents to them)."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import Field

from core_svc.stac import StacLimits
from mesh import config
from mesh.config import EnvSettings, env_field
from mesh.tls import TlsFiles, files


class CoreSettings(EnvSettings):
    deploy_timeout_s: float = env_field(
        "CONSTELLATION_CORE_DEPLOY_TIMEOUT_S",
        1800.0,
        "how long a run waits for its models to be packaged and healthy, seconds",
        gt=0,
    )
    max_running_runs: int = env_field(
        "CONSTELLATION_CORE_MAX_RUNNING_RUNS",
        4,
        "runs deployed and run at once; later runs wait in submission order, their place in the queue on "
        "WatchRun (RUN_QUEUED events)",
        ge=1,
    )
    max_running_runs_per_user: int = env_field(
        "CONSTELLATION_CORE_MAX_RUNNING_RUNS_PER_USER",
        0,
        "of those, at most this many of one user's (the user who started the run); a later run of another "
        "user starts first while one user is at it. 0: no limit of its own",
        ge=0,
    )
    audit_retention_days: int = env_field(
        "CONSTELLATION_AUDIT_RETENTION_DAYS",
        90,
        "how long the audit log keeps a record, days; older ones are deleted (at start-up and hourly)",
        ge=1,
    )
    stac_api_hosts_raw: str = env_field(
        "CONSTELLATION_STAC_API_HOSTS",
        "",
        "hosts (or host:port) of the STAC APIs ImportStacDatasets may search, comma separated, e.g. "
        "earth-search.aws.element84.com; empty: none (items and static catalogs under the data roots still import)",
    )
    stac_timeout_s: float = env_field(
        "CONSTELLATION_STAC_TIMEOUT_S", 30.0, "deadline of one request to a STAC API, seconds", gt=0
    )
    stac_max_items: int = env_field(
        "CONSTELLATION_STAC_MAX_ITEMS", 1000, "most STAC items one ImportStacDatasets reads", ge=1, le=100_000
    )
    stac_max_document_bytes: int = env_field(
        "CONSTELLATION_STAC_MAX_DOCUMENT_BYTES",
        8 * 1024 * 1024,
        "largest STAC document (item, catalog, API page) ImportStacDatasets reads, bytes",
        ge=1024,
    )
    # Not read from the environment: fixed here, or handed over from the bootstrap's settings by load().
    reconnect_s: float = Field(
        120.0, description="how long a run keeps trying to reach the orchestrator when its stream breaks", gt=0
    )
    peer_timeout_s: float = Field(
        30.0, description="deadline of one unary call to hosting or the orchestrator, seconds", gt=0
    )
    lease_ttl_s: float = Field(6.0, description="a run's lease (the bootstrap's CONSTELLATION_LEASE_TTL_S)", gt=0)
    lease_renew_s: float = Field(
        2.0, description="how often leases are renewed and expired ones taken over (CONSTELLATION_LEASE_RENEW_S)", gt=0
    )
    hosting_address: str = Field("", description="host:port of hosting (the bootstrap's peers)")
    orchestrator_address: str = Field("", description="host:port of the orchestrator (the bootstrap's peers)")
    tls: TlsFiles | None = Field(
        None, description="core's certificate for mTLS to its peers (the bootstrap's CONSTELLATION_TLS_DIR)"
    )
    metadata: tuple[tuple[str, str], ...] = Field(
        (), description="the service key core presents to its peers when the mesh has keys", repr=False
    )

    @property
    def stac_limits(self) -> StacLimits:
        hosts = tuple(host.lower() for host in config.comma_list(self.stac_api_hosts_raw))
        return StacLimits(hosts, self.stac_timeout_s, self.stac_max_items, self.stac_max_document_bytes)

    @classmethod
    def load(cls, mesh: config.Settings, env: Mapping[str, str] | None = None) -> CoreSettings:
        """Core's variables from `env` (default: the process environment), with its peers from `mesh`."""
        # Core calls hosting and the orchestrator with the service key, on behalf of a run's user (run_driver).
        key = mesh.service_key
        return cls.from_env(
            env,
            hosting_address=mesh.peers["hosting"],
            orchestrator_address=mesh.peers["orchestrator"],
            tls=files(mesh.tls_dir, "core"),
            lease_ttl_s=mesh.lease_ttl_s,
            lease_renew_s=mesh.lease_renew_s,
            metadata=(("authorization", f"Bearer {key}"),) if key else (),
        )
