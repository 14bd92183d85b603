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

from mesh.config import EnvSettings, env_field, home_path, secret_field

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
    keep_scratch: bool = env_field(
        PREFIX + "KEEP_SCRATCH", False, "keep per-run scratch after the run ends (for debugging)"
    )

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
