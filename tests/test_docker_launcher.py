"""The orchestrator's Docker run launcher (compose's), built from settings: dagster.yaml names it, its config
passes the environment by name only and confines the run container. tests/test_compose.py runs jobs with it."""

from __future__ import annotations

import os

import pytest
import yaml
from dagster._config import process_config
from dagster._core.instance.config import dagster_instance_config
from dagster._core.storage.config import pg_config
from dagster_postgres.utils import pg_url_from_config

from mesh.config import ConfigError
from orchestrator_svc import docker_launcher, instance
from orchestrator_svc.settings import OrchestratorSettings

SECRET_URL = "postgresql://constellation:s3cret@127.0.0.1:5432/dagster"


def docker_settings(tmp_path, **extra: str) -> OrchestratorSettings:
    return OrchestratorSettings.from_env(
        {
            "CONSTELLATION_HOME": str(tmp_path),
            "CONSTELLATION_DAGSTER_RUN_LAUNCHER": "docker",
            "CONSTELLATION_DAGSTER_DOCKER_IMAGE": "constellation/mesh:dev",
            "CONSTELLATION_DAGSTER_POSTGRES_URL": SECRET_URL,
            **extra,
        }
    )


def test_dagster_yaml_names_the_docker_launcher_with_no_secret_in_it(tmp_path, monkeypatch):
    monkeypatch.setenv("CONSTELLATION_DAGSTER_POSTGRES_URL", SECRET_URL)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hidden-value")
    monkeypatch.setenv("UNRELATED_SECRET", "x")
    settings = docker_settings(tmp_path, CONSTELLATION_DAGSTER_DOCKER_ENV="GEMINI_API_KEY")
    written = instance.ensure_instance_config(settings) / "dagster.yaml"
    launcher = yaml.safe_load(written.read_text())["run_launcher"]
    assert launcher["module"] == "orchestrator_svc.docker_launcher"
    assert launcher["class"] == "DockerWorkerRunLauncher"
    config = launcher["config"]
    assert config["image"] == "constellation/mesh:dev" and config["networks"] == ["host"]
    # Compose: the stack's mesh network and hosting's models network, in the launcher's own schema.
    several = docker_launcher.launcher_config(
        docker_settings(tmp_path, CONSTELLATION_DAGSTER_DOCKER_NETWORK="s-mesh, s-models")
    )
    assert several["networks"] == ["s-mesh", "s-models"]
    assert docker_launcher.DockerWorkerRunLauncher(**several).networks == ["s-mesh", "s-models"]
    # Names only: the values stay in the orchestrator's environment, never in the file.
    assert {"CONSTELLATION_DAGSTER_POSTGRES_URL", "AWS_SECRET_ACCESS_KEY", "GEMINI_API_KEY"} <= set(config["env_vars"])
    assert "UNRELATED_SECRET" not in config["env_vars"]
    assert docker_launcher.INSTANCE_REF_ENV not in config["env_vars"]
    assert "s3cret" not in written.read_text() and "hidden-value" not in written.read_text()
    assert instance.URL_ENV in config["env_vars"], "run containers get the Dagster URL by name"
    kwargs = config["container_kwargs"]
    assert kwargs["user"] == "10001" and kwargs["cap_drop"] == ["ALL"]
    assert kwargs["security_opt"] == ["no-new-privileges"] and kwargs["pids_limit"] > 0
    assert kwargs["mem_limit"] == kwargs["memswap_limit"] == "2g" and kwargs["nano_cpus"] == 10**9


def test_dagster_yaml_names_the_postgres_url_and_dagster_reads_it_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(instance.URL_ENV, raising=False)
    url = "postgresql://constellation:p%40ss%2Fw0rd@db.internal:5433/dagster?sslmode=require"
    settings = OrchestratorSettings.from_env(
        {"CONSTELLATION_HOME": str(tmp_path), "CONSTELLATION_DAGSTER_POSTGRES_URL": url}
    )
    home = instance.ensure_instance_config(settings)
    text = (home / "dagster.yaml").read_text()
    assert "p@ss" not in text and "p%40ss" not in text and "w0rd" not in text
    assert yaml.safe_load(text)["storage"] == {"postgres": {"postgres_url": {"env": instance.URL_ENV}}}
    assert os.environ[instance.URL_ENV].startswith("postgresql+psycopg2://"), "set for this process and its children"
    # Dagster resolves the file's config from the environment into the URL it connects with.
    checked = process_config(pg_config(), dagster_instance_config(str(home))[0]["storage"]["postgres"])
    assert checked.success, checked.errors
    assert pg_url_from_config(checked.value) == (
        "postgresql+psycopg2://constellation:p%40ss%2Fw0rd@db.internal:5433/dagster?sslmode=require"
    )


def test_the_docker_launcher_needs_an_image(tmp_path):
    with pytest.raises(ConfigError, match="CONSTELLATION_DAGSTER_DOCKER_IMAGE"):
        docker_settings(tmp_path, CONSTELLATION_DAGSTER_DOCKER_IMAGE="")
