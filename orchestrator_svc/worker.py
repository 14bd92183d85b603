"""A run's worker process: `python -m orchestrator_svc.worker RUN_ID` (started by launcher.WorkerRunLauncher).

`python -m orchestrator_svc.worker --spare` is a worker started before its run: it imports what a run needs,
then reads one line on stdin, {"run_id": ..., "log": ...}, and runs that run with its output appended to
that log; at the end of stdin (its orchestrator stopped) it exits.

Opens the instance the launcher names (CONSTELLATION_DAGSTER_INSTANCE_REF; in a
Kubernetes Job, DAGSTER_HOME's),
rebuilds the run's job from the LaunchRun request stored on the run, and
executes it with Dagster's execute_run. SIGINT/SIGTERM interrupt the running
step; Dagster then records RUN_CANCELED (the run was CANCELING) or
RUN_FAILURE. The run's scratch folder is removed when it ends, and the
worker's peak memory is recorded on the run. CONSTELLATION_WORKER_PROFILE=PATH
writes a cProfile of the execution there (for finding where a run's time goes).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

# Dagster and the ops are imported inside the functions: every child process a forkserver or spawn starts for
# this process (vectorize's strip processes) imports its main module, this one, again, and should not pay
# seconds for Dagster there.
if TYPE_CHECKING:
    from dagster import DagsterInstance, JobDefinition
    from dagster._core.storage.dagster_run import DagsterRun

log = logging.getLogger("orchestrator.worker")


def main(argv: list[str] | None = None) -> int:
    from dagster import DagsterRunStatus, build_reconstructable_job
    from dagster._core.definitions.job_base import InMemoryJob
    from dagster._core.execution.api import execute_run
    from dagster._utils.interrupts import capture_interrupts, setup_interrupt_handlers

    from orchestrator_svc import blocks, jobs
    from orchestrator_svc.launcher import MAX_RSS_TAG
    from orchestrator_svc.runs import REQUEST_TAG, SETTINGS_TAG

    parser = argparse.ArgumentParser(prog="python -m orchestrator_svc.worker")
    parser.add_argument("run_id", nargs="?", help="the run to execute")
    parser.add_argument("--spare", action="store_true", help="import what a run needs, then read the run on stdin")
    parser.add_argument("--keep-scratch", action="store_true")
    args = parser.parse_args(argv)
    if bool(args.run_id) == args.spare:
        parser.error("give a run id or --spare")
    instance = open_instance()  # a spare opens it before its run: Dagster's storages hold no connection meanwhile
    if args.spare:
        told = sys.stdin.readline()
        if not told.strip():
            instance.dispose()
            return 0  # no run: the orchestrator stopped
        order = json.loads(told)
        args.run_id = order["run_id"]
        log_fd = os.open(order["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(log_fd)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(levelname)s %(message)s")
    setup_interrupt_handlers()  # SIGTERM behaves like SIGINT
    with instance:
        run = instance.get_run_by_id(args.run_id)
        if run is None:
            log.error("no run %s in the instance", args.run_id)
            return 2
        if run.status == DagsterRunStatus.CANCELING:
            instance.report_run_canceled(run, message="Run canceled before it started.")
            return 0
        if run.status not in (DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING):
            log.error("run %s is %s; nothing to execute", args.run_id, run.status.value)
            return 2
        settings = jobs.JobSettings.from_json(run.tags[SETTINGS_TAG])
        plan = jobs.plan_of(run.tags[REQUEST_TAG], settings)
        # (a run over many items runs its steps in processes of Dagster's own forkserver, and vectorizes in them)
        if any(block.kind == "vectorize" for block in plan.blocks) and not jobs.runs_in_parallel(plan, settings):
            blocks.start_strip_processes()
        # The multiprocess executor's step processes rebuild the job from the same two documents (rebuild_job).
        runnable = (
            build_reconstructable_job(
                "orchestrator_svc.worker",
                "rebuild_job",
                reconstructable_kwargs={"request_json": run.tags[REQUEST_TAG], "settings_json": run.tags[SETTINGS_TAG]},
            )
            if jobs.runs_in_parallel(plan, settings)
            else InMemoryJob(jobs.build_job(plan, settings))
        )
        # a re-executed run's earlier attempts left their scratch (their workers died): this attempt removes it
        works = [Path(settings.work_dir, r) for r in attempts(instance, run)]
        try:
            with capture_interrupts():
                if os.environ.get("CONSTELLATION_WORKER_PROFILE"):
                    import cProfile

                    prof = cProfile.Profile()
                    result = prof.runcall(execute_run, runnable, run, instance)
                    prof.dump_stats(os.environ["CONSTELLATION_WORKER_PROFILE"])
                else:
                    result = execute_run(runnable, run, instance)
            log.info("run %s finished: %s", run.run_id, json.dumps({"success": result.success}))
        finally:
            if not args.keep_scratch:
                for work in works:
                    shutil.rmtree(work, ignore_errors=True)
            peak = blocks.peak_rss_kib()
            if peak:
                instance.add_run_tags(run.run_id, {MAX_RSS_TAG: str(peak)})
    return 0


def attempts(instance: DagsterInstance, run: DagsterRun) -> list[str]:
    """The run's id and those of the attempts it re-executes (its parent, theirs...)."""
    ids = [run.run_id]
    parent = run.parent_run_id
    while parent and len(ids) < 100:
        ids.append(parent)
        earlier = instance.get_run_by_id(parent)
        parent = earlier.parent_run_id if earlier else None
    return ids


def rebuild_job(request_json: str, settings_json: str) -> JobDefinition:
    """The run's job from its stored request and settings (in a step process of the multiprocess executor)."""
    from orchestrator_svc import jobs

    settings = jobs.JobSettings.from_json(settings_json)
    return jobs.build_job(jobs.plan_of(request_json, settings), settings)


def open_instance() -> DagsterInstance:
    """The instance the launcher names, or (a Kubernetes Job, which carries no credential) DAGSTER_HOME's,
    mounted by dagster-k8s (k8s_launcher.py)."""
    from dagster import DagsterInstance
    from dagster._core.instance.ref import InstanceRef
    from dagster._serdes import deserialize_value

    from orchestrator_svc.launcher import INSTANCE_REF_ENV

    ref = os.environ.get(INSTANCE_REF_ENV)
    return DagsterInstance.from_ref(deserialize_value(ref, InstanceRef)) if ref else DagsterInstance.get()


if __name__ == "__main__":
    sys.exit(main())
