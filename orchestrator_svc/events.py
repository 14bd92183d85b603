"""Dagster's event log, as the mesh's RunEvent stream.

Every record in a run's Dagster event log becomes exactly one RunEvent, in
storage order, so `sequence` (the record's 1-based position in the run's
log) is the same for every watcher, across orchestrator restarts, and can be
passed back as a cursor. `EVENT_TYPES` is the whole mapping: each
DagsterEventType names the RunEventType it becomes and the run state it
leads to (None: the state does not change). A test fails when Dagster adds an
event type this table does not place.

Two kinds of record carry more than their type:
- a step's log line `progress: DONE/TOTAL UNIT` (written by `progress_message`)
  becomes STEP_PROGRESS with a Progress; other log lines become LOG;
- an ASSET_MATERIALIZATION written by an export block becomes OUTPUT with the
  file's RunOutput (`output_metadata` writes the metadata it reads).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from dagster import DagsterRunStatus
from dagster._core.events import DagsterEventType
from dagster._core.events.log import EventLogEntry
from google.protobuf.timestamp_pb2 import Timestamp

from constellation.common.v1 import common_pb2 as common

E = common.RunEventType
S = common.RunState
SOURCE = "orchestrator"


@dataclass(frozen=True)
class EventMapping:
    type: common.RunEventType.ValueType
    state: common.RunState.ValueType | None  # RunState after the event; None keeps the current one


T = DagsterEventType
EVENT_TYPES: dict[DagsterEventType, EventMapping] = {
    # The run's life.
    T.RUN_ENQUEUED: EventMapping(E.RUN_EVENT_TYPE_RUN_QUEUED, S.RUN_STATE_QUEUED),
    T.RUN_DEQUEUED: EventMapping(E.RUN_EVENT_TYPE_LOG, S.RUN_STATE_STARTING),
    T.RUN_STARTING: EventMapping(E.RUN_EVENT_TYPE_LOG, S.RUN_STATE_STARTING),
    T.RUN_START: EventMapping(E.RUN_EVENT_TYPE_RUN_STARTED, S.RUN_STATE_RUNNING),
    T.RUN_SUCCESS: EventMapping(E.RUN_EVENT_TYPE_RUN_SUCCEEDED, S.RUN_STATE_SUCCEEDED),
    T.RUN_FAILURE: EventMapping(E.RUN_EVENT_TYPE_RUN_FAILED, S.RUN_STATE_FAILED),
    T.RUN_CANCELING: EventMapping(E.RUN_EVENT_TYPE_RUN_CANCELING, S.RUN_STATE_CANCELING),
    T.RUN_CANCELED: EventMapping(E.RUN_EVENT_TYPE_RUN_CANCELED, S.RUN_STATE_CANCELED),
    T.RUN_SUSPENDED: EventMapping(E.RUN_EVENT_TYPE_LOG, None),
    T.RUN_RESUMED: EventMapping(E.RUN_EVENT_TYPE_LOG, None),
    # Steps.
    T.STEP_START: EventMapping(E.RUN_EVENT_TYPE_STEP_STARTED, None),
    T.STEP_RESTARTED: EventMapping(E.RUN_EVENT_TYPE_STEP_STARTED, None),  # the next attempt after STEP_RETRY
    T.STEP_SUCCESS: EventMapping(E.RUN_EVENT_TYPE_STEP_SUCCEEDED, None),
    T.STEP_FAILURE: EventMapping(E.RUN_EVENT_TYPE_STEP_FAILED, None),
    T.STEP_UP_FOR_RETRY: EventMapping(E.RUN_EVENT_TYPE_STEP_RETRY, None),
    T.STEP_SKIPPED: EventMapping(E.RUN_EVENT_TYPE_LOG, None),
    # What a step wrote.
    T.ASSET_MATERIALIZATION: EventMapping(E.RUN_EVENT_TYPE_OUTPUT, None),
    # Everything else is shown as a log line with its Dagster name.
    T.STEP_OUTPUT: EventMapping(E.RUN_EVENT_TYPE_LOG, None),
    T.STEP_INPUT: EventMapping(E.RUN_EVENT_TYPE_LOG, None),
    T.STEP_WORKER_STARTING: EventMapping(E.RUN_EVENT_TYPE_LOG, None),
    T.STEP_WORKER_STARTED: EventMapping(E.RUN_EVENT_TYPE_LOG, None),
    T.RESOURCE_INIT_STARTED: EventMapping(E.RUN_EVENT_TYPE_LOG, None),
    T.RESOURCE_INIT_SUCCESS: EventMapping(E.RUN_EVENT_TYPE_LOG, None),
    T.RESOURCE_INIT_FAILURE: EventMapping(E.RUN_EVENT_TYPE_LOG, None),
    T.ASSET_MATERIALIZATION_PLANNED: EventMapping(E.RUN_EVENT_TYPE_LOG, None),
    T.ASSET_FAILED_TO_MATERIALIZE: EventMapping(E.RUN_EVENT_TYPE_LOG, None),
    T.ASSET_OBSERVATION: EventMapping(E.RUN_EVENT_TYPE_LOG, None),
    T.STEP_EXPECTATION_RESULT: EventMapping(E.RUN_EVENT_TYPE_LOG, None),
    T.ASSET_CHECK_EVALUATION_PLANNED: EventMapping(E.RUN_EVENT_TYPE_LOG, None),
    T.ASSET_CHECK_EVALUATION: EventMapping(E.RUN_EVENT_TYPE_LOG, None),
    T.ASSET_HEALTH_CHANGED: EventMapping(E.RUN_EVENT_TYPE_LOG, None),
    T.ASSET_WIPED: EventMapping(E.RUN_EVENT_TYPE_LOG, None),
    T.OBJECT_STORE_OPERATION: EventMapping(E.RUN_EVENT_TYPE_LOG, None),
    T.ASSET_STORE_OPERATION: EventMapping(E.RUN_EVENT_TYPE_LOG, None),
    T.LOADED_INPUT: EventMapping(E.RUN_EVENT_TYPE_LOG, None),
    T.HANDLED_OUTPUT: EventMapping(E.RUN_EVENT_TYPE_LOG, None),
    T.ENGINE_EVENT: EventMapping(E.RUN_EVENT_TYPE_LOG, None),
    T.HOOK_COMPLETED: EventMapping(E.RUN_EVENT_TYPE_LOG, None),
    T.HOOK_ERRORED: EventMapping(E.RUN_EVENT_TYPE_LOG, None),
    T.HOOK_SKIPPED: EventMapping(E.RUN_EVENT_TYPE_LOG, None),
    T.ALERT_START: EventMapping(E.RUN_EVENT_TYPE_LOG, None),
    T.ALERT_SUCCESS: EventMapping(E.RUN_EVENT_TYPE_LOG, None),
    T.ALERT_FAILURE: EventMapping(E.RUN_EVENT_TYPE_LOG, None),
    T.LOGS_CAPTURED: EventMapping(E.RUN_EVENT_TYPE_LOG, None),
    T.FRESHNESS_STATE_EVALUATION: EventMapping(E.RUN_EVENT_TYPE_LOG, None),
    T.FRESHNESS_STATE_CHANGE: EventMapping(E.RUN_EVENT_TYPE_LOG, None),
    T.CODE_LOCATION_UPDATED: EventMapping(E.RUN_EVENT_TYPE_LOG, None),
}
del T

TERMINAL_EVENT_TYPES = frozenset(
    {DagsterEventType.RUN_SUCCESS, DagsterEventType.RUN_FAILURE, DagsterEventType.RUN_CANCELED}
)

RUN_STATES: dict[DagsterRunStatus, common.RunState.ValueType] = {
    DagsterRunStatus.QUEUED: S.RUN_STATE_QUEUED,
    DagsterRunStatus.NOT_STARTED: S.RUN_STATE_QUEUED,
    DagsterRunStatus.MANAGED: S.RUN_STATE_RUNNING,
    DagsterRunStatus.STARTING: S.RUN_STATE_STARTING,
    DagsterRunStatus.STARTED: S.RUN_STATE_RUNNING,
    DagsterRunStatus.SUSPENDED: S.RUN_STATE_RUNNING,
    DagsterRunStatus.SUCCESS: S.RUN_STATE_SUCCEEDED,
    DagsterRunStatus.FAILURE: S.RUN_STATE_FAILED,
    DagsterRunStatus.CANCELING: S.RUN_STATE_CANCELING,
    DagsterRunStatus.CANCELED: S.RUN_STATE_CANCELED,
}
TERMINAL_STATES = frozenset({S.RUN_STATE_SUCCEEDED, S.RUN_STATE_FAILED, S.RUN_STATE_CANCELED})
INITIAL_STATE = S.RUN_STATE_QUEUED

PROGRESS = re.compile(r"^progress: (\d+)/(\d+) ([a-z_]+)$")
LOG_MESSAGE = "LOG_MESSAGE"  # engine_event_type of a step's own log line (no DagsterEvent)


def progress_message(done: int, total: int, unit: str) -> str:
    """The log line a step writes to report progress; becomes a STEP_PROGRESS event."""
    return f"progress: {done}/{total} {unit}"


# Metadata an export block attaches to its AssetMaterialization, read back into a RunOutput.
OUTPUT_KEYS = ("uri", "media_type", "name", "block_id")


def output_metadata(name: str, uri: str, media_type: str, block_id: str) -> dict[str, str]:
    return {"uri": uri, "media_type": media_type, "name": name, "block_id": block_id}


def _timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromMicroseconds(round(seconds * 1e6))
    return stamp


def _metadata_text(metadata: Mapping, key: str) -> str:
    value = metadata.get(key)
    if value is None:
        return ""
    return str(getattr(value, "value", getattr(value, "text", getattr(value, "path", value))))


def run_output_of(entry: EventLogEntry) -> common.RunOutput | None:
    event = entry.dagster_event
    materialization = getattr(event.event_specific_data, "materialization", None) if event else None
    metadata = getattr(materialization, "metadata", None) or {}
    if "uri" not in metadata:
        return None
    return common.RunOutput(**{key: _metadata_text(metadata, key) for key in OUTPUT_KEYS})


# Dagster's own wrappers around the exception a step raised.
WRAPPER_ERRORS = (
    "DagsterExecutionStepExecutionError",
    "RetryRequestedFromPolicy",
    "RetryRequested",
    "DagsterUserCodeExecutionError",
)


def failure_message(entry: EventLogEntry) -> str:
    """One line on why a step or run failed: the Failure's description, else the error's message. No traceback."""
    event = entry.dagster_event
    data = event.event_specific_data if event else None
    user = getattr(data, "user_failure_data", None)
    if user is not None and user.description:
        return user.description
    error = getattr(data, "error", None)
    while error is not None and getattr(error, "cause", None) is not None and error.cls_name in WRAPPER_ERRORS:
        error = error.cause
    if error is None or not error.message:
        return ""
    message = error.message.strip().splitlines()[0]
    # SerializableErrorInfo messages read "module.Class: text"; the class is noise to a person.
    head, _, rest = message.partition(": ")
    if rest and head.rsplit(".", 1)[-1] == error.cls_name:
        message = rest
    return message


DEFAULT_MESSAGES = {
    DagsterEventType.RUN_ENQUEUED: "Run queued.",
    DagsterEventType.RUN_DEQUEUED: "Run dequeued.",
    DagsterEventType.RUN_STARTING: "Starting the run's worker process.",
}


def _message(entry: EventLogEntry, mapped: EventMapping) -> str:
    event = entry.dagster_event
    base = (event.message if event and event.message else entry.user_message) or ""
    if not base and event is not None:
        base = DEFAULT_MESSAGES.get(event.event_type, event.event_type.name.replace("_", " ").capitalize() + ".")
    if mapped.type in (E.RUN_EVENT_TYPE_STEP_FAILED, E.RUN_EVENT_TYPE_STEP_RETRY, E.RUN_EVENT_TYPE_RUN_FAILED):
        reason = failure_message(entry)
        if reason and reason not in base:
            base = f"{base.rstrip('.')}: {reason}" if base else reason
    return base


def to_run_event(
    sequence: int, entry: EventLogEntry, state: common.RunState.ValueType, block_of_step: Mapping[str, str]
) -> common.RunEvent:
    """The RunEvent for the `sequence`-th record of a run's log; `state` is the run's state before it."""
    event = entry.dagster_event
    step = entry.step_key or (event.step_key if event else None) or ""
    block_id = block_of_step.get(step, step)
    message = common.RunEvent(
        sequence=sequence, time=_timestamp(entry.timestamp), state=state, block_id=block_id, source=SOURCE
    )
    if event is None:
        message.engine_event_type = LOG_MESSAGE
        found = PROGRESS.match(entry.user_message or "")
        if found and block_id:
            message.type = E.RUN_EVENT_TYPE_STEP_PROGRESS
            message.progress.CopyFrom(
                common.Progress(unit=found.group(3), done=int(found.group(1)), total=int(found.group(2)))
            )
        else:
            message.type = E.RUN_EVENT_TYPE_LOG
        message.message = entry.user_message or ""
        return message
    mapped = EVENT_TYPES.get(event.event_type, EventMapping(E.RUN_EVENT_TYPE_LOG, None))
    message.type = mapped.type
    message.engine_event_type = event.event_type.name
    if mapped.state is not None:
        message.state = mapped.state
    message.message = _message(entry, mapped)
    if mapped.type == E.RUN_EVENT_TYPE_OUTPUT:
        output = run_output_of(entry)
        if output is None:
            message.type = E.RUN_EVENT_TYPE_LOG
        else:
            message.outputs.append(output)
    return message


def is_terminal(entry: EventLogEntry) -> bool:
    return entry.dagster_event is not None and entry.dagster_event.event_type in TERMINAL_EVENT_TYPES
