"""Every input bounded, nothing quadratic (issue 12): each finding of the attack run, as a regression test.

Timings asserted here are guards against quadratic blow-ups (seconds on main), not speed benchmarks.
"""

from __future__ import annotations

import base64
import logging
import socket
import time

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from constellation.agent.v1 import agent_pb2
from constellation.common.v1 import common_pb2
from constellation.core.v1 import core_pb2, core_pb2_grpc
from core_svc.server import build as build_core
from mesh import config, limits
from mesh.errors import (
    MAX_STATUS_DETAILS_BYTES,
    MAX_STATUS_MESSAGE_BYTES,
    FieldViolation,
    InvalidArgument,
    field_violations,
    to_status,
)
from mesh.services import insecure_channel
from tests.agent_fixtures import agent_env, catalog_core, start_agent  # noqa: F401 - fixtures, pytest passes them by name
from tests.catalog_data import add_dataset, ndwi_model, register, water_spec
from tests.conftest import MEASURED_FIGURES, rpc_error, service_env

GRPC_DEFAULT_MAX_METADATA_BYTES = 8192  # grpc.max_metadata_size: what a client accepts unless it sets more


def _elapsed(call, *args, **kwargs) -> tuple[grpc.RpcError, float]:
    started = time.perf_counter()
    error = rpc_error(call, *args, **kwargs)
    return error, time.perf_counter() - started


