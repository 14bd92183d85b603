"""Runs: launch, read, list, cancel, reconcile after a restart, and follow their events.

A run is a Dagster run in the persistent instance, tagged as ours and
carrying the LaunchRun request it came from (so its worker, and a restarted
orchestrator, can rebuild its job and name its blocks). Nothing about a run
lives only in this process: GetRun and WatchRun read the instance, so they
answer the same after a restart.

Replicas: several orchestrators may share one instance (PostgreSQL). Each active run has one owner, the
replica holding its lease (`orchestrator-run:<run id>` in mesh.leases' table, on the instance's database):
the one that launched it, or, once an owner's lease expired (it died), the first survivor whose keeper
thread finds the run unowned. The owner alone settles a run whose worker is gone; `takeover` decides what a
new owner does with a run: follow its live worker (adopt), re-execute it from its failed or unfinished steps
(its worker died: Dagster's re-execution from failure, a new Dagster run, an "attempt", chained from the
last by NEXT_TAG) or settle it (a cancel was under way). Any replica serves GetRun, ListRuns, WatchRun and
CancelRun for any run, from the instance alone; they follow the chain of attempts, and WatchRun streams it
as one run (the failure that ended an attempt and the next one's start-up events left out), so sequence
numbers, and core's resume point, are the same whichever replica answers.

Fencing: a replica paused past its lease's expiry (a GC pause, SIGSTOP) may wake after a survivor took its
runs. Every write it makes as a run's owner (settling the run when its worker ends, chaining and launching its
re-execution) is made only while it still holds that run's lease at the generation it took: the writes go
to Dagster's storage, which cannot join our transaction, so the lease is renewed immediately before each one
(`_still_owner`, the launchers' `may_write`): a renewal only succeeds for the holder of that generation, and
it keeps the lease this replica's for a whole TTL, while the write follows within milliseconds; only a pause
longer than the TTL in that very gap could slip through. A refused renewal drops the run from this replica,
which logs that it lost the lease and stops acting on it.
CancelRun is not an owner's write: any replica may ask for it, as in core.

Following events: one `RunFeed` per watched run polls the run's event log
(by storage id, every `poll_s`), maps each record once (events.py) and keeps
the list; every watcher of that run reads the same list, so all see the same
sequence, and a watcher that leaves only lowers the feed's count.
"""

from __future__ import annotations

import builtins
import hashlib
import logging
import socket
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from dagster import DagsterInstance, DagsterRunStatus, RunsFilter
from dagster._core.errors import DagsterRunAlreadyExists
from dagster._core.event_api import EventLogCursor
from dagster._core.events import DagsterEventType
from dagster._core.execution.api import create_execution_plan
from dagster._core.execution.plan.state import KnownExecutionState
from dagster._core.storage.dagster_run import DagsterRun

from clients.roots import StorageRoots
from clients.storage import Storage
from constellation.common.v1 import common_pb2 as common
from constellation.orchestrator.v1 import orchestrator_pb2 as pb
from mesh.enums import enum_name
from mesh.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from mesh.ids import new_id
from mesh.leases import Lease, LeaseLost, Leases
from orchestrator_svc import events, jobs, specs
from orchestrator_svc.docker_launcher import DockerWorkerRunLauncher
from orchestrator_svc.k8s_launcher import K8sWorkerRunLauncher
from orchestrator_svc.launcher import ACTIVE, HOST_TAG, WorkerRunLauncher, worker_alive
from orchestrator_svc.settings import OrchestratorSettings

log = logging.getLogger("orchestrator.runs")

ORCHESTRATOR_TAG = "constellation/orchestrator"
RUN_ID_TAG = "constellation/run_id"
REQUEST_TAG = "constellation/request"
FINGERPRINT_TAG = "constellation/fingerprint"
SETTINGS_TAG = "constellation/job_settings"
# Set on an attempt whose worker died, before it is marked failed: the Dagster run id of the attempt that
# re-executes it from the failed step (same RUN_ID_TAG; ORCHESTRATOR_TAG ATTEMPT instead of "1").
NEXT_TAG = "constellation/next_attempt"
ATTEMPT = "attempt"
# A later attempt's own start-up events: the run has long started, so WatchRun leaves them out.
ATTEMPT_START_TYPES = {
    DagsterEventType.RUN_ENQUEUED,
    DagsterEventType.RUN_DEQUEUED,
    DagsterEventType.RUN_STARTING,
    DagsterEventType.RUN_START,
}
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
RECORDS_PER_QUERY = 1000
LEASE_PREFIX = "orchestrator-run:"  # + our run id: the lease of the replica owning the run
# Dagster run ids must be UUIDs; the mesh's run ids (core's, e.g. run_01J...) map onto them one to one.
RUN_NAMESPACE = uuid.UUID("6f1c3a52-2f0e-4d0b-9a51-7c0a3e5b9d10")


