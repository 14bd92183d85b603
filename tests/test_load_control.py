"""Load control, unit by unit: the model server's admission (RESOURCE_EXHAUSTED with a retry hint when
full), the inference client's waiting and retrying, and core's queue of runs. The whole mesh under load
is tests/test_many_runs.py."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from clients.inference import EndpointError, InferenceClient
from core_svc.run_queue import RunQueue
from model_runtime.admission import PUSHBACK_HEADER, Limits
from model_runtime.manifest import load_manifest
from model_runtime.server import ModelServer
from tests.conftest import free_port, rpc_error
from tests.test_model_runtime import infer_request, wait_ready, write_model

ROOT = Path(__file__).resolve().parent.parent

SLOW_DOUBLE = """
import time
class Model:
    def predict(self, batch):
        time.sleep(0.3)
        return batch * 2
"""


def test_limits_come_from_the_manifest_memory_and_tile_cost():
    limits = Limits.of(load_manifest(ROOT / "examples" / "models" / "water-mlp"))
    # one predict() at a time; a quarter of 512 MiB over twice (6 x 256² UINT8 in + 1 x 256² FP32 out)
    assert limits == Limits(max_parallel_batches=1, max_queued_tiles=(512 << 20) // 4 // (2 * (6 + 4) * 256 * 256))


def test_limits_named_in_the_manifest_win_and_a_bad_one_is_refused(tmp_path):
    folder = write_model(
        tmp_path / "named",
        SLOW_DOUBLE,
        batching={"max_batch_size": 2, "max_parallel_batches": 3, "max_queued_tiles": 5},
    )
    assert Limits.of(load_manifest(folder)) == Limits(3, 5)
    bad = write_model(tmp_path / "bad", SLOW_DOUBLE, batching={"max_queued_tiles": -1})
    with pytest.raises(ValueError, match="batching.max_queued_tiles"):
        load_manifest(bad)


@pytest.fixture
def full_server(tmp_path):
    """A model that admits 2 tiles at a time and takes 0.3 s a batch."""
    folder = write_model(
        tmp_path / "slow", SLOW_DOUBLE,
        batching={"max_batch_size": 2, "max_queue_delay_ms": 0, "max_parallel_batches": 1, "max_queued_tiles": 2},
    )  # fmt: skip
    server = ModelServer(folder, port=0)
    port = server.start()
    yield server, f"127.0.0.1:{port}"
    server.stop(0)


def test_a_full_model_server_answers_resource_exhausted_with_a_retry_hint(full_server):
    server, address = full_server
    from inference import grpc_predict_v2_pb2_grpc as pb_grpc

    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        wait_ready(stub, "test-model")
        stub.ModelInfer(infer_request(np.ones((2, 1, 4, 4), np.float32), name="test-model"))  # a predict timed
        first = threading.Thread(
            target=stub.ModelInfer, args=(infer_request(np.ones((2, 1, 4, 4), np.float32), name="test-model"),)
        )
        first.start()
        deadline = time.monotonic() + 5
        while server.model.admission.admitted < 2:
            assert time.monotonic() < deadline, "the first request was never admitted"
            time.sleep(0.01)
        error = rpc_error(stub.ModelInfer, infer_request(np.ones((1, 1, 4, 4), np.float32), name="test-model"))
        first.join()
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "holds 2 tiles, its limit is 2" in error.details() and "retry after" in error.details()
    hint = dict(error.trailing_metadata())[PUSHBACK_HEADER]
    assert 20 <= int(hint) <= 5000  # about 0.3 s a tile ahead of it
    assert server.model.admission.admitted == 0 and server.model.admission.peak == 2


def test_the_client_waits_and_retries_a_full_server_until_every_batch_is_answered(full_server):
    server, address = full_server
    batches = [(i, np.full((2, 1, 4, 4), float(i), np.float32)) for i in range(6)]
    retried: list[EndpointError] = []
    with InferenceClient(address, "test-model", output_name="out") as client:
        client.describe()
        answers = {
            key: np.frombuffer(raw, "<f4").reshape(shape)
            for key, raw, _, shape in client.run(
                batches, max_concurrency=4, retry_for_s=30, on_retry=lambda e, _: retried.append(e)
            )
        }
    assert sorted(answers) == list(range(6))
    for key, batch in batches:
        np.testing.assert_array_equal(answers[key], batch * 2)
    assert retried and all(e.code == grpc.StatusCode.RESOURCE_EXHAUSTED and e.retry_after_s > 0 for e in retried)
    assert server.model.admission.peak == 2  # never more than the server admits


def test_without_retries_a_full_server_fails_the_call_and_a_dead_one_is_given_up_after_the_wait(full_server):
    _, address = full_server
    batches = [(i, np.ones((2, 1, 4, 4), np.float32)) for i in range(4)]
    with InferenceClient(address, "test-model", output_name="out") as client:
        client.describe()
        with pytest.raises(EndpointError) as refused:
            list(client.run(batches, max_concurrency=4))
    assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and refused.value.transient
    with InferenceClient(f"127.0.0.1:{free_port()}", "test-model", timeout_s=2) as client:
        started = time.monotonic()
        with pytest.raises(EndpointError) as dead:
            list(client.run(batches, max_concurrency=2, retry_for_s=1.5))
    assert dead.value.code == grpc.StatusCode.UNAVAILABLE and 1.5 <= time.monotonic() - started < 10


def test_the_client_spreads_requests_over_replicas_and_rests_the_one_that_failed(tmp_path):
    folder = write_model(tmp_path / "fast", "class Model:\n    def predict(self, batch):\n        return batch * 2\n")
    server = ModelServer(folder, port=0)
    live = f"127.0.0.1:{server.start()}"
    try:
        batches = [(i, np.full((1, 1, 4, 4), float(i), np.float32)) for i in range(20)]
        retried: list[EndpointError] = []
        with InferenceClient([f"127.0.0.1:{free_port()}", live], "test-model", output_name="out") as client:
            client.input_name = "tiles"
            answers = dict(
                (key, np.frombuffer(raw, "<f4")[0])
                for key, raw, _, _ in client.run(
                    batches, max_concurrency=2, retry_for_s=20, on_retry=lambda e, _: retried.append(e)
                )
            )
        assert answers == {i: 2.0 * i for i in range(20)}
        # the dead replica got the first requests, then rested while the live one answered the rest
        assert 1 <= len(retried) < 10 and all(e.code == grpc.StatusCode.UNAVAILABLE for e in retried)
        assert server.model.admission.peak >= 1
    finally:
        server.stop(0)


def test_runs_beyond_the_limit_wait_and_start_in_submission_order():
    queue = RunQueue(limit=2)
    for run_id in ("a", "b", "c", "d"):
        queue.enter(run_id)
    started: list[str] = []
    positions: dict[str, list[int]] = {"a": [], "b": [], "c": [], "d": []}
    canceled = threading.Event()

    def drive(run_id: str, stop=lambda: False) -> None:
        if queue.wait_turn(run_id, positions[run_id].append, stop):
            started.append(run_id)

    threads = {r: threading.Thread(target=drive, args=(r,)) for r in ("a", "b", "c")}
    threads["d"] = threading.Thread(target=drive, args=("d", canceled.is_set))
    for run_id in ("d", "c", "b", "a"):  # drivers start in any order
        threads[run_id].start()
    threads["a"].join(2)
    threads["b"].join(2)
    time.sleep(0.2)
    assert started == ["a", "b"] or started == ["b", "a"]
    # each heard its place as it moved up: c starts next, d after it
    assert positions["c"][-1] == 0 and positions["d"][-1] == 1
    assert all(p == sorted(p, reverse=True) and len(set(p)) == len(p) for p in positions.values())
    canceled.set()
    queue.wake()
    threads["d"].join(2)
    assert not threads["d"].is_alive() and "d" not in started  # canceled while it waited
    queue.leave("a")
    threads["c"].join(2)
    assert started[2:] == ["c"]
    queue.enter("e")
    assert queue.wait_turn("resumed", lambda _: None, lambda: False)  # never queued: takes a place at once


def test_one_users_batch_leaves_a_place_for_another_user():
    queue = RunQueue(limit=3, per_user=2)
    for run_id in ("a1", "a2", "a3", "a4"):
        queue.enter(run_id, "user-a")
    queue.enter("b1", "user-b")
    positions: dict[str, list[int]] = {}
    started: list[str] = []

    def drive(run_id: str) -> None:
        if queue.wait_turn(run_id, positions.setdefault(run_id, []).append, lambda: False):
            started.append(run_id)

    threads = {}
    for run_id in ("a1", "a2", "a3", "a4", "b1"):
        threads[run_id] = threading.Thread(target=drive, args=(run_id,), daemon=True)
        threads[run_id].start()
        time.sleep(0.05)  # drivers start in submission order here, so the test reads plainly
    threads["b1"].join(2)
    # user-a holds its two places; b1, submitted last, took the third ahead of a3 and a4
    assert sorted(started) == ["a1", "a2", "b1"]
    assert positions["a3"][-1] == 0 and positions["a4"][-1] == 1  # next once one of user-a's runs ends
    queue.leave("a1")
    threads["a3"].join(2)
    assert started[-1] == "a3" and threads["a4"].is_alive()
    queue.leave("b1")  # a place is free, but user-a is at its two again
    time.sleep(0.2)
    assert threads["a4"].is_alive()
    queue.leave("a2")
    threads["a4"].join(2)
    assert started[-1] == "a4"