def test_filter_with_a_long_run_of_spaces_is_refused_at_once(core):
    # On main this froze core for 36 s: a backtracking split over 100,000 spaces.
    error, elapsed = _elapsed(
        core.ListDatasets, core_pb2.ListDatasetsRequest(filter='name = "a"' + " " * 100_000 + "AND"), timeout=30
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and elapsed < 1.0, (error.details(), elapsed)
    assert [v.field for v in field_violations(error)] == ["filter"] and "at most 4096" in error.details()
    # Within the length limit the one-pass reader still answers at once, quoting the term cut short.
    error, elapsed = _elapsed(
        core.ListModels, core_pb2.ListModelsRequest(filter='name = "a"' + " " * 4000 + "AND"), timeout=30
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and elapsed < 1.0
    assert "cannot read" in error.details() and len(error.details()) < 300


def test_filter_values_may_hold_and_and_escaped_quotes(core):
    add_dataset(core, name='olinda AND "recife"')
    text = 'name = "olinda AND \\"recife\\"" and band = "nir"'
    assert [d.name for d in core.ListDatasets(core_pb2.ListDatasetsRequest(filter=text)).datasets] == [
        'olinda AND "recife"'
    ]


def test_long_ids_are_refused_with_a_short_message(core):
    # On main the message echoed all 70,000 characters and Envoy reset the stream (INTERNAL).
    error = rpc_error(core.GetDataset, core_pb2.GetDatasetRequest(id="A" * 70_000))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "id: is 70000 characters; at most 128"
    error = rpc_error(core.RunPipeline, core_pb2.RunPipelineRequest(pipeline_id="p" * 129))
    assert [v.field for v in field_violations(error)] == ["pipeline_id"]


def test_status_message_and_details_are_capped_whatever_the_raiser_wrote():
    violations = [FieldViolation(f"bands[{i}]", "x" * 5000 + f" {i}") for i in range(1000)]
    status = to_status(InvalidArgument(violations, message="y" * 100_000), request_id="r1")
    assert len(status.details.encode()) <= MAX_STATUS_MESSAGE_BYTES and status.details.endswith("…")
    packed = dict(status.trailing_metadata)["grpc-status-details-bin"]
    assert len(packed) <= MAX_STATUS_MESSAGE_BYTES + MAX_STATUS_DETAILS_BYTES + 256


def trailer_bytes(status: grpc.Status) -> int:
    """What `status` takes in HTTP/2 trailers as grpc sends them (HPACK counts 32 bytes per entry besides the
    name and value): grpc-message percent-encoded (every byte outside printable ASCII, and '%', as three),
    -bin values in base64."""
    message = status.details.encode()
    size = 32 + len("grpc-status") + 2 + 32 + len("grpc-message")
    size += sum(1 if 0x20 <= byte <= 0x7E and byte != 0x25 else 3 for byte in message)
    for key, value in status.trailing_metadata:
        size += 32 + len(key) + (len(base64.b64encode(value)) if key.endswith("-bin") else len(value))
    return size


def test_statuses_fit_the_trailers_a_grpc_client_accepts_whatever_the_raiser_wrote():
    # Found by fuzzing (tests/test_fuzz_rpcs.py): a message echoing non-ASCII input was capped at 2 KiB of UTF-8,
    # 6 KiB once percent-encoded, and with 8 KiB of details (11 KiB in base64) the trailers passed the 8 KiB grpc
    # clients accept by default: the client saw RESOURCE_EXHAUSTED instead of the answer.
    for text in ("x", "é", "%", "\x00", "🛰"):
        violations = [FieldViolation(f"bands[{i}]", text * 5000) for i in range(1000)]
        status = to_status(InvalidArgument(violations, message=text * 100_000), request_id="r" * 128)
        assert trailer_bytes(status) <= GRPC_DEFAULT_MAX_METADATA_BYTES - 1024, text
        assert status.details.endswith("…") and len(field_violations_of(status)) > 1, text


def field_violations_of(status: grpc.Status) -> list[error_details_pb2.BadRequest.FieldViolation]:
    packed = status_pb2.Status.FromString(dict(status.trailing_metadata)["grpc-status-details-bin"])
    bad_request = error_details_pb2.BadRequest()
    assert packed.details[0].Unpack(bad_request)
    return list(bad_request.field_violations)


def test_an_error_echoing_non_ascii_input_reaches_the_client(core):
    # Found by fuzzing: on main this request got RESOURCE_EXHAUSTED ("received metadata size exceeds soft limit")
    # from the client's own grpc, never the INVALID_ARGUMENT core answered.
    dataset = core_pb2.Dataset(name="d", uri="é" * 5000, bands=["é" * 100] * 30)
    error = rpc_error(core.CreateDataset, core_pb2.CreateDatasetRequest(dataset=dataset))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert [v.field for v in field_violations(error)][:2] == ["dataset.uri", "dataset.bands[0]"]


def test_oversize_specs_are_refused_before_they_are_expanded(core):
    # On main one 3 MB ValidatePipeline took core from 159 MB to 1.9 GB.
    blocks = [
        common_pb2.Block(id=f"b{i}", stitch=common_pb2.StitchBlock())
        for i in range(limits.REPEATED_LIMITS["blocks"] + 1)
    ]
    spec = common_pb2.PipelineSpec(blocks=blocks)
    error = rpc_error(core.ValidatePipeline, core_pb2.ValidatePipelineRequest(spec=spec))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(error) == [FieldViolation("spec.blocks", "has 257 entries; at most 256")]
    edges = [common_pb2.Edge(source_block_id="a", target_block_id="b")] * 1025
    long_label = common_pb2.Block(id="a", label="l" * (limits.MAX_TEXT_CHARS + 1))
    spec = common_pb2.PipelineSpec(blocks=[long_label], edges=edges)
    error = rpc_error(core.ValidatePipeline, core_pb2.ValidatePipelineRequest(spec=spec))
    assert [v.field for v in field_violations(error)] == ["spec.blocks[0].label", "spec.edges"]
    # Bytes beyond the request limit are refused by grpc before anything is decoded.
    huge = common_pb2.PipelineSpec(
        blocks=[common_pb2.Block(id=f"b{i}", label="l" * limits.MAX_TEXT_CHARS) for i in range(256)]
    )
    error = rpc_error(core.ValidatePipeline, core_pb2.ValidatePipelineRequest(spec=huge))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_tags_and_bands_are_bounded(core):
    error = rpc_error(core.RegisterModel, core_pb2.RegisterModelRequest(model=ndwi_model(tags=["t"] * 65)))
    assert [v.field for v in field_violations(error)] == ["model.tags"]
    dataset = core_pb2.Dataset(name="d", uri="file:///tmp/d.tif", bands=["red"] * 65)
    error = rpc_error(core.CreateDataset, core_pb2.CreateDatasetRequest(dataset=dataset))
    assert field_violations(error) == [FieldViolation("dataset.bands", "has 65 entries; at most 64")]


def test_descriptions_and_labels_are_bounded(core):
    card = common_pb2.ModelCard(description="d" * 10_001)
    error = rpc_error(core.RegisterModel, core_pb2.RegisterModelRequest(model=ndwi_model(card=card)))
    assert [v.field for v in field_violations(error)] == ["model.card.description"]
    spec = water_spec(add_dataset(core).id, register(core).id)
    spec.blocks[0].label = "l" * 129
    pipeline = core_pb2.Pipeline(name="long", description="d" * 10_001, spec=spec)
    error = rpc_error(core.CreatePipeline, core_pb2.CreatePipelineRequest(pipeline=pipeline))
    assert [v.field for v in field_violations(error)] == ["pipeline.description", "pipeline.spec.blocks[0].label"]


def test_unknown_enum_numbers_are_refused_at_the_door(core):
    # On main: RegisterModel(task=5) gave INTERNAL; a stitch.blend of 99 was stored and every run failed.
    error = rpc_error(core.RegisterModel, core_pb2.RegisterModelRequest(model=ndwi_model(task=5)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    [violation] = field_violations(error)
    assert violation.field == "model.task" and violation.description.startswith("5 is not a ModelTask value")
    spec = water_spec(add_dataset(core).id, register(core).id)
    stitch = next(i for i, b in enumerate(spec.blocks) if b.WhichOneof("config") == "stitch")
    spec.blocks[stitch].stitch.blend = 99  # type: ignore[assignment]
    export = next(i for i, b in enumerate(spec.blocks) if b.WhichOneof("config") == "export")
    spec.blocks[export].export.formats.append(42)  # type: ignore[arg-type]
    request = core_pb2.CreatePipelineRequest(pipeline=core_pb2.Pipeline(name="bad-enums", spec=spec))
    error = rpc_error(core.CreatePipeline, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in field_violations(error)] == [
        f"pipeline.spec.blocks[{stitch}].stitch.blend",
        f"pipeline.spec.blocks[{export}].export.formats[{len(spec.blocks[export].export.formats) - 1}]",
    ]
    assert not core.ListPipelines(core_pb2.ListPipelinesRequest()).pipelines


def test_garbage_body_is_invalid_argument_with_one_warning_line(core_server, caplog):
    caplog.set_level(logging.INFO)
    with insecure_channel(f"127.0.0.1:{core_server.port}") as channel:
        call = channel.unary_unary("/constellation.core.v1.CoreService/GetDataset")  # raw bytes both ways
        error = rpc_error(call, b"\x0a\xff\xff\xff\x0f", timeout=10)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "request body is not a valid constellation.core.v1.GetDatasetRequest"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "undecodable" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].exc_info is None
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_agent_reads_prompts_of_digits_in_linear_time(catalog_core, tmp_path):
    # On main 20 prompts of 4,000 digits stalled the agent ~24 s (a number pattern retried from every digit).
    agent = start_agent(agent_env(tmp_path, catalog_core.address))
    try:
        started = time.perf_counter()
        for i in range(20):
            prompt = str(i % 10) * 4000 if i % 2 else "map water at " + "1." * 1990
            agent.stub.Recommend(agent_pb2.RecommendRequest(prompt=prompt), timeout=30)
        elapsed = time.perf_counter() - started
        MEASURED_FIGURES.append(f"agent: 20 prompts of 4,000 digits or '1.' read in {elapsed:.2f} s")
        assert elapsed < 5.0, elapsed
        error = rpc_error(agent.stub.Recommend, agent_pb2.RecommendRequest(prompt="1" * 4001))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "at most 4000" in error.details()
    finally:
        agent.stop()


@pytest.fixture
def silent_peer():
    """A port that accepts connections and never answers: calls to it wait until their deadline."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield f"127.0.0.1:{listener.getsockname()[1]}"


def test_open_streams_are_capped_and_health_still_answers(tmp_path, silent_peer):
    # On main 32 idle Watch streams took every worker thread: health stopped answering.
    env = service_env(
        tmp_path,
        DATABASE_URL=f"sqlite:///{tmp_path / 'core.db'}",
        CONSTELLATION_MAX_WORKERS="8",
        CONSTELLATION_MAX_STREAMS="4",
        CONSTELLATION_HOSTING_ADDR=silent_peer,  # the run waits on hosting, so its watchers stay open
    )
    server = build_core(config.load("core", env))
    server.start()
    channel = insecure_channel(f"127.0.0.1:{server.port}")
    streams = []
    try:
        core = core_pb2_grpc.CoreServiceStub(channel)
        spec = water_spec(add_dataset(core).id, register(core).id)
        pipeline = core.CreatePipeline(core_pb2.CreatePipelineRequest(pipeline=core_pb2.Pipeline(name="w", spec=spec)))
        run = core.RunPipeline(core_pb2.RunPipelineRequest(pipeline_id=pipeline.id))
        refused = []
        for _ in range(8):  # the cap, then as many again: together as many as the worker threads
            stream = core.WatchRun(core_pb2.WatchRunRequest(run_id=run.id), timeout=60)
            streams.append(stream)
            try:
                assert next(stream).type == common_pb2.RUN_EVENT_TYPE_RUN_QUEUED
            except grpc.RpcError as error:
                refused.append(error)
        assert len(refused) == 4
        assert all(e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for e in refused)
        assert "already serves 4 streams" in refused[0].details()
        health = health_pb2_grpc.HealthStub(channel)
        answer = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=3)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        assert core.GetRun(core_pb2.GetRunRequest(id=run.id), timeout=3).id == run.id
        # A closed stream frees its slot.
        streams[0].cancel()
        deadline = time.monotonic() + 5
        while True:
            again = core.WatchRun(core_pb2.WatchRunRequest(run_id=run.id), timeout=60)
            streams.append(again)
            try:
                next(again)
                break
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and time.monotonic() < deadline
                time.sleep(0.1)
    finally:
        for stream in streams:
            stream.cancel()
        channel.close()
        server.stop(0)


def test_health_serves_with_200_watch_streams_open_at_the_default_settings(tmp_path, silent_peer):
    """Issue 12: 32 idle Watch streams took every worker thread and health stopped answering. With the default
    worker and stream settings, 200 callers each holding a WatchRun open leave health and unary calls answering;
    the streams past the cap are told RESOURCE_EXHAUSTED at once instead of waiting for a thread."""
    env = service_env(
        tmp_path, DATABASE_URL=f"sqlite:///{tmp_path / 'core.db'}", CONSTELLATION_HOSTING_ADDR=silent_peer
    )
    settings = config.load("core", env)
    server = build_core(settings)
    server.start()
    channel = insecure_channel(f"127.0.0.1:{server.port}")
    streams = []
    try:
        core = core_pb2_grpc.CoreServiceStub(channel)
        spec = water_spec(add_dataset(core).id, register(core).id)
        pipeline = core.CreatePipeline(core_pb2.CreatePipelineRequest(pipeline=core_pb2.Pipeline(name="w", spec=spec)))
        run = core.RunPipeline(core_pb2.RunPipelineRequest(pipeline_id=pipeline.id))
        streams = [core.WatchRun(core_pb2.WatchRunRequest(run_id=run.id), timeout=120) for _ in range(200)]
        time.sleep(1)  # every call reaches the server (on main they queued for a thread, health behind them)
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=3)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        served, refused = 0, 0
        for stream in streams:
            try:
                next(stream)
                served += 1
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
                refused += 1
        assert served == settings.stream_limit and refused == 200 - served
        assert core.GetRun(core_pb2.GetRunRequest(id=run.id), timeout=3).id == run.id
    finally:
        for stream in streams:
            stream.cancel()
        channel.close()
        server.stop(0)


def test_stream_cap_must_leave_worker_threads():
    with pytest.raises(config.ConfigError, match="CONSTELLATION_MAX_STREAMS"):
        config.load("core", {"CONSTELLATION_MAX_WORKERS": "8", "CONSTELLATION_MAX_STREAMS": "8"})
    assert config.load("core", {"CONSTELLATION_MAX_WORKERS": "8"}).stream_limit == 6


def test_an_oversize_request_id_is_replaced_not_echoed(core):
    """A caller's x-request-id goes into every log line and error detail: only a short plain token is kept."""
    error = rpc_error(
        core.GetDataset, core_pb2.GetDatasetRequest(id="ds_missing"), metadata=[("x-request-id", "r" * 7000)]
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    (request_info,) = [d for d in rpc_status_details(error) if d.type_url.endswith("google.rpc.RequestInfo")]
    assert b"r" * 200 not in request_info.value and len(request_info.value) < 200
    kept = rpc_error(
        core.GetDataset, core_pb2.GetDatasetRequest(id="ds_missing"), metadata=[("x-request-id", "req-789")]
    )
    assert any(b"req-789" in d.value for d in rpc_status_details(kept))


def rpc_status_details(error: grpc.RpcError) -> list:
    status = rpc_status.from_call(error)
    assert status is not None
    return list(status.details)