def dagster_run_id(run_id: str) -> str:
    return str(uuid.uuid5(RUN_NAMESPACE, run_id))


@dataclass
class RunInfo:
    id: str
    state: common.RunState.ValueType
    state_message: str = ""
    outputs: list[common.RunOutput] = field(default_factory=list)
    create_time: datetime | None = None
    start_time: float | None = None
    end_time: float | None = None


def fingerprint(request: pb.LaunchRunRequest) -> str:
    """Identifies what a LaunchRun asked for, whatever its run_id (for idempotent retries)."""
    body = pb.LaunchRunRequest()
    body.CopyFrom(request)
    body.run_id = ""
    return hashlib.sha256(body.SerializeToString(deterministic=True)).hexdigest()


def block_of_step(run: DagsterRun) -> dict[str, str]:
    """Step key -> block id; a block run once per STAC item has a step `<op>__<n>` per item."""
    request = specs.request_from_json(run.tags[REQUEST_TAG])
    steps = {v: k for k, v in specs._op_names([b.id for b in request.spec.blocks]).items()}
    items = max((len(d.items) for d in request.datasets.values()), default=0)
    return steps | {f"{op}__{n}": block for op, block in steps.items() for n in range(1, items + 1)}


ADOPT, REEXECUTE, SETTLE, SKIP = "adopt", "reexecute", "settle", "skip"


def takeover(
    run: DagsterRun, launcher: WorkerRunLauncher | K8sWorkerRunLauncher | DockerWorkerRunLauncher, here: str
) -> str:
    """What the new owner of an active run does: ADOPT (its worker, Job or container still runs: follow it), REEXECUTE
    (its worker is gone: run its failed and unfinished steps again), SETTLE (its worker is gone while a cancel
    was under way: mark it canceled), SKIP (its worker ran on another host, whose orchestrator can tell whether
    it lives)."""
    gone = REEXECUTE if run.status != DagsterRunStatus.CANCELING else SETTLE
    if isinstance(launcher, (K8sWorkerRunLauncher, DockerWorkerRunLauncher)):  # a Job or container per run: its
        # status on the cluster or engine says whether it runs
        return ADOPT if launcher.job_alive(run) else gone
    if worker_alive(run):  # same host, same pid, same process start time: really that worker
        return ADOPT
    if run.tags.get(HOST_TAG, here) != here:
        return SKIP
    return gone


