"""A Dagster RunLauncher that runs each run in its own worker process.

The worker (`python -m orchestrator_svc.worker RUN_ID`) opens the same
instance and executes the run there, so runs never block the server, a crash
in one cannot take the server down, and runs keep going while the
orchestrator restarts (workers live in their own session). The worker's pid,
host and start time go on the run as tags, which is how a restarted
orchestrator tells a live worker (adopt it: the run resumes being watched)
from a dead one (the run is marked failed, never left STARTED).

A spare worker waits for the next run: started with the orchestrator and again
when the last running worker exits, it imports Dagster, the ops and the
libraries they use and opens the instance (most of a worker's start: 2.3 to
3.3 s from launch to the run's start on 2 busy cores, 0.14 to 0.35 s with a
spare), then reads the run id on its stdin. A run launched while no spare is
alive gets a worker started for it. The spare ends when the orchestrator stops
(it is killed, or reads the end of its stdin).

Cancel = Dagster's terminate: the run is marked CANCELING and the worker gets
SIGINT, which Dagster turns into an interrupt of the running step and a
RUN_CANCELED event; a worker that has not stopped after `cancel_grace_s` is
killed and the run marked CANCELED from outside.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from dagster import DagsterRunStatus, Field
from dagster._core.launcher import CheckRunHealthResult, LaunchRunContext, RunLauncher, WorkerStatus
from dagster._core.storage.dagster_run import DagsterRun
from dagster._serdes import ConfigurableClass, ConfigurableClassData, serialize_value

log = logging.getLogger("orchestrator.launcher")

PID_TAG = "constellation/worker_pid"
HOST_TAG = "constellation/worker_host"
START_TAG = "constellation/worker_start_ticks"
MAX_RSS_TAG = "constellation/worker_peak_rss_kib"  # written by the worker as it exits
EXIT_TAG = "constellation/worker_exit_code"
INSTANCE_REF_ENV = "CONSTELLATION_DAGSTER_INSTANCE_REF"
ACTIVE = (
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
    DagsterRunStatus.QUEUED,
)


def process_start_ticks(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat);
    None if it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return fields[19]


def worker_alive(run: DagsterRun) -> bool:
    """Whether the worker recorded on the run still runs on this host (same pid, same start time)."""
    tags = run.tags
    if PID_TAG not in tags or tags.get(HOST_TAG) != socket.gethostname():
        return False
    return process_start_ticks(int(tags[PID_TAG])) == tags.get(START_TAG)


def log_path(work_dir: str, run_id: str) -> Path:
    return Path(work_dir, "logs", f"{run_id}.log")


def always(run: DagsterRun) -> bool:
    """A launcher's `may_write` outside an orchestrator (the Dagster UI's, a worker's): no leases there."""
    return True


