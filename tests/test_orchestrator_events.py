"""The mapping from Dagster's event log to RunEvent: every DagsterEventType is placed, each row says what it becomes."""

from __future__ import annotations

import pytest
from dagster import AssetKey, AssetMaterialization
from dagster._core.events import (
    DagsterEvent,
    DagsterEventType,
    EngineEventData,
    HandledOutputData,
    StepFailureData,
    StepMaterializationData,
    StepRetryData,
    StepSuccessData,
)
from dagster._core.events.log import EventLogEntry
from dagster._core.execution.plan.objects import UserFailureData
from dagster._utils.error import SerializableErrorInfo

from constellation.common.v1 import common_pb2 as c
from orchestrator_svc import events

T = DagsterEventType
E = c.RunEventType
S = c.RunState
STEPS = {"out_1": "out-1", "water": "water"}
ERROR = SerializableErrorInfo("RuntimeError: boom\n", [], "RuntimeError")
# Event types whose DagsterEvent insists on its specific data.
DATA = {
    T.STEP_SUCCESS: StepSuccessData(duration_ms=1.0),
    T.STEP_FAILURE: StepFailureData(ERROR, None),
    T.ENGINE_EVENT: EngineEventData(),
    T.HANDLED_OUTPUT: HandledOutputData(output_name="result", manager_key="io_manager"),
}


def entry(
    event_type: DagsterEventType | None,
    *,
    step: str | None = None,
    message: str = "",
    data=None,
    timestamp: float = 1795520000.25,
) -> EventLogEntry:
    dagster_event = None
    if event_type is not None:
        dagster_event = DagsterEvent(
            event_type_value=event_type.value,
            job_name="constellation_pipeline",
            step_key=step,
            message=message,
            event_specific_data=data,
        )
    return EventLogEntry(
        None, 20, message, "r", timestamp, step_key=step, job_name="constellation_pipeline", dagster_event=dagster_event
    )


def test_every_dagster_event_type_is_mapped_explicitly():
    assert set(events.EVENT_TYPES) == set(DagsterEventType), (
        "a Dagster upgrade added or removed event types: place them"
    )
    assert all(m.type != E.RUN_EVENT_TYPE_UNSPECIFIED for m in events.EVENT_TYPES.values())


@pytest.mark.parametrize(
    ("dagster", "type_", "state"),
    [
        (T.RUN_ENQUEUED, E.RUN_EVENT_TYPE_RUN_QUEUED, S.RUN_STATE_QUEUED),
        (T.RUN_STARTING, E.RUN_EVENT_TYPE_LOG, S.RUN_STATE_STARTING),
        (T.RUN_START, E.RUN_EVENT_TYPE_RUN_STARTED, S.RUN_STATE_RUNNING),
        (T.RUN_SUCCESS, E.RUN_EVENT_TYPE_RUN_SUCCEEDED, S.RUN_STATE_SUCCEEDED),
        (T.RUN_FAILURE, E.RUN_EVENT_TYPE_RUN_FAILED, S.RUN_STATE_FAILED),
        (T.RUN_CANCELING, E.RUN_EVENT_TYPE_RUN_CANCELING, S.RUN_STATE_CANCELING),
        (T.RUN_CANCELED, E.RUN_EVENT_TYPE_RUN_CANCELED, S.RUN_STATE_CANCELED),
        (T.STEP_START, E.RUN_EVENT_TYPE_STEP_STARTED, S.RUN_STATE_RUNNING),
        (T.STEP_RESTARTED, E.RUN_EVENT_TYPE_STEP_STARTED, S.RUN_STATE_RUNNING),
        (T.STEP_SUCCESS, E.RUN_EVENT_TYPE_STEP_SUCCEEDED, S.RUN_STATE_RUNNING),
        (T.STEP_FAILURE, E.RUN_EVENT_TYPE_STEP_FAILED, S.RUN_STATE_RUNNING),
        (T.STEP_UP_FOR_RETRY, E.RUN_EVENT_TYPE_STEP_RETRY, S.RUN_STATE_RUNNING),
        (T.ENGINE_EVENT, E.RUN_EVENT_TYPE_LOG, S.RUN_STATE_RUNNING),
        (T.HANDLED_OUTPUT, E.RUN_EVENT_TYPE_LOG, S.RUN_STATE_RUNNING),
    ],
)
def test_mapping_rows(dagster, type_, state):
    step = "water" if dagster.name.startswith(("STEP", "HANDLED")) else None
    event = events.to_run_event(
        7, entry(dagster, step=step, message="m", data=DATA.get(dagster)), S.RUN_STATE_RUNNING, STEPS
    )
    assert (event.type, event.state, event.sequence, event.source) == (type_, state, 7, "orchestrator")
    assert event.engine_event_type == dagster.name
    assert event.block_id == (step or "")
    assert event.time.ToNanoseconds() == 1795520000250000000