class RunFeed:
    """A run's RunEvents so far, filled by a poller thread while anyone watches."""

    def __init__(
        self, instance: DagsterInstance, run_id: str, steps: dict[str, str], poll_s: float, stopping: threading.Event
    ) -> None:
        self.instance, self.run_id, self.steps, self.poll_s, self.stopping = instance, run_id, steps, poll_s, stopping
        self.events: list[common.RunEvent] = []
        self.attempt = False  # reading a re-execution's log (run_id is then that attempt's)
        self.finished = False
        self.error: Exception | None = None
        self.watchers = 0
        self._state = events.INITIAL_STATE
        self._cursor: int | None = None
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def poll(self) -> None:
        while not self.finished:
            cursor = EventLogCursor.from_storage_id(self._cursor).to_string() if self._cursor is not None else None
            connection = self.instance.get_records_for_run(self.run_id, cursor=cursor, limit=RECORDS_PER_QUERY)
            if not connection.records:
                return
            switched = False
            with self._cond:
                for record in connection.records:
                    entry = record.event_log_entry
                    if events.is_terminal(entry):
                        run = self.instance.get_run_by_id(self.run_id)
                        following = run.tags.get(NEXT_TAG) if run else None
                        if following:  # the attempt was re-executed: go on with the next one's log
                            self.run_id, self._cursor, self.attempt, switched = following, None, True, True
                            break
                    self._cursor = record.storage_id
                    kind = entry.dagster_event.event_type if entry.dagster_event else None
                    if self.attempt and kind in ATTEMPT_START_TYPES:
                        continue
                    event = events.to_run_event(len(self.events) + 1, entry, self._state, self.steps)
                    self._state = event.state
                    self.events.append(event)
                    if events.is_terminal(entry):
                        self.finished = True
                        break
                self._cond.notify_all()
            if not connection.has_more and not switched:
                return

    def _loop(self) -> None:
        while not self.finished and not self.stopping.is_set():
            with self._cond:
                if self.watchers == 0:
                    self._thread = None
                    return
            try:
                self.poll()
            except Exception as error:  # reported to the watchers, who end their streams
                log.exception("reading the event log failed", extra={"run_id": self.run_id})
                with self._cond:
                    self.error = error
                    self._cond.notify_all()
                return
            self.stopping.wait(self.poll_s)
        with self._cond:
            self._thread = None
            self._cond.notify_all()

    def join(self) -> None:
        with self._cond:
            self.watchers += 1
            if self._thread is None and not self.finished:
                self._thread = threading.Thread(target=self._loop, name=f"feed-{self.run_id}", daemon=True)
                self._thread.start()

    def leave(self) -> None:
        with self._cond:
            self.watchers -= 1

    def follow(self, after_sequence: int, is_active: Callable[[], bool]) -> Iterator[common.RunEvent]:
        index = after_sequence
        while True:
            with self._cond:
                while len(self.events) <= index and not self.finished and self.error is None:
                    self._cond.wait(timeout=0.5)
                    if not is_active() or self.stopping.is_set():
                        return
                if self.error is not None:
                    raise self.error
                batch = self.events[index:]
            yield from batch
            index += len(batch)
            if self.finished and index >= len(self.events):
                return


