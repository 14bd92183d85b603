"""Runs on Kubernetes: dagster-k8s's K8sRunLauncher, running our worker in one Job per run.

Our jobs are built per run from the LaunchRun request stored on the run (worker.py), not loaded from a
code location, so the Job's command is `python -m orchestrator_svc.worker RUN_ID` instead of Dagster's
`dagster api execute_run`; everything else is dagster-k8s's own: the Job is built by
`construct_dagster_k8s_job` from the launcher's config (image, namespace, service account, env from
ConfigMaps and Secrets, resources), created through its API client with retries, deleted on terminate,
and its status is what check_run_worker_health reports. The worker pod opens the instance dagster-k8s
mounts at DAGSTER_HOME from the ConfigMap CONSTELLATION_DAGSTER_K8S_INSTANCE_CONFIG_MAP, whose storage
reads CONSTELLATION_DAGSTER_POSTGRES_URL from the pod's Secret, so no credential is written into the Job.
A run executes in one pod, its steps in the worker process (orchestrator_svc.executor; over many STAC items,
Dagster's multiprocess executor in the same pod): steps share the pod's scratch folder, and
what a run keeps goes to S3 (exports), so pods share no disk.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import kubernetes.client
from dagster import DagsterInstance, DagsterRunStatus
from dagster._core.launcher import LaunchRunContext, WorkerStatus
from dagster._core.storage.dagster_run import DagsterRun
from dagster_k8s import K8sRunLauncher
from dagster_k8s.job import construct_dagster_k8s_job, get_job_name_from_run_id

from orchestrator_svc.launcher import always
from orchestrator_svc.settings import OrchestratorSettings

log = logging.getLogger("orchestrator.k8s")

ACTIVE = (DagsterRunStatus.STARTING, DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING)
WORKER_UID = 10001
DAGSTER_HOME = "/opt/dagster/dagster_home"  # dagster-k8s's default, set as DAGSTER_HOME in every Job


def settle_run(
    instance: DagsterInstance, run_id: str, why: str, may_write: Callable[[DagsterRun], bool] = always
) -> None:
    """A run whose worker (Job, container) is gone or ended must not stay active: CANCELING becomes CANCELED,
    else FAILED; only by the run's owner (`may_write`: its lease is still this replica's, checked just before)."""
    run = instance.get_run_by_id(run_id)
    if run is None or run.status not in ACTIVE or not may_write(run):
        return
    if run.status == DagsterRunStatus.CANCELING:
        instance.report_run_canceled(run, message=f"Run canceled: {why}.")
    else:
        instance.report_run_failed(run, message=f"The run did not finish: {why}.")


def worker_args(run_id: str) -> list[str]:
    return ["python", "-m", "orchestrator_svc.worker", run_id]


def launcher_config(settings: OrchestratorSettings) -> dict[str, Any]:
    """K8sRunLauncher's config (dagster.yaml's run_launcher.config) from the orchestrator's settings."""
    resources = {"cpu": settings.k8s_run_cpu, "memory": settings.k8s_run_memory}
    account = {"service_account_name": settings.k8s_service_account} if settings.k8s_service_account else {}
    return {
        **account,
        "job_image": settings.k8s_image,
        "job_namespace": settings.k8s_namespace,
        "instance_config_map": settings.k8s_instance_config_map,
        "load_incluster_config": True,
        "image_pull_policy": "IfNotPresent",
        "env_config_maps": settings.k8s_env_config_maps,
        "env_secrets": settings.k8s_env_secrets,
        "env_vars": ["CONSTELLATION_HOME=/data"],
        # dagster-k8s sets DAGSTER_HOME in the Job; the instance's dagster.yaml is mounted there.
        "volumes": [{"name": "dagster-instance", "configMap": {"name": settings.k8s_instance_config_map}}],
        "volume_mounts": [
            {
                "name": "dagster-instance",
                "mountPath": f"{DAGSTER_HOME}/dagster.yaml",
                "subPath": "dagster.yaml",
                "readOnly": True,
            }
        ],
        "labels": {"app.kubernetes.io/part-of": "constellation"},
        "fail_pod_on_run_failure": True,
        "run_k8s_config": {
            "container_config": {
                "resources": {"requests": resources, "limits": resources},
                "security_context": {
                    "allow_privilege_escalation": False,
                    "capabilities": {"drop": ["ALL"]},
                    "run_as_non_root": True,
                    "run_as_user": WORKER_UID,
                    "seccomp_profile": {"type": "RuntimeDefault"},
                },
            },
            "pod_spec_config": {"automount_service_account_token": False},
            # A failed run is not retried by Kubernetes (Dagster reports it); finished Jobs go after a day.
            "job_spec_config": {"backoff_limit": 0, "ttl_seconds_after_finished": 86400},
        },
    }


