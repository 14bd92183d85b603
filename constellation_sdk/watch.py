"""Follow a run's merged event stream: live progress for people, a timing report for everyone.

`follow(client, run_id, view)` reads core's WatchRun until the run ends (resuming after the last
sequence if the stream breaks) and returns a `RunReport`: the final run, its outputs, how many tiles
the model steps saw, and how long each stage took (deploy, ingest, infer, stitch, export).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING

import grpc

from constellation.common.v1 import common_pb2 as c
from constellation.core.v1 import core_pb2
from mesh.enums import enum_name

if TYPE_CHECKING:
    from rich.progress import TaskID

E = c.RunEventType
TERMINAL = {c.RUN_STATE_SUCCEEDED, c.RUN_STATE_FAILED, c.RUN_STATE_CANCELED}
# Which stage each block kind's step belongs to.
STAGE_OF_KIND = {
    "dataset": "ingest",
    "tile": "ingest",
    "model": "infer",
    "stitch": "stitch",
    "vectorize": "export",
    "export": "export",
}
STAGES = ("deploy", "ingest", "infer", "stitch", "export")


def _seconds(stamp) -> float:
    return stamp.seconds + stamp.nanos / 1e9


def state_name(state: c.RunState.ValueType) -> str:
    return enum_name(c.RunState, state) or "unspecified"


@dataclass
class RunReport:
    run: core_pb2.Run
    events: int = 0
    # Block id -> seconds from STEP_STARTED to STEP_SUCCEEDED/FAILED.
    step_seconds: dict[str, float] = field(default_factory=dict)
    # Stage -> seconds; "deploy" runs from the run's start to the job's launch.
    stage_seconds: dict[str, float] = field(default_factory=dict)
    tiles: int = 0
    failure_source: str = ""
    total_seconds: float = 0.0

    @property
    def state(self) -> str:
        return state_name(self.run.state)

    def as_dict(self) -> dict:
        return {
            "run_id": self.run.id,
            "state": self.state,
            "state_message": self.run.state_message,
            "failure_source": self.failure_source,
            "outputs": [
                {"name": o.name, "uri": o.uri, "media_type": o.media_type, "block_id": o.block_id}
                for o in self.run.outputs
            ],
            "tiles": self.tiles,
            "stage_seconds": {k: round(v, 3) for k, v in self.stage_seconds.items()},
            "step_seconds": {k: round(v, 3) for k, v in self.step_seconds.items()},
            "total_seconds": round(self.total_seconds, 3),
        }


class LineView:
    """Plain lines, for logs and terminals without live redraw: state changes, step ends, progress by quarters."""

    def __init__(self, out=sys.stdout, show_logs: bool = False) -> None:
        self.out, self.show_logs = out, show_logs
        self._quarter: dict[str, int] = {}

    def __enter__(self) -> LineView:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def event(self, event: c.RunEvent) -> None:
        line = ""
        kind = E.Name(event.type).removeprefix("RUN_EVENT_TYPE_").lower()
        where = f"[{event.block_id}] " if event.block_id else ""
        if event.type == E.RUN_EVENT_TYPE_STEP_PROGRESS and event.progress.total:
            quarter = 4 * event.progress.done // event.progress.total
            if quarter > self._quarter.get(event.block_id, -1):
                self._quarter[event.block_id] = quarter
                line = f"{where}{event.progress.done}/{event.progress.total} {event.progress.unit}"
        elif event.type in (
            E.RUN_EVENT_TYPE_DEPLOYMENT,
            E.RUN_EVENT_TYPE_STEP_STARTED,
            E.RUN_EVENT_TYPE_STEP_SUCCEEDED,
            E.RUN_EVENT_TYPE_STEP_FAILED,
            E.RUN_EVENT_TYPE_STEP_RETRY,
            E.RUN_EVENT_TYPE_OUTPUT,
        ) or kind.startswith("run_"):
            line = f"{where}{kind}: {event.message}"
        elif self.show_logs and event.type == E.RUN_EVENT_TYPE_LOG:
            line = f"{where}{event.source}: {event.message}"
        if line:
            print(f"  {line}", file=self.out, flush=True)


class BarView:
    """Live bars on a terminal (rich): one per step, the deployment's state above them."""

    def __init__(self, blocks: Sequence[tuple[str, str]]) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description:<22}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[note]}"),
            TimeElapsedColumn(),
        )
        self.tasks = {
            block_id: self.progress.add_task(f"{block_id} ({kind})", total=None, start=False, note="")
            for block_id, kind in [("deploy", "models"), *blocks]
        }

    def __enter__(self) -> BarView:
        self.progress.__enter__()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.progress.__exit__(kind, error, traceback)

    def _task(self, block_id: str) -> TaskID:
        return self.tasks.get(block_id, self.tasks["deploy"])

    def event(self, event: c.RunEvent) -> None:
        p = self.progress
        if event.type == E.RUN_EVENT_TYPE_DEPLOYMENT:
            task = self.tasks["deploy"]
            p.start_task(task)
            p.update(task, note=event.message[:70])
            if " healthy:" in event.message or "already serving" in event.message:
                p.update(task, total=1, completed=1)
        elif event.type == E.RUN_EVENT_TYPE_STEP_STARTED:
            p.start_task(self._task(event.block_id))
        elif event.type == E.RUN_EVENT_TYPE_STEP_PROGRESS and event.progress.total:
            p.update(
                self._task(event.block_id),
                total=event.progress.total,
                completed=event.progress.done,
                note=event.progress.unit,
            )
        elif event.type == E.RUN_EVENT_TYPE_STEP_SUCCEEDED:
            task = self._task(event.block_id)
            total = p.tasks[task].total or 1
            p.update(task, total=total, completed=total, note="done")
        elif event.type == E.RUN_EVENT_TYPE_STEP_FAILED:
            p.update(self._task(event.block_id), note=f"[red]failed: {event.message[:60]}")
        elif event.type in (E.RUN_EVENT_TYPE_RUN_FAILED, E.RUN_EVENT_TYPE_RUN_CANCELED):
            p.console.print(f"[red]{event.source}: {event.message}")