class WorkerRunLauncher(RunLauncher, ConfigurableClass):
    def __init__(
        self,
        work_dir: str,
        cancel_grace_s: float = 15.0,
        keep_scratch: bool = False,
        spare: bool = True,
        inst_data: ConfigurableClassData | None = None,
    ) -> None:
        self._inst_data = inst_data
        self.work_dir = work_dir
        self.cancel_grace_s = cancel_grace_s
        self.keep_scratch = keep_scratch
        self.spare = spare
        self._children: dict[str, subprocess.Popen] = {}
        self._spare: subprocess.Popen | None = None  # a worker that imported everything and waits for a run id
        self._lock = threading.Lock()
        self._settling = threading.Lock()  # one settle/cancel decision at a time in this process
        self._disposed = threading.Event()
        self.may_write: Callable[[DagsterRun], bool] = always  # the orchestrator's lease check (runs.py)
        super().__init__()

    # -- ConfigurableClass ---------------------------------------------------

    @property
    def inst_data(self) -> ConfigurableClassData | None:
        return self._inst_data

    @classmethod
    def config_type(cls) -> dict:
        return {
            "work_dir": Field(str),
            "cancel_grace_s": Field(float, is_required=False, default_value=15.0),
            "keep_scratch": Field(bool, is_required=False, default_value=False),
            "spare": Field(bool, is_required=False, default_value=True),
        }

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]) -> WorkerRunLauncher:
        return cls(inst_data=inst_data, **config_value)

    # -- launching -------------------------------------------------------------

    def _worker(self, argument: str, logs: Path, stdin: int) -> subprocess.Popen:
        logs.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env[INSTANCE_REF_ENV] = serialize_value(self._instance.get_ref())
        command = [sys.executable, "-m", "orchestrator_svc.worker", argument]
        if self.keep_scratch:
            command.append("--keep-scratch")
        with open(logs, "ab") as out:
            return subprocess.Popen(
                command, stdin=stdin, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )

    def start_spare(self) -> None:
        """A spare worker for the next run, unless one is alive, a run's worker is (its imports would take CPU
        from that run, or from the worker of a run launched before the last one's worker exited) or the
        orchestrator is stopping."""
        with self._lock:
            if not self.spare or self._disposed.is_set() or self._children:
                return
            if self._spare is not None and self._spare.poll() is None:
                return
            self._spare = spare = self._worker("--spare", Path(self.work_dir, "logs", "spare.log"), subprocess.PIPE)
        log.info("spare worker started", extra={"pid": spare.pid})

    def _take_spare(self, run_id: str, logs: Path) -> subprocess.Popen | None:
        """The spare worker, told its run (and the log to write to), if one is alive to take it."""
        with self._lock:
            spare, self._spare = self._spare, None
        if spare is None or spare.poll() is not None or spare.stdin is None:
            return None
        try:
            spare.stdin.write(json.dumps({"run_id": run_id, "log": str(logs)}).encode() + b"\n")
            spare.stdin.close()
        except OSError:  # it ended meanwhile
            spare.kill()
            spare.wait()
            return None
        return spare

    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        logs = log_path(self.work_dir, run.run_id)
        child = self._take_spare(run.run_id, logs) or self._worker(run.run_id, logs, subprocess.DEVNULL)
        ticks = process_start_ticks(child.pid) or ""
        self._instance.add_run_tags(
            run.run_id, {PID_TAG: str(child.pid), HOST_TAG: socket.gethostname(), START_TAG: ticks}
        )
        with self._lock:
            self._children[run.run_id] = child
        threading.Thread(target=self._reap, args=(run.run_id, child), name=f"reap-{run.run_id}", daemon=True).start()
        log.info("worker started", extra={"run_id": run.run_id, "pid": child.pid, "log": str(logs)})

    def _reap(self, run_id: str, child: subprocess.Popen) -> None:
        """Wait for our own worker; record its exit code; settle a run it left unfinished."""
        _, status = os.waitpid(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        with self._lock:
            self._children.pop(run_id, None)
        if self._disposed.is_set():
            return
        self.start_spare()  # between runs, where its imports take no CPU from a run
        try:
            run = self._instance.get_run_by_id(run_id)
            if run is None or (run.status in ACTIVE and not self.may_write(run)):  # another orchestrator owns
                return  # the run now: it settles it
            self._instance.add_run_tags(run_id, {EXIT_TAG: str(child.returncode)})
            self.settle(run_id, f"its worker process exited with code {child.returncode}")
        except Exception:  # the instance may be closing with the server
            log.exception("could not settle run after its worker exited", extra={"run_id": run_id})

    def settle(self, run_id: str, why: str) -> None:
        """A run whose worker is gone must not stay active: CANCELING becomes CANCELED, anything else FAILED;
        only by the run's owner (`may_write`, checked just before the write)."""
        with self._settling:
            run = self._instance.get_run_by_id(run_id)
            if run is None or run.status not in ACTIVE or not self.may_write(run):
                return
            if run.status == DagsterRunStatus.CANCELING:
                self._instance.report_run_canceled(run, message=f"Run canceled: {why}.")
            else:
                self._instance.report_run_failed(
                    run, message=f"The run did not finish: {why} ({log_path(self.work_dir, run_id)})."
                )

    def watch_adopted(self, run_id: str, poll_s: float = 0.5) -> None:
        """Follow a live worker this process did not start (after a restart) and settle its run when it goes."""

        def follow() -> None:
            while not self._disposed.wait(poll_s):
                run = self._instance.get_run_by_id(run_id)
                if run is None or run.status not in ACTIVE:
                    return
                if not worker_alive(run):
                    time.sleep(poll_s)  # let a worker that just finished write its last event
                    self.settle(run_id, "its worker process exited while the orchestrator was not its parent")
                    return

        threading.Thread(target=follow, name=f"adopt-{run_id}", daemon=True).start()

    # -- terminating -----------------------------------------------------------

    def terminate(self, run_id: str) -> bool:
        with self._settling:
            run = self._instance.get_run_by_id(run_id)
            if run is None or run.status not in ACTIVE:
                return False
            if run.status != DagsterRunStatus.CANCELING:
                self._instance.report_run_canceling(run, message="Canceling the run: its worker is asked to stop.")
            if not worker_alive(run):
                self._instance.report_run_canceled(run, message="Run canceled before its worker was running.")
                return True
        pid = int(run.tags[PID_TAG])
        try:
            os.kill(pid, signal.SIGINT)
        except ProcessLookupError:
            pass
        threading.Thread(target=self._escalate, args=(run_id, pid), name=f"cancel-{run_id}", daemon=True).start()
        return True

    def _escalate(self, run_id: str, pid: int) -> None:
        deadline = time.monotonic() + self.cancel_grace_s
        run = self._instance.get_run_by_id(run_id)
        while time.monotonic() < deadline:
            run = self._instance.get_run_by_id(run_id)
            if run is None or run.status not in ACTIVE or not worker_alive(run):
                break
            time.sleep(0.2)
        if run is not None and run.status in ACTIVE and worker_alive(run):
            log.warning("worker did not stop in time; killing it", extra={"run_id": run_id, "pid": pid})
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for _ in range(50):  # our reaper settles it; this covers a worker another process started
            run = self._instance.get_run_by_id(run_id)
            if run is None or run.status not in ACTIVE or not worker_alive(run):
                break
            time.sleep(0.1)
        time.sleep(0.5)
        self.settle(run_id, "its worker was stopped")

    # -- health ----------------------------------------------------------------

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        if worker_alive(run):
            return CheckRunHealthResult(WorkerStatus.RUNNING)
        return CheckRunHealthResult(WorkerStatus.NOT_FOUND, "no live worker process for this run on this host")

    def dispose(self) -> None:
        """Stop settling runs from this process (the orchestrator is stopping); workers keep running, the
        spare is stopped."""
        self._disposed.set()
        with self._lock:
            spare, self._spare = self._spare, None
        if spare is not None:
            spare.kill()
            spare.wait()