class RunManager:
    def __init__(
        self,
        instance: DagsterInstance,
        settings: OrchestratorSettings,
        roots: StorageRoots,
        storage: Storage | None = None,
        poll_s: float = 0.05,
        *,
        leases: Leases,
        lease_renew_s: float,
    ) -> None:
        self.instance = instance
        self.settings = settings
        self.roots = roots  # where scenes and export destinations may lie; checked again here at LaunchRun
        self.storage = storage or Storage(settings.s3_endpoint_url)
        self.poll_s = poll_s
        self.stopping = threading.Event()
        self._feeds: dict[str, RunFeed] = {}
        self._feeds_lock = threading.Lock()
        self.leases = leases  # on the instance's database (instance.lease_engine); this replica's are in _owned
        self.lease_renew_s = lease_renew_s
        self._owned: dict[str, Lease] = {}
        self._owned_lock = threading.Lock()
        self.launcher.may_write = self._still_owner
        if isinstance(self.launcher, WorkerRunLauncher):
            self.launcher.start_spare()

    @property
    def launcher(self) -> WorkerRunLauncher | K8sWorkerRunLauncher | DockerWorkerRunLauncher:
        launcher = self.instance.run_launcher
        if not isinstance(launcher, (WorkerRunLauncher, K8sWorkerRunLauncher, DockerWorkerRunLauncher)):
            raise RuntimeError(
                f"the Dagster instance's run launcher is {type(launcher).__name__}, not one of ours "
                "(WorkerRunLauncher, K8sWorkerRunLauncher, DockerWorkerRunLauncher)"
            )
        return launcher

    # -- launching -------------------------------------------------------------

    def launch(self, request: pb.LaunchRunRequest) -> RunInfo:
        run_id = request.run_id or new_id("run")
        if not specs.RUN_ID.match(run_id):
            raise InvalidArgument.field(
                "run_id", f"{run_id!r}: letters, digits, '-' and '_', at most 64, starting with a letter or digit"
            )
        wanted = fingerprint(request)
        engine_id = dagster_run_id(run_id)
        existing = self.instance.get_run_by_id(engine_id)
        if existing is not None:
            return self._relaunch(existing, wanted)
        stored = pb.LaunchRunRequest()
        stored.CopyFrom(request)
        stored.run_id = run_id
        plan = specs.build_plan(
            stored,
            default_batch_size=self.settings.default_batch_size,
            default_max_concurrency=self.settings.default_max_concurrency,
            infer_timeout_s=self.settings.infer_timeout_s,
            infer_wait_s=self.settings.infer_wait_s,
            roots=self.roots,
            model_host_allowed=self.settings.model_host_allowed,
        )
        specs.check_world(plan, self.storage)
        job_settings = jobs.JobSettings.of(self.settings, self.roots)
        job = jobs.build_job(plan, job_settings)
        tags = {
            ORCHESTRATOR_TAG: "1",
            RUN_ID_TAG: run_id,
            REQUEST_TAG: specs.request_to_json(stored),
            FINGERPRINT_TAG: wanted,
            SETTINGS_TAG: job_settings.to_json(),
        }
        lease = self._own(run_id)
        if lease is None:  # another replica is launching (or owns) this very run id
            existing = self.instance.get_run_by_id(engine_id)
            if existing is None:
                raise Unavailable(f"run {run_id!r} is being launched by another orchestrator; try again")
            return self._relaunch(existing, wanted)
        try:
            self.instance.create_run_for_job(
                job,
                run_id=engine_id,
                run_config=jobs.run_config(plan, job_settings),
                tags=tags,
                status=DagsterRunStatus.NOT_STARTED,
            )
        except DagsterRunAlreadyExists:
            self._disown(run_id)
            existing = self.instance.get_run_by_id(engine_id)
            if existing is None:  # deleted between the two calls
                raise Unavailable(
                    f"run {wanted!r} vanished from the Dagster instance while launching; try again"
                ) from None
            return self._relaunch(existing, wanted)
        # No code location serves these jobs (the worker builds them), so there is no workspace to pass.
        self.instance.launch_run(engine_id, workspace=None)  # type: ignore[arg-type]  # Dagster allows None here
        log.info("run launched", extra={"run_id": run_id, "blocks": len(plan.blocks)})
        return self.get(run_id)

    def _relaunch(self, run: DagsterRun, wanted: str) -> RunInfo:
        from mesh.errors import AlreadyExists

        if run.tags.get(FINGERPRINT_TAG) != wanted:
            raise AlreadyExists(
                f"run {run.tags.get(RUN_ID_TAG, run.run_id)!r} exists and was launched with a different request"
            )
        return self.get(run.tags[RUN_ID_TAG])

    # -- reading ---------------------------------------------------------------

    def _run(self, run_id: str) -> DagsterRun:
        """The run as first launched (its first attempt)."""
        run = self.instance.get_run_by_id(dagster_run_id(run_id)) if run_id else None
        if run is None or run.tags.get(ORCHESTRATOR_TAG) != "1":
            raise NotFound(f"no run has id {run_id!r}")
        return run

    def _chain(self, first: DagsterRun) -> builtins.list[DagsterRun]:
        """The run's attempts, first to latest; a re-execution not created yet (its owner is creating it, or
        died doing so) is left out."""
        chain = [first]
        while NEXT_TAG in chain[-1].tags and len(chain) < 100:
            following = self.instance.get_run_by_id(chain[-1].tags[NEXT_TAG])
            if following is None:
                break
            chain.append(following)
        return chain

    def _current(self, run_id: str) -> DagsterRun:
        return self._chain(self._run(run_id))[-1]

    def get(self, run_id: str) -> RunInfo:
        run = self._run(run_id)
        record = self.instance.get_run_record_by_id(run.run_id)
        assert record is not None
        return self._info(record)

    def _info(self, first) -> RunInfo:
        """From the first attempt's record: its creation and start; the latest attempt's state and end; the
        outputs of them all."""
        chain = self._chain(first.dagster_run)
        run = chain[-1]
        record = first if len(chain) == 1 else self.instance.get_run_record_by_id(run.run_id)
        assert record is not None
        state = events.RUN_STATES[run.status]
        end_time = record.end_time
        if NEXT_TAG in run.tags:  # its re-execution is being created
            state, end_time = common.RUN_STATE_RUNNING, None
        elif state not in events.TERMINAL_STATES:
            # Dagster stores the terminal event, then updates the run's status and end time: a reader in
            # between would see a watcher already told the run ended. The event log decides.
            ended = self.instance.get_records_for_run(run.run_id, of_type=set(events.TERMINAL_EVENT_TYPES), limit=1)
            for ending in ended.records:
                dagster_event = ending.event_log_entry.dagster_event
                ending_state = events.EVENT_TYPES[dagster_event.event_type].state if dagster_event else None
                if ending_state is not None:
                    state, end_time = ending_state, end_time or ending.event_log_entry.timestamp
        info = RunInfo(
            run.tags[RUN_ID_TAG],
            state,
            create_time=first.create_timestamp,
            start_time=first.start_time,
            end_time=end_time,
        )
        if state == common.RUN_STATE_FAILED:
            info.state_message = self._failure_reason(run.run_id)
        elif state == common.RUN_STATE_CANCELED:
            info.state_message = self._last_message(run.run_id, DagsterEventType.RUN_CANCELED) or "canceled"
        if state == common.RUN_STATE_SUCCEEDED:
            for attempt in chain:
                connection = self.instance.get_records_for_run(
                    attempt.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION
                )
                info.outputs += [
                    o for o in (events.run_output_of(r.event_log_entry) for r in connection.records) if o is not None
                ]
        return info

    def _last_message(self, run_id: str, event_type: DagsterEventType) -> str:
        connection = self.instance.get_records_for_run(run_id, of_type=event_type, limit=1, ascending=False)
        for record in connection.records:
            event = record.event_log_entry.dagster_event
            return (event.message if event else "") or ""
        return ""

    def _failure_reason(self, run_id: str) -> str:
        """The first failed step and why (e.g. the model endpoint's message); else the run's own failure message."""
        steps = self.instance.get_records_for_run(run_id, of_type=DagsterEventType.STEP_FAILURE, limit=1)
        for record in steps.records:
            entry = record.event_log_entry
            run = self.instance.get_run_by_id(run_id)
            block = (block_of_step(run) if run else {}).get(entry.step_key or "", entry.step_key or "")
            return f"block {block!r} failed: {events.failure_message(entry)}"
        return self._last_message(run_id, DagsterEventType.RUN_FAILURE) or "failed"

    def list(self, page_size: int, page_token: str) -> tuple[builtins.list[RunInfo], str]:
        if page_size < 0:
            raise InvalidArgument.field("page_size", "must not be negative")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        if page_token:
            try:
                self._run(page_token)
            except NotFound:
                raise InvalidArgument.field("page_token", "is not a token from a previous ListRuns") from None
        cursor = dagster_run_id(page_token) if page_token else None
        records = self.instance.get_run_records(
            filters=RunsFilter(tags={ORCHESTRATOR_TAG: "1"}), limit=size, cursor=cursor
        )
        infos = [self._info(r) for r in records]
        return infos, (infos[-1].id if len(infos) == size else "")

    # -- canceling ---------------------------------------------------------------

    def cancel(self, run_id: str) -> RunInfo:
        run = self._current(run_id)
        if run.is_finished:
            state = enum_name(common.RunState, events.RUN_STATES[run.status]).upper()
            raise FailedPrecondition(f"run {run_id!r} has already ended ({state}); there is nothing to cancel")
        self.launcher.terminate(run.run_id)
        return self.get(run_id)

    # -- owners (leases) ------------------------------------------------------------

    def _own(self, run_id: str) -> Lease | None:
        lease = self.leases.acquire(LEASE_PREFIX + run_id)
        if lease is not None:
            with self._owned_lock:
                self._owned[run_id] = lease
        return lease

    def _disown(self, run_id: str) -> None:
        with self._owned_lock:
            lease = self._owned.pop(run_id, None)
        if lease is not None:
            self.leases.release(lease)

    def _still_owner(self, run: DagsterRun) -> bool:
        """Just before a write to the run as its owner: renew its lease (which succeeds only for this replica at
        the generation it took); a lost run is dropped, with a warning."""
        run_id = run.tags.get(RUN_ID_TAG, "")
        with self._owned_lock:
            lease = self._owned.get(run_id)
        if lease is None:  # e.g. a cancel served here for another's run: its owner settles it
            log.info("not settling a run another orchestrator owns", extra={"run_id": run_id})
            return False
        if self.leases.renew(lease):
            return True
        with self._owned_lock:
            self._owned.pop(run_id, None)
        log.warning(
            "not writing to a run whose lease this orchestrator lost (another one owns it now)",
            extra={"run_id": run_id},
        )
        return False

    def _fence(self, run: DagsterRun) -> None:
        if not self._still_owner(run):
            raise LeaseLost(f"run {run.tags.get(RUN_ID_TAG, '')!r} is owned by another orchestrator now")

    def owned(self) -> builtins.list[str]:
        with self._owned_lock:
            return builtins.list(self._owned)

    def reconcile(self) -> tuple[builtins.list[str], builtins.list[str]]:
        """Active runs no replica owns (their owner stopped or died and its lease expired): take each one's
        lease, then adopt it if its worker still runs, else re-execute it (or settle it, if it was being
        canceled). Returns (adopted or re-executed, settled) run ids."""
        adopted, settled = [], []
        here = socket.gethostname()
        records = self.instance.get_run_records(
            filters=RunsFilter(statuses=list(ACTIVE), tags={ORCHESTRATOR_TAG: ["1", ATTEMPT]})
        )
        for record in records:
            run = record.dagster_run
            run_id = run.tags.get(RUN_ID_TAG, "")
            if not run_id or run_id in self.owned() or self.leases.holder_of(LEASE_PREFIX + run_id):
                continue
            if self._own(run_id) is None:
                continue  # another survivor took it first
            try:
                chain = self._chain(self._run(run_id))  # as it is now that it is ours
                if any(earlier.status in ACTIVE for earlier in chain[:-1]):
                    # Its owner died re-executing it (between creating the next attempt and launching it):
                    # _reexecute goes on from where it stopped, settling the attempt it replaces, launching the new.
                    for earlier in chain[:-1]:
                        if earlier.status in ACTIVE:
                            self._reexecute(earlier)
                    adopted.append(run_id)
                    continue
                run = chain[-1]
                if run.status not in ACTIVE:
                    self._disown(run_id)
                    continue
                if NEXT_TAG in run.tags:  # its owner died having named the next attempt, before creating it
                    self._reexecute(run)
                    adopted.append(run_id)
                    continue
                if run.status == DagsterRunStatus.NOT_STARTED:  # created, never launched: its owner died between
                    self._fence(run)
                    self.instance.launch_run(run.run_id, workspace=None)  # type: ignore[arg-type]  # as in launch
                    adopted.append(run_id)
                    continue
                action = takeover(run, self.launcher, here)
                if action == ADOPT:
                    self.launcher.watch_adopted(run.run_id)
                    adopted.append(run_id)
                elif action == REEXECUTE:
                    self._reexecute(run)
                    adopted.append(run_id)
                elif action == SETTLE:
                    self.launcher.settle(run.run_id, "its orchestrator stopped and no live worker was found for it")
                    self._disown(run_id)
                    settled.append(run_id)
                else:
                    self._disown(run_id)
            except LeaseLost:
                continue  # _still_owner dropped it and said so
        if adopted or settled:
            log.info("took over runs", extra={"adopted": adopted, "settled": settled})
        return adopted, settled

    def _reexecute(self, run: DagsterRun) -> str:
        """Runs the failed and unfinished steps of `run` (an attempt whose worker died) again in a new attempt,
        the finished steps' outputs read from the earlier attempts (Dagster's re-execution from failure).
        Returns the new attempt's Dagster run id.

        Four writes, after each of which one of the run's attempts is still active, so an owner that dies
        between two leaves the run to the next owner, whose reconcile calls this again and goes on from where it
        stopped: NEXT_TAG names the attempt (whoever reads the failure below already knows the run goes on), the
        attempt is created (NOT_STARTED), the failed attempt is settled, the new one is launched."""
        self._fence(run)
        attempt_id = run.tags.get(NEXT_TAG) or str(uuid.uuid4())
        if NEXT_TAG not in run.tags:
            self.instance.add_run_tags(run.run_id, {NEXT_TAG: attempt_id})
        steps: Sequence[str] = ()
        if self.instance.get_run_by_id(attempt_id) is None:
            settings = jobs.JobSettings.from_json(run.tags[SETTINGS_TAG])
            job = jobs.build_job(jobs.plan_of(run.tags[REQUEST_TAG], settings), settings)
            # As the failed run it is about to be settled as (Dagster re-executes only failed runs): its steps'
            # state comes from its event log alone.
            failed = run.with_status(DagsterRunStatus.FAILURE)
            steps, known_state = KnownExecutionState.build_resume_retry_reexecution(self.instance, failed)
            plan = create_execution_plan(
                job, run.run_config, step_keys_to_execute=steps, known_state=known_state, tags=run.tags
            )
            tags = {k: v for k, v in run.tags.items() if not k.startswith(("constellation/worker_", "dagster/"))}
            tags.pop(NEXT_TAG, None)
            self._fence(run)
            self.instance.create_run_for_job(
                job,
                execution_plan=plan,
                run_config=run.run_config,
                tags={**tags, ORCHESTRATOR_TAG: ATTEMPT},
                root_run_id=run.root_run_id or run.run_id,
                parent_run_id=run.run_id,
                run_id=attempt_id,
                status=DagsterRunStatus.NOT_STARTED,
            )
        self.launcher.settle(run.run_id, f"its worker died; re-executed from its failed step as {attempt_id}")
        attempt = self.instance.get_run_by_id(attempt_id)
        if attempt is not None and attempt.status == DagsterRunStatus.NOT_STARTED:
            self._fence(run)  # a lost attempt stays NOT_STARTED: the new owner launches it in turn
            self.instance.launch_run(attempt_id, workspace=None)  # type: ignore[arg-type]  # as in launch
        log.info(
            "re-executed a run whose worker died",
            extra={"run_id": run.tags.get(RUN_ID_TAG), "steps": list(steps), "attempt": attempt_id},
        )
        return attempt_id

    def keep_leases(self) -> None:
        """Every lease_renew_s: release the leases of runs that ended, renew the others, take over unowned ones."""
        threading.Thread(target=self._keep, name="run-leases", daemon=True).start()

    def _keep(self) -> None:
        while not self.stopping.wait(self.lease_renew_s):
            try:
                self._renew()
                self.reconcile()
            except Exception:  # the database is away for a moment: leases expire if it stays away
                log.warning("could not keep the runs' leases", exc_info=True)

    def _renew(self) -> None:
        with self._owned_lock:
            owned = dict(self._owned)
        for run_id, lease in owned.items():
            run = self._current(run_id)
            if run.status not in ACTIVE and NEXT_TAG not in run.tags:
                self._disown(run_id)
            elif not self.leases.renew(lease):
                log.warning("lost a run's lease; another orchestrator owns it", extra={"run_id": run_id})
                with self._owned_lock:
                    self._owned.pop(run_id, None)

    # -- events ------------------------------------------------------------------

    def watch(self, run_id: str, after_sequence: int, is_active: Callable[[], bool]) -> Iterator[common.RunEvent]:
        """The run's events, its attempts' in one sequence (RunFeed)."""
        run = self._run(run_id)
        if after_sequence < 0:
            raise InvalidArgument.field("after_sequence", "must be 0 (from the start) or a sequence number seen before")
        with self._feeds_lock:
            feed = self._feeds.get(run_id)
            if feed is None or feed.error is not None:
                feed = RunFeed(self.instance, run.run_id, block_of_step(run), self.poll_s, self.stopping)
                self._feeds[run_id] = feed
            feed.join()
        try:
            yield from feed.follow(after_sequence, is_active)
        finally:
            feed.leave()
            with self._feeds_lock:
                if feed.watchers == 0 and self._feeds.get(run_id) is feed:
                    del self._feeds[run_id]

    def check_instance(self) -> None:
        self.instance.get_run_records(limit=1)

    def close(self) -> None:
        """Stops owning runs: their workers keep running, and their leases are given up so another replica
        adopts them at its next look."""
        self.stopping.set()
        try:
            self.launcher.dispose()
        except RuntimeError:
            pass
        for run_id in self.owned():
            try:
                self._disown(run_id)
            except Exception:
                log.warning("could not release a run's lease; it expires", extra={"run_id": run_id})