def make_view(blocks: Sequence[tuple[str, str]], live: bool | None = None) -> LineView | BarView:
    """Bars when stdout is a terminal, lines otherwise."""
    return BarView(blocks) if (sys.stdout.isatty() if live is None else live) else LineView()


def follow(
    core, run_id: str, on_event: Callable[[c.RunEvent], None] = lambda e: None, spec: c.PipelineSpec | None = None
) -> RunReport:
    """Read the run's events until it ends; the report of what happened."""
    kinds = {b.id: b.WhichOneof("config") or "" for b in spec.blocks} if spec is not None else {}
    after, events, started = 0, 0, time.monotonic()
    step_start: dict[str, float] = {}
    steps: dict[str, float] = {}
    tiles: dict[str, int] = {}
    run_start = launched = None
    failure_source = ""
    ended = False
    while not ended:
        try:
            for event in core.WatchRun(core_pb2.WatchRunRequest(run_id=run_id, after_sequence=after)):
                after, events = event.sequence, events + 1
                at = _seconds(event.time)
                if run_start is None and event.state == c.RUN_STATE_STARTING:
                    run_start = at
                if launched is None and event.source == "core" and event.message.startswith("job launched"):
                    launched = at
                if event.type == E.RUN_EVENT_TYPE_STEP_STARTED:
                    step_start[event.block_id] = at
                elif (
                    event.type in (E.RUN_EVENT_TYPE_STEP_SUCCEEDED, E.RUN_EVENT_TYPE_STEP_FAILED)
                    and event.block_id in step_start
                ):
                    steps[event.block_id] = at - step_start[event.block_id]
                elif event.type == E.RUN_EVENT_TYPE_STEP_PROGRESS and event.progress.unit == "tiles":
                    tiles[event.block_id] = max(tiles.get(event.block_id, 0), int(event.progress.total))
                if event.type == E.RUN_EVENT_TYPE_RUN_FAILED:
                    failure_source = event.source
                on_event(event)
                if event.state in TERMINAL and event.type in (
                    E.RUN_EVENT_TYPE_RUN_SUCCEEDED,
                    E.RUN_EVENT_TYPE_RUN_FAILED,
                    E.RUN_EVENT_TYPE_RUN_CANCELED,
                ):
                    ended = True
            ended = True  # the stream ends only when the run has
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            time.sleep(1.0)  # the gateway or core restarted: resume after the last event seen
    run = core.GetRun(core_pb2.GetRunRequest(id=run_id))
    stages = {stage: 0.0 for stage in STAGES}
    if run_start is not None and launched is not None:
        stages["deploy"] = launched - run_start
    for block_id, seconds in steps.items():
        stage = STAGE_OF_KIND.get(kinds.get(block_id, ""), "")
        if stage:
            stages[stage] += seconds
    return RunReport(
        run=run, events=events, step_seconds=steps, stage_seconds=stages, tiles=sum(tiles.values()),
        failure_source=failure_source, total_seconds=time.monotonic() - started,
    )  # fmt: skip
