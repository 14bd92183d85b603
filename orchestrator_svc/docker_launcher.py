"""Runs in their own containers: dagster-docker's DockerRunLauncher, running our worker in one container per run.

As with Kubernetes (k8s_launcher.py), our jobs are built per run from the LaunchRun request stored on the run
(worker.py), so the container's command is `python -m orchestrator_svc.worker RUN_ID`. The container is made
from the launcher's config (image, networks, environment passed through by name from the orchestrator's own),
confined (uid 10001, every capability dropped, no new privileges, memory, CPU and process limits), labelled
with the run, and its id goes on the run as dagster-docker's `docker/container_id` tag, so dagster-docker's
own check_run_worker_health and terminate (docker stop, SIGTERM → the worker's interrupt) work on it. The
worker opens the instance from CONSTELLATION_DAGSTER_INSTANCE_REF, as a worker process does.

The container lives on the engine, not in the orchestrator: an orchestrator restart never touches it. A thread
follows each run it launched or adopted (reconcile, after a restart, adopts the runs whose container still
runs): when the container ends without the run having said so, the run is settled (FAILED, or CANCELED when it
was being canceled), and a finished run's container is removed.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

import docker
from dagster._core.launcher import LaunchRunContext, WorkerStatus
from dagster._core.storage.dagster_run import DagsterRun
from dagster._serdes import serialize_value
from dagster_docker import DockerRunLauncher
from dagster_docker.docker_run_launcher import DOCKER_CONTAINER_ID_TAG, DOCKER_IMAGE_TAG

from orchestrator_svc.k8s_launcher import ACTIVE, WORKER_UID, settle_run, worker_args
from orchestrator_svc.launcher import INSTANCE_REF_ENV, always
from orchestrator_svc.settings import OrchestratorSettings

log = logging.getLogger("orchestrator.docker")

PASSED_PREFIXES = ("CONSTELLATION_", "AWS_", "DAGSTER_")
RUN_LABEL = "constellation.run"


def launcher_config(settings: OrchestratorSettings, environ: dict[str, str] | None = None) -> dict[str, Any]:
    """DockerRunLauncher's config (dagster.yaml's run_launcher.config) from the orchestrator's settings. The
    environment is passed by name only: values stay in the orchestrator's environment, never in dagster.yaml."""
    environ = dict(os.environ if environ is None else environ)
    names = sorted(
        {n for n in environ if n.startswith(PASSED_PREFIXES) and n != INSTANCE_REF_ENV} | set(settings.docker_env)
    )
    memory = settings.docker_run_memory
    return {
        "image": settings.docker_image,
        "networks": settings.docker_networks,
        "env_vars": names,
        "container_kwargs": {
            "user": str(WORKER_UID),
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "mem_limit": memory,
            "memswap_limit": memory,
            "nano_cpus": int(settings.docker_run_cpus * 1e9),
            "pids_limit": 512,
            "labels": {"app": "constellation", "constellation.component": "run-worker"},
            "stop_timeout": int(settings.cancel_grace_s),
        },
    }


class DockerWorkerRunLauncher(DockerRunLauncher):
    """DockerRunLauncher whose container runs our worker (see the module's docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._settling = threading.Lock()
        self._disposed = threading.Event()
        self.may_write: Callable[[DagsterRun], bool] = always  # the orchestrator's lease check (runs.py)

    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        container_context = self.get_container_context(run)
        environment = {name: os.environ[name] for name in container_context.env_vars if name in os.environ}
        environment[INSTANCE_REF_ENV] = serialize_value(self._instance.get_ref())
        kwargs = {k: v for k, v in container_context.container_kwargs.items() if k != "stop_timeout"}
        labels = {**kwargs.pop("labels", {}), "dagster/run_id": run.run_id, RUN_LABEL: run.run_id}
        networks: list[str] = list(container_context.networks)
        network, more_networks = (networks[0], networks[1:]) if networks else (None, [])
        client = self._get_client(container_context)
        container = client.containers.create(
            image=self.image,
            command=worker_args(run.run_id),
            detach=True,
            environment=environment,
            labels=labels,
            name=f"constellation-run-{run.run_id}",
            **({"network_mode": "host"} if network == "host" else {"network": network}),
            **kwargs,
        )
        for name in more_networks:  # joined before it starts: the worker reaches every network from the start
            client.networks.get(name).connect(container)
        self._instance.add_run_tags(run.run_id, {DOCKER_CONTAINER_ID_TAG: container.id, DOCKER_IMAGE_TAG: self.image})
        self._instance.report_engine_event(
            f"Launching run in container {container.name} ({self.image})", dagster_run=run, cls=self.__class__
        )
        container.start()
        self.watch_adopted(run.run_id)

    def settle(self, run_id: str, why: str) -> None:
        with self._settling:
            settle_run(self._instance, run_id, why, self.may_write)

    def watch_adopted(self, run_id: str, poll_s: float = 2.0) -> None:
        """Follow a run's container until the run ends; settle the run if the container ends first; then remove
        the container."""

        def follow() -> None:
            while not self._disposed.wait(poll_s):
                run = self._instance.get_run_by_id(run_id)
                if run is None:
                    return
                if run.status in ACTIVE:
                    health = self.check_run_worker_health(run)
                    if health.status not in (WorkerStatus.FAILED, WorkerStatus.NOT_FOUND):
                        continue
                    # The worker may have just written its last event: read the run again before settling.
                    if self._disposed.wait(poll_s):
                        return
                    self.settle(run_id, f"its container ended ({health.msg or health.status.value})")
                self._remove(self._instance.get_run_by_id(run_id))
                return

        threading.Thread(target=follow, name=f"docker-run-{run_id}", daemon=True).start()

    def _remove(self, run: DagsterRun | None) -> None:
        container = self._get_container(run)
        if container is None:
            return
        try:
            container.wait(timeout=30)
            container.remove(force=True)
        except (docker.errors.DockerException, OSError) as error:  # the next look finds it again; log, go on
            log.warning(
                "could not remove a finished run's container", extra={"container": container.id, "error": str(error)}
            )

    def job_alive(self, run: DagsterRun) -> bool:
        return self.check_run_worker_health(run).status == WorkerStatus.RUNNING

    def dispose(self) -> None:
        self._disposed.set()
        super().dispose()
