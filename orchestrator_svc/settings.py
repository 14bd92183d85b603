"""The orchestrator's own settings, on top of mesh.config's: where the Dagster
instance lives, where runs keep scratch files, how the model step calls
endpoints and retries them, and which S3-compatible server to use.

Every value has a laptop default: a SQLite Dagster instance under
$CONSTELLATION_HOME/dagster, scratch under $CONSTELLATION_HOME/orchestrator,
and boto3's own resolution of AWS_ENDPOINT_URL / AWS_* credentials.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mesh.config import ConfigError, home_dir


def _int(env: dict[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def _float(env: dict[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if value < 0:
        raise ConfigError(f"{name} must not be negative, got {value}")
    return value


@dataclass(frozen=True)
class OrchestratorSettings:
    # DAGSTER_HOME of the instance: dagster.yaml, and SQLite storage unless
    # `dagster_postgres_url` is set.
    dagster_home: Path
    # postgresql://user:pass@host:port/db for dagster-postgres; empty: SQLite.
    dagster_postgres_url: str
    # Per-run scratch (downloaded scenes, prediction tiles, stitched rasters).
    work_dir: Path
    # S3-compatible endpoint for s3:// URIs; empty lets boto3 resolve it
    # (AWS_ENDPOINT_URL, then AWS itself).
    s3_endpoint_url: str
    # Model step defaults when a ModelBlock leaves batch_size / max_concurrency at 0.
    default_batch_size: int = 8
    default_max_concurrency: int = 2
    # Deadline of one ModelInfer call.
    infer_timeout_s: float = 60.0
    # Dagster RetryPolicy of the model step: transient endpoint failures
    # (UNAVAILABLE, DEADLINE_EXCEEDED) are retried this often, the wait
    # doubling from `model_retry_delay_s`.
    model_retries: int = 5
    model_retry_delay_s: float = 1.0
    # How long a canceled run's worker gets to stop cleanly before it is killed.
    cancel_grace_s: float = 15.0
    # Keep per-run scratch after the run ends (for debugging).
    keep_scratch: bool = False


def load(env: dict[str, str] | None = None) -> OrchestratorSettings:
    env = dict(os.environ) if env is None else env
    home = home_dir(env)
    prefix = "CONSTELLATION_ORCHESTRATOR_"
    return OrchestratorSettings(
        dagster_home=Path(env.get(prefix + "DAGSTER_HOME") or home / "dagster").expanduser(),
        dagster_postgres_url=env.get("CONSTELLATION_DAGSTER_POSTGRES_URL", "").strip(),
        work_dir=Path(env.get(prefix + "WORK_DIR") or home / "orchestrator").expanduser(),
        s3_endpoint_url=(env.get("CONSTELLATION_S3_ENDPOINT_URL") or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or "").strip(),
        default_batch_size=_int(env, prefix + "BATCH_SIZE", 8, 1),
        default_max_concurrency=_int(env, prefix + "MAX_CONCURRENCY", 2, 1),
        infer_timeout_s=_float(env, prefix + "INFER_TIMEOUT_S", 60.0),
        model_retries=_int(env, prefix + "MODEL_RETRIES", 5),
        model_retry_delay_s=_float(env, prefix + "MODEL_RETRY_DELAY_S", 1.0),
        cancel_grace_s=_float(env, prefix + "CANCEL_GRACE_S", 15.0),
        keep_scratch=env.get(prefix + "KEEP_SCRATCH", "").strip().lower() in ("1", "true", "yes"),
    )
