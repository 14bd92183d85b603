"""The persistent Dagster instance the orchestrator, its run workers and the Dagster UI share.

`ensure_instance_config` writes $DAGSTER_HOME/dagster.yaml from the settings:
SQLite storage under DAGSTER_HOME by default, PostgreSQL (dagster-postgres)
when a URL is configured, its password never in the file: Dagster reads the URL from
CONSTELLATION_DAGSTER_STORAGE_URL (`{env: ...}` config), which the orchestrator sets in its own environment
from CONSTELLATION_DAGSTER_POSTGRES_URL, so every process opening the instance inherits it (run workers, the
Dagster UI; run containers get it by name; run Jobs read theirs from the Secret); the run launcher is ours
(a worker process per run, see launcher.py), or on Kubernetes dagster-k8s's running our worker in
a Job per run (k8s_launcher.py), or dagster-docker's running it in a
container per run (docker_launcher.py, under compose), so a run terminated from the Dagster UI is stopped the
same way CancelRun stops it; step stdout/stderr capture and telemetry are off.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from dagster import DagsterInstance
from sqlalchemy.engine import Engine, make_url

from mesh.db import create_db_engine
from orchestrator_svc import docker_launcher
from orchestrator_svc.k8s_launcher import launcher_config
from orchestrator_svc.settings import OrchestratorSettings


def dagster_postgres_url(url: str) -> str:
    """dagster-postgres binds parameters the way psycopg2 does (NOTIFY channel, %s), so name that driver:
    SQLAlchemy 2.1 would otherwise pick psycopg 3 for a bare postgresql:// URL."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme in ("postgres", "postgresql", "postgresql+psycopg"):
        return f"postgresql+psycopg2://{rest}"
    return url


# Set by the orchestrator in its own environment (never in a file): the instance's URL in the form
# dagster-postgres needs (dagster_postgres_url), which dagster.yaml names.
URL_ENV = "CONSTELLATION_DAGSTER_STORAGE_URL"


def export_url(settings: OrchestratorSettings) -> None:
    """Puts the Dagster database's URL, password included, where dagster.yaml says to read it: this process's
    environment, which the processes it starts inherit."""
    if settings.dagster_postgres_url:
        os.environ[URL_ENV] = dagster_postgres_url(settings.dagster_postgres_url)


def instance_config(settings: OrchestratorSettings) -> dict:
    storage: dict[str, dict]
    if settings.dagster_postgres_url:
        storage = {"postgres": {"postgres_url": {"env": URL_ENV}}}
    else:
        storage = {"sqlite": {"base_dir": str(settings.dagster_home)}}
    if settings.run_launcher == "k8s":
        launcher = {
            "module": "orchestrator_svc.k8s_launcher",
            "class": "K8sWorkerRunLauncher",
            "config": launcher_config(settings),
        }
    elif settings.run_launcher == "docker":
        launcher = {
            "module": "orchestrator_svc.docker_launcher",
            "class": "DockerWorkerRunLauncher",
            "config": docker_launcher.launcher_config(settings),
        }
    else:
        launcher = {
            "module": "orchestrator_svc.launcher",
            "class": "WorkerRunLauncher",
            "config": {
                "work_dir": str(settings.work_dir),
                "cancel_grace_s": settings.cancel_grace_s,
                "keep_scratch": settings.keep_scratch,
                "spare": settings.spare_worker,
            },
        }
    return {
        "storage": storage,
        "run_launcher": launcher,
        # Steps log through Dagster's event log (and the worker's own log file); capturing their stdout and
        # stderr would add two `tail -F` and two watcher processes per step for output they do not write.
        "compute_logs": {"module": "dagster._core.storage.noop_compute_log_manager", "class": "NoOpComputeLogManager"},
        "telemetry": {"enabled": False},
    }


def ensure_instance_config(settings: OrchestratorSettings) -> Path:
    export_url(settings)  # first: the Docker launcher's config passes on the environment's names
    settings.dagster_home.mkdir(parents=True, exist_ok=True)
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    path = settings.dagster_home / "dagster.yaml"
    text = "# Written by the Constellation orchestrator from its settings; edits are overwritten at start-up.\n"
    text += yaml.safe_dump(instance_config(settings), sort_keys=False)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return settings.dagster_home


def open_instance(settings: OrchestratorSettings) -> DagsterInstance:
    return DagsterInstance.from_config(str(ensure_instance_config(settings)))


def lease_engine(settings: OrchestratorSettings) -> Engine:
    """Where the runs' leases live (runs.py): beside the instance, in its PostgreSQL database, else in a SQLite
    file in DAGSTER_HOME, so every orchestrator sharing the instance sees the same leases."""
    if settings.dagster_postgres_url:
        url = make_url(settings.dagster_postgres_url)
        return create_db_engine(url.set(drivername="postgresql").render_as_string(hide_password=False))
    return create_db_engine(f"sqlite:///{settings.dagster_home / 'leases.db'}")
