"""Hosting's own settings, on top of mesh.config's `Settings` (ports, home, keys, logs).

Read once at start-up by server.build(); every field names its environment
variable. `home` is not read: it is $CONSTELLATION_HOME/hosting.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from mesh.config import EnvSettings, comma_list, env_field, secret_field
from model_runtime.manifest import MEMORY


class HostingSettings(EnvSettings):
    """Where hosting keeps its state, how it builds and checks models, and the credentials it uses."""

    home: Path = Field(
        Path("~/.constellation/hosting").expanduser(),
        description="hosting's state: database, sources, wheelhouse, builds, venvs (set to "
        "$CONSTELLATION_HOME/hosting, not read)",
    )
    database_url_raw: str = secret_field(
        "CONSTELLATION_HOSTING_DATABASE_URL",
        "SQLAlchemy URL of hosting's database (default SQLite under hosting's home)",
    )
    docker: str = env_field(
        "CONSTELLATION_HOSTING_DOCKER", "auto", "off: never use Docker; anything else: use the engine when it answers"
    )
    docker_network: str = env_field(
        "CONSTELLATION_HOSTING_DOCKER_NETWORK",
        "",
        "Docker network model replicas join (compose: the stack's internal `models` network): each serves on its "
        "own address and is reached as <container name>.models:port on that network, which hosting must have "
        "joined (and CONSTELLATION_ORCHESTRATOR_MODEL_HOSTS allow: .models); "
        "empty: the host's network, each replica on 127.0.0.1:port",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$|^$",
    )
    base_image: str = env_field(
        "CONSTELLATION_BASE_IMAGE", "constellation/base:bookworm", "image every model image builds on"
    )
    ready_timeout_s: float = env_field(
        "CONSTELLATION_HOSTING_READY_TIMEOUT_S",
        60.0,
        "how long a new replica or smoke test may take to say ModelReady, s",
        gt=0,
    )
    allow_unconfined: bool = env_field(
        "CONSTELLATION_HOSTING_ALLOW_UNCONFINED",
        False,
        "true: without bubblewrap, run local model processes unconfined with hosting's rights (logs a warning)",
    )
    model_memory: str = env_field(
        "CONSTELLATION_HOSTING_MODEL_MEMORY",
        "2g",
        "memory a model may use when its constellation.yaml names no resources.memory (512m, 2g): the container's "
        "memory limit, the local sandbox's data limit",
        pattern=MEMORY.pattern,
    )
    sandbox_max_processes: int = env_field(
        "CONSTELLATION_HOSTING_SANDBOX_MAX_PROCESSES",
        1024,
        "processes and threads all local model sandboxes (uid 10001) may run together (RLIMIT_NPROC); each "
        "container has its own limit of 256",
        gt=0,
    )
    model_max_open_files: int = env_field(
        "CONSTELLATION_HOSTING_MODEL_MAX_OPEN_FILES", 1024, "open files per model process (RLIMIT_NOFILE)", gt=0
    )
    smoke_cpu_s: int = env_field(
        "CONSTELLATION_HOSTING_SMOKE_CPU_S",
        300,
        "CPU time a smoke test's model process may use before it is killed (RLIMIT_CPU), s",
        gt=0,
    )
    model_roots_raw: str = env_field(
        "CONSTELLATION_HOSTING_MODEL_ROOTS",
        "",
        "comma-separated folders local model sources (and file:// git sources) must be under "
        "(default $CONSTELLATION_HOME/models and, in a source checkout, its examples/models)",
    )
    source_max_bytes: int = env_field(
        "CONSTELLATION_HOSTING_SOURCE_MAX_BYTES", 2 << 30, "largest model source hosting copies, bytes", gt=0
    )
    source_max_files: int = env_field(
        "CONSTELLATION_HOSTING_SOURCE_MAX_FILES", 10_000, "most files in a model source hosting copies", gt=0
    )
    git_hosts_raw: str = env_field(
        "CONSTELLATION_HOSTING_GIT_HOSTS",
        "",
        "comma-separated hosts (host or host:port) git sources may be cloned from; default none "
        "(file:// under the model roots only)",
    )
    git_timeout_s: float = env_field(
        "CONSTELLATION_HOSTING_GIT_TIMEOUT_S", 120.0, "longest a git clone may take, s", gt=0
    )
    lease_ttl_s: float = Field(
        6.0, description="a deployment's lease (the bootstrap's CONSTELLATION_LEASE_TTL_S, set by the server)", gt=0
    )
    lease_renew_s: float = Field(
        2.0, description="how often leases are renewed and expired ones taken (CONSTELLATION_LEASE_RENEW_S)", gt=0
    )
    monitor_interval_s: float = Field(
        1.0, description="how often the monitor checks every replica's health, s (not read)", gt=0
    )
    max_replicas: int = env_field(
        "CONSTELLATION_HOSTING_MAX_REPLICAS",
        1,
        "replicas hosting may scale a busy model to (local and Docker runtimes) when its constellation.yaml names "
        "no resources.max_replicas; 1 or the deployment's count: no autoscaling",
        ge=1,
        le=16,
    )
    scale_up_after_s: float = env_field(
        "CONSTELLATION_HOSTING_SCALE_UP_AFTER_S",
        10.0,
        "how long a model's replicas must stay busy (queue at the share below, or refusing requests) before "
        "hosting adds one, s",
        gt=0,
    )
    scale_down_after_s: float = env_field(
        "CONSTELLATION_HOSTING_SCALE_DOWN_AFTER_S",
        120.0,
        "how long a model's replicas must stay idle before hosting removes one it added, s",
        gt=0,
    )
    scale_queue_share: float = env_field(
        "CONSTELLATION_HOSTING_SCALE_QUEUE_SHARE",
        0.5,
        "share of the tiles its replicas admit (max_queued_tiles) a model's queue must reach to count as busy",
        gt=0,
        le=1,
    )
    registry_host: str = env_field(
        "CONSTELLATION_REGISTRY_HOST",
        "",
        "registry (host:port) CONSTELLATION_REGISTRY_USERNAME/PASSWORD are sent to; no other registry gets them",
    )
    registry_username: str = env_field(
        "CONSTELLATION_REGISTRY_USERNAME", "", "user for pushing and pulling images on CONSTELLATION_REGISTRY_HOST"
    )
    registry_password: str = secret_field(
        "CONSTELLATION_REGISTRY_PASSWORD", "password of CONSTELLATION_REGISTRY_USERNAME"
    )
    registry_auth_file: str = env_field(
        "CONSTELLATION_REGISTRY_AUTH_FILE",
        "",
        'JSON file of credentials per registry host: {"host:port": {"username", "password"}}',
    )
    kubernetes: str = env_field(
        "CONSTELLATION_HOSTING_KUBERNETES",
        "off",
        "off; kserve: deploy models as KServe InferenceServices (Standard mode) on the cluster hosting runs in; "
        "deployment: as plain Deployments and Services (clusters without KServe)",
        pattern="^(off|kserve|deployment)$",
    )
    kubernetes_namespace: str = env_field(
        "CONSTELLATION_HOSTING_KUBERNETES_NAMESPACE", "constellation-models", "namespace model replicas run in"
    )
    kubernetes_service_account: str = env_field(
        "CONSTELLATION_HOSTING_KUBERNETES_SERVICE_ACCOUNT",
        "constellation-model",
        "service account of model pods (its token is never mounted)",
    )
    kubernetes_max_replicas: int = env_field(
        "CONSTELLATION_HOSTING_KUBERNETES_MAX_REPLICAS",
        4,
        "autoscaling ceiling as a multiple of a deployment's replicas (1: no autoscaling)",
        ge=1,
        le=16,
    )
    kubernetes_cpu_target: int = env_field(
        "CONSTELLATION_HOSTING_KUBERNETES_CPU_TARGET",
        70,
        "CPU utilization (% of the request) the autoscaler keeps a CPU model's replicas at",
        ge=10,
        le=100,
    )
    kubernetes_canary_percent: int = env_field(
        "CONSTELLATION_HOSTING_KUBERNETES_CANARY_PERCENT",
        10,
        "share of traffic a new version gets while it proves healthy beside the serving one (kserve); "
        "100: replace at once",
        ge=1,
        le=100,
    )
    swarm: str = env_field(
        "CONSTELLATION_HOSTING_SWARM",
        "auto",
        "auto: the swarm runtime when the Docker engine is a Swarm manager; on: require it (start fails otherwise); "
        "off: never",
        pattern="^(auto|on|off)$",
    )
    swarm_ports: str = env_field(
        "CONSTELLATION_HOSTING_SWARM_PORTS",
        "21000-21999",
        "127.0.0.1 ports Swarm replicas serve on: each service takes a block of 32 (replica N on the block's "
        "first port + N)",
        pattern=r"^\d{4,5}-\d{4,5}$",
    )
    swarm_rollout_timeout_s: float = env_field(
        "CONSTELLATION_HOSTING_SWARM_ROLLOUT_TIMEOUT_S",
        300.0,
        "how long creating, scaling or rolling a Swarm service may take until every replica runs the version, s",
        gt=0,
    )
    modal_token_id: str = Field(
        "", validation_alias="MODAL_TOKEN_ID", description="Modal token id; with its secret, enables the modal runtime"
    )
    modal_token_secret: str = secret_field("MODAL_TOKEN_SECRET", "Modal token secret")

    @property
    def database_url(self) -> str:
        return self.database_url_raw or f"sqlite:///{self.home / 'hosting.db'}"

    @property
    def docker_wanted(self) -> bool:
        return self.docker != "off"

    @property
    def model_roots(self) -> list[Path]:
        """Folders local model sources must be under (resolved)."""
        if self.model_roots_raw.strip():
            return [Path(p).expanduser().resolve() for p in comma_list(self.model_roots_raw)]
        roots = [(self.home.parent / "models").resolve()]
        examples = Path(__file__).resolve().parent.parent / "examples" / "models"
        if examples.is_dir():  # a source checkout: `make demo` registers these
            roots.append(examples)
        return roots

    @property
    def git_hosts(self) -> set[str]:
        return {h.lower() for h in comma_list(self.git_hosts_raw)}


class HubSettings(EnvSettings):
    """The Hugging Face hub's own variables, read at each hf:// fetch (as huggingface_hub itself does),
    so a changed cache or offline switch applies without restarting hosting."""

    cache: str = Field(
        "", validation_alias="HF_HUB_CACHE", description="Hugging Face cache folder (default the hub's own)"
    )
    offline_raw: str = Field("", validation_alias="HF_HUB_OFFLINE", description="1, true or yes: use the cache only")

    @property
    def offline(self) -> bool:
        return self.offline_raw in ("1", "true", "yes")
