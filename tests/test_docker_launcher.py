"""The orchestrator's Docker run launcher (compose's), built from settings: dagster.yaml names it, its config
passes the environment by name only and confines the run container. tests/test_compose.py runs jobs with it."""

from __future__ import annotations

import pytest
import yaml

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
    assert "s3cret" not in written.read_text().split("run_launcher")[1] and "hidden-value" not in written.read_text()
    kwargs = config["container_kwargs"]
    assert kwargs["user"] == "10001" and kwargs["cap_drop"] == ["ALL"]
    assert kwargs["security_opt"] == ["no-new-privileges"] and kwargs["pids_limit"] > 0
    assert kwargs["mem_limit"] == kwargs["memswap_limit"] == "2g" and kwargs["nano_cpus"] == 10**9


def test_the_docker_launcher_needs_an_image(tmp_path):
    with pytest.raises(ConfigError, match="CONSTELLATION_DAGSTER_DOCKER_IMAGE"):
        docker_settings(tmp_path, CONSTELLATION_DAGSTER_DOCKER_IMAGE="")
