"""The executor of a run in its worker process: Dagster's in-process executor, except that the steps of
independent branches run at once, in threads of the worker, and that what a step freed is given back.

Dagster runs a job's steps either one at a time in one process (in-process) or each in a process of its own
(multiprocess; a run over many STAC items in parallel uses that). A pipeline over one scene with two branches
(a model and an index, or two models) would wait for one branch before the other, and a process per step
costs seconds of imports and loses what steps of one run share in memory (ops.start_early_export). Our ops
spend their time in GDAL, numpy, onnx endpoints' gRPC calls and vectorize's processes, all outside the GIL,
so threads run branches side by side. Dagster has no threaded executor of its own (dagster-io/dagster#4041).
With `max_concurrent` 1 it runs one step after another, as in-process.

How it runs the plan, with Dagster's own ActiveExecution deciding what is ready (retries, skips, failures):
- a step that is the only one ready while none runs runs on the main thread, exactly as in-process (so a
  chain of steps, the common pipeline, runs as before, and a cancel interrupts it the same way);
- otherwise up to `max_concurrent` ready steps each run on a thread of their own, and the main thread passes
  their events on in order and starts what becomes ready;
- a cancel (SIGINT/SIGTERM, which Dagster captures on the main thread) is raised in each running step's
  thread as the same DagsterExecutionInterruptedError a step on the main thread gets, at its next Python
  instruction; every step reports its failure, then the run stops as an in-process one does.
"""

from __future__ import annotations

import ctypes
import os
import queue
import threading
from collections.abc import Iterator
from contextlib import ExitStack

from dagster import Field, executor
from dagster._core.definitions.executor_definition import get_retries_config
from dagster._core.errors import DagsterExecutionInterruptedError
from dagster._core.events import DagsterEvent, EngineEventData
from dagster._core.execution.api import ExecuteRunWithPlanIterable
from dagster._core.execution.compute_logs import create_compute_log_file_key
from dagster._core.execution.context.system import (
    PlanExecutionContext,
    PlanOrchestrationContext,
    StepExecutionContext,
)
from dagster._core.execution.context_creation_job import PlanExecutionContextManager
from dagster._core.execution.plan.execute_plan import _trigger_hook, dagster_event_sequence_for_step
from dagster._core.execution.plan.instance_concurrency_context import InstanceConcurrencyContext
from dagster._core.execution.plan.plan import ExecutionPlan
from dagster._core.execution.retries import RetryMode
from dagster._core.executor.base import Executor
from dagster._utils.interrupts import pop_captured_interrupt

_POLL_S = 0.1  # how often the main thread looks for a captured interrupt while threads run
_ENDED = object()  # a step thread's last item on the queue