def test_progress_log_lines_become_step_progress_and_other_lines_logs():
    progress = events.to_run_event(
        3, entry(None, step="water", message=events.progress_message(12, 64, "tiles")), S.RUN_STATE_RUNNING, STEPS
    )
    assert progress.type == E.RUN_EVENT_TYPE_STEP_PROGRESS and progress.block_id == "water"
    assert (progress.progress.unit, progress.progress.done, progress.progress.total) == ("tiles", 12, 64)
    line = events.to_run_event(4, entry(None, step="water", message="9 tiles of 256px"), S.RUN_STATE_RUNNING, STEPS)
    assert (
        line.type == E.RUN_EVENT_TYPE_LOG
        and line.engine_event_type == "LOG_MESSAGE"
        and line.message == "9 tiles of 256px"
    )
    assert not line.HasField("progress")


def test_export_materialization_becomes_an_output_event():
    metadata = events.output_metadata(
        "water_probability", "s3://b/r/out-1/water_probability.tif", "image/tiff", "out-1"
    )
    data = StepMaterializationData(
        AssetMaterialization(asset_key=AssetKey(["constellation", "out-1", "water_probability"]), metadata=metadata)
    )
    event = events.to_run_event(20, entry(T.ASSET_MATERIALIZATION, step="out_1", data=data), S.RUN_STATE_RUNNING, STEPS)
    assert event.type == E.RUN_EVENT_TYPE_OUTPUT and event.block_id == "out-1"
    assert list(event.outputs) == [
        c.RunOutput(
            name="water_probability",
            uri="s3://b/r/out-1/water_probability.tif",
            media_type="image/tiff",
            block_id="out-1",
        )
    ]
    other = StepMaterializationData(AssetMaterialization(asset_key=AssetKey(["somebody", "else"])))
    assert (
        events.to_run_event(
            21, entry(T.ASSET_MATERIALIZATION, step="out_1", data=other), S.RUN_STATE_RUNNING, STEPS
        ).type
        == E.RUN_EVENT_TYPE_LOG
    )


def test_failures_carry_the_reason_without_a_traceback():
    error = SerializableErrorInfo(
        "orchestrator_svc.inference_client.EndpointError: model endpoint 127.0.0.1:1 answered NOT_FOUND: no model "
        "named 'x'\n",
        ["Traceback (most recent call last):\n", "..."],
        "EndpointError",
    )
    failed = events.to_run_event(
        9,
        entry(
            T.STEP_FAILURE, step="water", message='Execution of step "water" failed.', data=StepFailureData(error, None)
        ),
        S.RUN_STATE_RUNNING,
        STEPS,
    )
    assert (
        failed.message
        == "Execution of step \"water\" failed: model endpoint 127.0.0.1:1 answered NOT_FOUND: no model named 'x'"
    )
    user = StepFailureData(
        error, UserFailureData(label="intentional-failure", description="the endpoint refused the tiles")
    )
    message = events.to_run_event(
        9,
        entry(T.STEP_FAILURE, step="water", message='Execution of step "water" failed.', data=user),
        S.RUN_STATE_RUNNING,
        STEPS,
    ).message
    assert message == 'Execution of step "water" failed: the endpoint refused the tiles'
    wrapped = SerializableErrorInfo(
        "dagster._core.execution.plan.utils.RetryRequestedFromPolicy\n",
        [],
        "RetryRequestedFromPolicy",
        cause=SerializableErrorInfo(
            "orchestrator_svc.inference_client.EndpointError: model endpoint 127.0.0.1:1 answered UNAVAILABLE: "
            "Socket closed\n",
            [],
            "EndpointError",
        ),
    )
    retry = events.to_run_event(
        10,
        entry(T.STEP_UP_FOR_RETRY, step="water", message="retry in 1s", data=StepRetryData(wrapped, seconds_to_wait=1)),
        S.RUN_STATE_RUNNING,
        STEPS,
    )
    assert retry.type == E.RUN_EVENT_TYPE_STEP_RETRY and retry.message.endswith("answered UNAVAILABLE: Socket closed")
    assert "Traceback" not in failed.message + retry.message


def test_terminal_events_and_run_states():
    run_level = [
        T.RUN_ENQUEUED,
        T.RUN_STARTING,
        T.RUN_START,
        T.RUN_SUCCESS,
        T.RUN_FAILURE,
        T.RUN_CANCELING,
        T.RUN_CANCELED,
        T.STEP_START,
        T.STEP_UP_FOR_RETRY,
    ]
    assert {t for t in run_level if events.is_terminal(entry(t, data=DATA.get(t)))} == {
        T.RUN_SUCCESS,
        T.RUN_FAILURE,
        T.RUN_CANCELED,
    }
    assert not events.is_terminal(entry(None, message="a log line"))
    from dagster import DagsterRunStatus

    assert set(events.RUN_STATES) == set(DagsterRunStatus)
    assert {
        events.RUN_STATES[s] for s in (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED)
    } == events.TERMINAL_STATES