class K8sWorkerRunLauncher(K8sRunLauncher):
    """K8sRunLauncher whose Job runs our worker (see the module's docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._settling = threading.Lock()
        self._disposed = threading.Event()
        self.may_write: Callable[[DagsterRun], bool] = always  # the orchestrator's lease check (runs.py)

    def build_job(self, run: DagsterRun) -> kubernetes.client.V1Job:
        """The run's Job, as dagster-k8s builds it from this launcher's config and the run's tags."""
        container_context = self.get_container_context_for_run(run)
        job_name = get_job_name_from_run_id(run.run_id)
        return construct_dagster_k8s_job(
            job_config=container_context.get_k8s_job_config(job_image=self.job_image, run_launcher=self),
            args=worker_args(run.run_id),
            job_name=job_name,
            pod_name=job_name,
            component="run_worker",
            user_defined_k8s_config=container_context.run_k8s_config,
            labels={"dagster/job": run.job_name, "dagster/run-id": run.run_id},
        )

    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        job = self.build_job(run)
        namespace = self.get_container_context_for_run(run).namespace or "default"
        self._report_run_worker_creating(run, job.metadata.name, namespace)
        self._api_client.create_namespaced_job_with_retries(body=job, namespace=namespace)
        self._report_run_worker_created(run)

    def settle(self, run_id: str, why: str) -> None:
        """A run whose Job is gone or failed must not stay active: CANCELING becomes CANCELED, else FAILED."""
        with self._settling:
            settle_run(self._instance, run_id, why, self.may_write)

    def watch_adopted(self, run_id: str, poll_s: float = 5.0) -> None:
        """Follow a run's Job after an orchestrator restart and settle the run when the Job ends without it."""

        def follow() -> None:
            while not self._disposed.wait(poll_s):
                run = self._instance.get_run_by_id(run_id)
                if run is None or run.status not in ACTIVE:
                    return
                if not self.job_alive(run):
                    health = self.check_run_worker_health(run)
                    self.settle(run_id, f"its Job ended or is gone ({health.msg or health.status.value})")
                    return

        threading.Thread(target=follow, name=f"adopt-{run_id}", daemon=True).start()

    def job_alive(self, run: DagsterRun) -> bool:
        """Whether the run's Job still runs: not when it ended, nor when there is none (never created, deleted,
        or gone with its namespace: dagster-k8s calls that UNKNOWN); an API that does not answer counts as
        running (a run is not executed twice for a moment's outage)."""
        namespace = self.get_container_context_for_run(run).namespace or "default"
        job_name = get_job_name_from_run_id(run.run_id, resume_attempt_number=self._get_resume_attempt_number(run))
        try:
            if self._api_client.get_job_status(namespace=namespace, job_name=job_name) is None:
                return False
        except Exception:  # the API server does not answer: look again at the next renewal
            log.warning("could not read a run's Job", extra={"run_id": run.run_id, "job": job_name}, exc_info=True)
            return True
        return self.check_run_worker_health(run).status in (WorkerStatus.RUNNING, WorkerStatus.UNKNOWN)

    def dispose(self) -> None:
        self._disposed.set()
        super().dispose()