class ThreadedExecutor(Executor):
    def __init__(self, retries: RetryMode, max_concurrent: int) -> None:
        self._retries = retries
        self.max_concurrent = max(1, max_concurrent)

    @property
    def retries(self) -> RetryMode:
        return self._retries

    def execute(self, plan_context: PlanOrchestrationContext, execution_plan: ExecutionPlan) -> Iterator[DagsterEvent]:
        keys = execution_plan.step_keys_to_execute
        yield DagsterEvent.engine_event(
            plan_context,
            f"Executing steps in process (pid: {os.getpid()}), "
            + (f"up to {self.max_concurrent} at once in threads" if self.max_concurrent > 1 else "one at a time"),
            event_specific_data=EngineEventData.in_process(os.getpid(), keys),
        )
        yield from iter(
            ExecuteRunWithPlanIterable(
                execution_plan=plan_context.execution_plan,
                iterator=self._iterate,
                execution_context_manager=PlanExecutionContextManager(
                    job=plan_context.job,
                    retry_mode=plan_context.retry_mode,
                    execution_plan=plan_context.execution_plan,
                    run_config=plan_context.run_config,
                    dagster_run=plan_context.dagster_run,
                    instance=plan_context.instance,
                    raise_on_error=plan_context.raise_on_error,
                    output_capture=plan_context.output_capture,
                ),
            )
        )
        yield DagsterEvent.engine_event(
            plan_context,
            f"Finished steps in process (pid: {os.getpid()})",
            event_specific_data=EngineEventData.in_process(os.getpid(), keys),
        )

    def _iterate(self, job_context: PlanExecutionContext, execution_plan: ExecutionPlan) -> Iterator[DagsterEvent]:
        compute_logs = job_context.instance.compute_log_manager
        step_keys = [step.key for step in execution_plan.get_steps_to_execute_in_topo_order()]
        with ExitStack() as stack:
            concurrency = stack.enter_context(InstanceConcurrencyContext(job_context.instance, job_context.dagster_run))
            active = stack.enter_context(
                execution_plan.start(
                    retry_mode=job_context.retry_mode,
                    max_concurrent=self.max_concurrent,
                    instance_concurrency_context=concurrency,
                    step_dependency_config=job_context.step_dependency_config,
                )
            )
            log_key = compute_logs.build_log_key_for_run(job_context.run_id, create_compute_log_file_key())
            log_context = stack.enter_context(compute_logs.capture_logs(log_key))
            yield DagsterEvent.capture_logs(job_context, step_keys, log_key, log_context)

            items: queue.Queue = queue.Queue()
            running: dict[str, tuple[threading.Thread, StepExecutionContext, list[DagsterEvent]]] = {}
            interrupted = False
            raised: BaseException | None = None  # the first error a step raised past Dagster's handling
            while not active.is_complete or running:
                if not interrupted:
                    steps = active.get_steps_to_execute(limit=self.max_concurrent - len(running))
                    yield from active.concurrency_event_iterator(job_context)
                    if len(steps) == 1 and not running:  # nothing could run beside it: as in-process
                        yield from self._on_main_thread(job_context, active, steps[0])
                        continue
                    for step in steps:
                        context = job_context.for_step(step, active.get_known_state())
                        thread = threading.Thread(
                            target=_run_step, args=(context, step.key, items), name=f"step-{step.key}", daemon=True
                        )
                        running[step.key] = (thread, context, [])
                        thread.start()
                if not running:
                    if interrupted:
                        break
                    active.sleep_til_ready()  # a step waits to be retried
                    continue
                if not interrupted and pop_captured_interrupt():
                    interrupted = True
                    active.mark_interrupted()
                    yield DagsterEvent.engine_event(
                        job_context,
                        f"Interrupted: stopping the steps that run ({', '.join(sorted(running))})",
                        EngineEventData.interrupted(sorted(running)),
                    )
                    for thread, _, _ in running.values():
                        _raise_in(thread, DagsterExecutionInterruptedError)
                try:
                    key, item = items.get(timeout=_POLL_S)
                except queue.Empty:
                    # A thread that died without its last item (an interrupt landed in its `finally`) has ended.
                    for key in [k for k, (thread, _, _) in running.items() if not thread.is_alive()]:
                        yield from self._ended(job_context, active, key, running.pop(key))
                    continue
                thread, _, events = running[key]
                if item is _ENDED:
                    yield from self._ended(job_context, active, key, running.pop(key))
                elif isinstance(item, BaseException):
                    # The step raised past Dagster's own handling (an interrupt does, after its failure event):
                    # stop the others and raise it once every step has ended, as the in-process executor would.
                    raised = raised or item
                    if not interrupted:
                        interrupted = True
                        active.mark_interrupted()
                        for other, _, _ in running.values():
                            if other is not thread:
                                _raise_in(other, DagsterExecutionInterruptedError)
                else:
                    events.append(item)
                    yield item
                    active.handle_event(item)
            if raised is not None:
                raise raised
            if interrupted:
                raise DagsterExecutionInterruptedError()

    def _ended(self, job_context: PlanExecutionContext, active, key: str, ran) -> Iterator[DagsterEvent]:
        thread, context, events = ran
        thread.join()
        yield from _finish(job_context, active, key, context, events)

    def _on_main_thread(self, job_context: PlanExecutionContext, active, step) -> Iterator[DagsterEvent]:
        context = job_context.for_step(step, active.get_known_state())
        events = []
        for event in dagster_event_sequence_for_step(context):
            events.append(event)
            yield event
            active.handle_event(event)
        yield from _finish(job_context, active, step.key, context, events)


def _finish(job_context: PlanExecutionContext, active, key: str, context, events) -> Iterator[DagsterEvent]:
    """After a step's last event, wherever it ran: what the in-process executor does then, and the memory the
    step freed is given back."""
    active.verify_complete(job_context, key)  # a step that ended without success or failure fails the run
    yield from active.plan_events_iterator(job_context)  # the steps its failure skips
    yield from _trigger_hook(context, events)
    release_free_memory()


def release_free_memory() -> None:
    """Give the memory that this process freed back to the system (glibc's malloc_trim; nothing elsewhere).

    glibc keeps what a step frees (tile batches, strips, GDAL's buffers) for later allocations of the same
    arena, and each thread allocates from an arena of its own, so the next step, or a COG written in another
    thread, took fresh memory beside it. Trimming after each step (about 10 ms) lowered the worker's peak from
    550-620 to 470-490 MiB on an 8192² run, and from 465-495 to 415 MiB on a 2048² one (bench/orchestrator.py).
    """
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _glibc()


def _run_step(context, key: str, items: queue.Queue) -> None:
    try:
        for event in dagster_event_sequence_for_step(context):
            items.put((key, event))
    except BaseException as error:  # noqa: BLE001 - handed to the main thread, which raises it
        items.put((key, error))
    finally:
        items.put((key, _ENDED))


def _raise_in(thread: threading.Thread, error: type[BaseException]) -> None:
    """Raise `error` in `thread` at its next Python instruction (as a signal handler does on the main thread)."""
    if thread.ident is not None and thread.is_alive():
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(error))


@executor(
    name="constellation_threads",
    config_schema={
        "retries": get_retries_config(),
        "max_concurrent": Field(int, default_value=2, description="steps of independent branches at once"),
    },
)
def threaded_executor(init_context) -> ThreadedExecutor:
    """Steps of independent branches at once, in threads of the run's worker process (orchestrator_svc.executor)."""
    config = init_context.executor_config
    return ThreadedExecutor(RetryMode.from_config(config["retries"]) or RetryMode.ENABLED, config["max_concurrent"])
