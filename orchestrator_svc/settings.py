"""The orchestrator's own settings, on top of mesh.config's: where the Dagster
instance lives, where runs keep scratch files, how the model step calls
endpoints and retries them, and which S3-compatible server to use.

Every value has a laptop default: a SQLite Dagster instance under
$CONSTELLATION_HOME/dagster, scratch under $CONSTELLATION_HOME/orchestrator,
and boto3's own resolution of AWS_ENDPOINT_URL / AWS_* credentials.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import model_validator

from mesh.config import EnvSettings, comma_list, env_field, home_path, secret_field

PREFIX = "CONSTELLATION_ORCHESTRATOR_"


class OrchestratorSettings(EnvSettings):
    home_raw: str = env_field("CONSTELLATION_HOME", "", "local state; the defaults below live under it")
    dagster_home_raw: str = env_field(
        PREFIX + "DAGSTER_HOME",
        "",
        "DAGSTER_HOME of the instance: dagster.yaml, and SQLite storage unless a PostgreSQL URL is set "
        "(default $CONSTELLATION_HOME/dagster)",
    )
    dagster_postgres_url: str = secret_field(
        "CONSTELLATION_DAGSTER_POSTGRES_URL", "postgresql://user:pass@host:port/db for dagster-postgres; empty: SQLite"
    )
    work_dir_raw: str = env_field(
        PREFIX + "WORK_DIR",
        "",
        "per-run scratch: downloaded scenes, prediction tiles, stitched rasters (default "
        "$CONSTELLATION_HOME/orchestrator)",
    )
    s3_endpoint: str = env_field("CONSTELLATION_S3_ENDPOINT_URL", "", "S3-compatible endpoint for s3:// URIs")
    aws_s3_endpoint: str = env_field("AWS_ENDPOINT_URL_S3", "", "used when CONSTELLATION_S3_ENDPOINT_URL is empty")
    aws_endpoint: str = env_field("AWS_ENDPOINT_URL", "", "used when both above are empty; all empty: AWS itself")
    default_batch_size: int = env_field(
        PREFIX + "BATCH_SIZE", 8, "tiles per ModelInfer call when a model block leaves batch_size at 0", ge=1
    )
    default_max_concurrency: int = env_field(
        PREFIX + "MAX_CONCURRENCY",
        2,
        "ModelInfer calls in flight per model step when a model block leaves max_concurrency at 0",
        ge=1,
    )
    max_parallel_items: int = env_field(
        PREFIX + "MAX_PARALLEL_ITEMS",
        2,
        "steps a run over a dataset of many scenes (STAC items) runs at once, each in a process of its own; "
        "1: one after another in the run's worker",
        ge=1,
        le=64,
    )
    max_parallel_branches: int = env_field(
        PREFIX + "MAX_PARALLEL_BRANCHES",
        2,
        "steps of independent branches (a model and an index, two models) a run over one scene runs at once, in "
        "threads of its worker; 1: one step after another",
        ge=1,
        le=16,
    )
    infer_timeout_s: float = env_field(PREFIX + "INFER_TIMEOUT_S", 60.0, "deadline of one ModelInfer call", ge=0)
    infer_wait_s: float = env_field(
        PREFIX + "INFER_WAIT_S",
        30.0,
        "how long the model step keeps retrying requests an endpoint refuses as full (RESOURCE_EXHAUSTED) or "
        "cannot answer now (UNAVAILABLE, a restarting replica) without a single answer, before the step fails "
        "for the retries below; 0: fail the step at once",
        ge=0,
    )
    model_retries: int = env_field(
        PREFIX + "MODEL_RETRIES",
        5,
        "retries of a model step after a transient endpoint failure (UNAVAILABLE, DEADLINE_EXCEEDED) outlasting "
        "CONSTELLATION_ORCHESTRATOR_INFER_WAIT_S",
        ge=0,
    )
    model_retry_delay_s: float = env_field(
        PREFIX + "MODEL_RETRY_DELAY_S", 1.0, "first wait between retries; it doubles each time", ge=0
    )
    cancel_grace_s: float = env_field(
        PREFIX + "CANCEL_GRACE_S", 15.0, "how long a canceled run's worker gets to stop before it is killed", ge=0
    )
    model_hosts_raw: str = env_field(
        PREFIX + "MODEL_HOSTS",
        "127.0.0.1,localhost",
        "comma-separated hosts LaunchRun's model endpoints may be on; .suffix allows every host ending in it "
        "(hosting's local and Docker replicas listen on 127.0.0.1; Kubernetes replicas need .svc, Modal its host)",
    )
    keep_scratch: bool = env_field(
        PREFIX + "KEEP_SCRATCH", False, "keep per-run scratch after the run ends (for debugging)"
    )
    spare_worker: bool = env_field(
        PREFIX + "SPARE_WORKER",
        True,
        "keep a run worker process that has imported what a run needs waiting for the next run (the worker "
        "launcher's; about 220 MiB while it waits; a run then starts in tenths of a second, not seconds)",
    )

    run_launcher: str = env_field(
        "CONSTELLATION_DAGSTER_RUN_LAUNCHER",
        "worker",
        "worker: each run in a worker process beside the orchestrator; k8s: each run in a Kubernetes Job "
        "(dagster-k8s), on the cluster the orchestrator runs in; docker: each run in its own container on the "
        "Docker engine (dagster-docker, as under compose)",
        pattern="^(worker|k8s|docker)$",
    )
    docker_image: str = env_field(
        "CONSTELLATION_DAGSTER_DOCKER_IMAGE", "", "image of run containers (the mesh image); required with docker"
    )
    docker_network: str = env_field(
        "CONSTELLATION_DAGSTER_DOCKER_NETWORK",
        "host",
        "networks run containers join, comma separated: host (the host's network: models and S3 on 127.0.0.1), "
        "or Docker network names (compose: the stack's mesh network for core, PostgreSQL and S3, and its models "
        "network for model endpoints)",
    )
    docker_env_raw: str = env_field(
        "CONSTELLATION_DAGSTER_DOCKER_ENV",
        "",
        "more variables run containers get from the orchestrator's environment, comma separated (names only; "
        "CONSTELLATION_*, AWS_* and DAGSTER_* always pass)",
    )
    docker_run_memory: str = env_field(
        "CONSTELLATION_DAGSTER_DOCKER_RUN_MEMORY", "2g", "memory limit of a run container (512m, 2g)"
    )
    docker_run_cpus: float = env_field(
        "CONSTELLATION_DAGSTER_DOCKER_RUN_CPUS", 1.0, "CPUs a run container may use", gt=0
    )
    k8s_image: str = env_field(
        "CONSTELLATION_DAGSTER_K8S_IMAGE", "", "image of run Jobs (the mesh image); required with k8s"
    )
    k8s_namespace: str = env_field("CONSTELLATION_DAGSTER_K8S_NAMESPACE", "default", "namespace of run Jobs")
    k8s_service_account: str = env_field(
        "CONSTELLATION_DAGSTER_K8S_SERVICE_ACCOUNT", "", "service account of run Jobs (empty: the namespace's default)"
    )
    k8s_instance_config_map: str = env_field(
        "CONSTELLATION_DAGSTER_K8S_INSTANCE_CONFIG_MAP",
        "constellation-dagster-instance",
        "ConfigMap holding the dagster.yaml run Jobs open (storage on CONSTELLATION_DAGSTER_POSTGRES_URL)",
    )
    k8s_env_config_maps_raw: str = env_field(
        "CONSTELLATION_DAGSTER_K8S_ENV_CONFIG_MAPS",
        "",
        "ConfigMaps whose keys become run Jobs' environment, comma separated",
    )
    k8s_env_secrets_raw: str = env_field(
        "CONSTELLATION_DAGSTER_K8S_ENV_SECRETS",
        "",
        "Secrets whose keys become run Jobs' environment (database URL, S3 credentials), comma separated",
    )
    k8s_run_cpu: str = env_field("CONSTELLATION_DAGSTER_K8S_RUN_CPU", "1", "CPU a run Job requests (and its limit)")
    k8s_run_memory: str = env_field(
        "CONSTELLATION_DAGSTER_K8S_RUN_MEMORY", "2Gi", "memory a run Job requests (and its limit)"
    )

    @model_validator(mode="after")
    def _k8s_needs_image(self) -> OrchestratorSettings:
        if self.run_launcher == "k8s" and not self.k8s_image:
            raise ValueError("CONSTELLATION_DAGSTER_K8S_IMAGE must name the run Jobs' image when the launcher is k8s")
        if self.run_launcher == "docker" and not self.docker_image:
            raise ValueError(
                "CONSTELLATION_DAGSTER_DOCKER_IMAGE must name the run containers' image when the launcher is docker"
            )
        return self

    @property
    def docker_env(self) -> list[str]:
        return comma_list(self.docker_env_raw)

    @property
    def docker_networks(self) -> list[str]:
        return comma_list(self.docker_network)

    @property
    def k8s_env_config_maps(self) -> list[str]:
        return comma_list(self.k8s_env_config_maps_raw)

    @property
    def k8s_env_secrets(self) -> list[str]:
        return comma_list(self.k8s_env_secrets_raw)

    def model_host_allowed(self, host: str) -> bool:
        """Whether a model endpoint may be on `host`: one of MODEL_HOSTS, or under one of its .suffixes."""
        host = host.strip("[]").lower()
        allowed = [entry.lower() for entry in comma_list(self.model_hosts_raw)]
        return any(host == entry or (entry.startswith(".") and host.endswith(entry)) for entry in allowed)

    @property
    def dagster_home(self) -> Path:
        return Path(self.dagster_home_raw or self._home / "dagster").expanduser()

    @property
    def work_dir(self) -> Path:
        return Path(self.work_dir_raw or self._home / "orchestrator").expanduser()

    @property
    def s3_endpoint_url(self) -> str:
        """Empty lets boto3 resolve it."""
        return self.s3_endpoint or self.aws_s3_endpoint or self.aws_endpoint

    @property
    def _home(self) -> Path:
        return home_path(self.home_raw)


def load(env: Any = None) -> OrchestratorSettings:
    return OrchestratorSettings.from_env(env)
