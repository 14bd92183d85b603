"""Hosting scales a model's replicas with demand: the model server reports its load on health checks,
`hosting_svc.scaling.Scaler` decides, the monitor adds a replica of a busy model and removes it once idle."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest

from clients.inference import InferenceClient
from constellation.hosting.v1 import hosting_pb2
from hosting_svc.domain import HostedModel
from hosting_svc.scaling import Decision, Scaler, bounds
from hosting_svc.settings import HostingSettings
from model_runtime.admission import Load
from model_runtime.manifest import load_manifest
from model_runtime.server import ModelServer
from tests.hosting_support import STATE, HostingUnderTest, require_docker
from tests.test_model_runtime import write_model

HEALTHY = STATE.Value("DEPLOYMENT_STATE_HEALTHY")
SETTINGS = HostingSettings(scale_up_after_s=10, scale_down_after_s=60, scale_queue_share=0.5, max_replicas=1)
SLOW = """
import time
class Model:
    def predict(self, batch):
        time.sleep(0.2)
        return batch * 2
"""


def model(replicas: int = 1, max_replicas: int | None = 2) -> HostedModel:
    resources = {"memory": "512m"} | ({"max_replicas": max_replicas} if max_replicas else {})
    return HostedModel(id="m1", name="slow", version="1", replicas=replicas, manifest={"resources": resources})


def loads(*each: tuple[int, int, int]) -> dict[str, Load | None]:
    return {f"127.0.0.1:{9000 + i}": Load(*load) for i, load in enumerate(each)}


# The decision


def test_a_queue_that_stays_long_for_the_window_adds_one_replica():
    scaler, m = Scaler(), model()
    assert scaler.decide(m, loads((8, 16, 0)), 0.0, SETTINGS).change == 0
    assert scaler.decide(m, loads((12, 16, 0)), 5.0, SETTINGS).change == 0  # busy, but not for 10 s yet
    decision = scaler.decide(m, loads((16, 16, 0)), 10.0, SETTINGS)
    assert decision.change == 1 and decision.reason == "queue 16/16 tiles, 0 request(s) refused in 10 s"
    # the windows start afresh after a change, and two replicas are this model's ceiling
    for t in (11.0, 30.0, 60.0):
        assert scaler.decide(m, loads((16, 16, 0), (16, 16, 0)), t, SETTINGS).change == 0


def test_refusals_count_as_busy_and_a_calm_poll_resets_the_window():
    scaler, m = Scaler(), model()
    assert scaler.decide(m, loads((1, 16, 4)), 0.0, SETTINGS).change == 0  # the first poll is the baseline
    assert scaler.decide(m, loads((1, 16, 9)), 1.0, SETTINGS).change == 0  # 5 refused: busy since 1 s
    assert scaler.decide(m, loads((3, 16, 9)), 6.0, SETTINGS).change == 0  # under the share, none refused: reset
    assert scaler.decide(m, loads((1, 16, 12)), 7.0, SETTINGS).change == 0  # busy again from 7 s
    assert scaler.decide(m, loads((1, 16, 14)), 16.0, SETTINGS).change == 0
    decision = scaler.decide(m, loads((1, 16, 20)), 17.0, SETTINGS)
    assert decision.change == 1 and "11 request(s) refused in 10 s" in decision.reason
    # a restarted replica's counter starts again at 0: what it shows counts as refused since
    assert scaler.decide(m, loads((0, 16, 20)), 18.0, SETTINGS).change == 0
    assert scaler.decide(m, loads((0, 16, 2)), 19.0, SETTINGS).change == 0
    assert scaler.decide(m, loads((0, 16, 2)), 29.0, SETTINGS).change == 0  # idle since 29 s, not busy


def test_idle_for_the_longer_window_removes_one_replica_but_never_below_the_deployment():
    scaler, m = Scaler(), model()
    two = loads((0, 16, 0), (0, 16, 0))
    assert scaler.decide(m, two, 0.0, SETTINGS).change == 0
    assert scaler.decide(m, loads((1, 16, 0), (0, 16, 0)), 30.0, SETTINGS).change == 0  # work: the window resets
    assert scaler.decide(m, two, 31.0, SETTINGS).change == 0
    assert scaler.decide(m, two, 90.0, SETTINGS).change == 0
    decision = scaler.decide(m, two, 91.0, SETTINGS)
    assert decision == Decision(-1, "idle for 60 s")
    one = loads((0, 16, 0))
    assert all(scaler.decide(m, one, t, SETTINGS).change == 0 for t in (100.0, 200.0, 300.0))


def test_no_load_report_decides_nothing():
    scaler, m = Scaler(), model()
    for t in (0.0, 100.0):
        assert scaler.decide(m, {"127.0.0.1:9000": None}, t, SETTINGS).change == 0


def test_bounds_come_from_the_deployment_the_manifest_and_the_settings():
    assert bounds(model(1, 3), SETTINGS) == (1, 3)
    assert bounds(model(1, None), SETTINGS) == (1, 1)  # hosting's default: no autoscaling
    assert bounds(model(1, None), SETTINGS.model_copy(update={"max_replicas": 4})) == (1, 4)
    assert bounds(model(3, 2), SETTINGS) == (3, 3)  # a ceiling below the deployment's count is no ceiling


# The report


def test_load_travels_as_a_header_and_anything_else_parses_to_none():
    assert Load.parse(Load(3, 16, 7).header()) == Load(3, 16, 7)
    for bad in ("", "admitted=3", "admitted=x limit=1 refused=0", "junk"):
        assert Load.parse(bad) is None


def test_the_manifest_bounds_max_replicas(tmp_path):
    good = write_model(tmp_path / "good", SLOW, resources={"memory": "512m", "max_replicas": 4})
    assert load_manifest(good).resources["max_replicas"] == 4
    for bad in (0, 17, "two"):
        folder = write_model(tmp_path / f"bad{bad}", SLOW, resources={"max_replicas": bad})
        with pytest.raises(ValueError, match="resources.max_replicas"):
            load_manifest(folder)


def test_the_model_server_reports_its_load_on_health_checks(tmp_path):
    folder = write_model(tmp_path / "slow", SLOW, batching={"max_batch_size": 1, "max_queued_tiles": 2})
    server = ModelServer(folder, port=0)
    address = f"127.0.0.1:{server.start()}"
    try:
        with InferenceClient(address, "test-model") as client:
            client.wait_ready(10)
            assert client.health() == (True, Load(0, 2, 0))
            tiles = np.ones((1, 1, 4, 4), np.float32)
            futures = [threading.Thread(target=lambda: client.infer_raw("test-model", tiles)) for _ in range(2)]
            for thread in futures:
                thread.start()
            deadline = time.monotonic() + 5
            while server.model.admission.admitted < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            with pytest.raises(grpc.RpcError) as refused:
                client.infer_raw("test-model", tiles)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert client.health() == (True, Load(2, 2, 1))
            for thread in futures:
                thread.join()
            assert client.health() == (True, Load(0, 2, 1))
    finally:
        server.stop(0)


# The whole loop, on the local and Docker runtimes


def scaled(hosting: HostingUnderTest, model_id: str, after: int, timeout_s: float) -> hosting_pb2.DeploymentEvent:
    """The next "scaled to" event after sequence `after`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        event = hosting.wait_for(model_id, HEALTHY, after=after, timeout_s=deadline - time.monotonic())[-1]
        if event.message.startswith("scaled to"):
            return event
        after = event.sequence
    pytest.fail(f"no scaling within {timeout_s} s")


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("runtime", ["local", "docker"])
def test_a_busy_deployment_gets_a_second_replica_and_loses_it_when_idle(tmp_path, runtime):
    if runtime == "docker":
        require_docker()
    folder = write_model(
        tmp_path / "slow-model", SLOW,
        requirements=["numpy>=1.26"],
        resources={"memory": "512m", "max_replicas": 2},
        batching={"max_batch_size": 1, "max_queue_delay_ms": 0, "max_queued_tiles": 2},
    )  # fmt: skip
    hosting = HostingUnderTest(
        tmp_path / "home",
        CONSTELLATION_HOSTING_DOCKER="off" if runtime == "local" else "auto",
        CONSTELLATION_HOSTING_SCALE_UP_AFTER_S="1",
        CONSTELLATION_HOSTING_SCALE_DOWN_AFTER_S="3",
    )
    stop = threading.Event()
    status = None
    try:
        status = hosting.package(folder, "test-model", "0.1.0")
        ready = hosting.wait_for(
            status.model_id, STATE.Value("DEPLOYMENT_STATE_READY"), STATE.Value("DEPLOYMENT_STATE_FAILED")
        )
        assert ready[-1].state == STATE.Value("DEPLOYMENT_STATE_READY"), ready[-1].message
        hosting.stub.DeployModel(hosting_pb2.DeployModelRequest(model_id=status.model_id, replicas=1))
        deployed = hosting.wait_for(
            status.model_id, HEALTHY, STATE.Value("DEPLOYMENT_STATE_FAILED"), after=ready[-1].sequence
        )
        assert deployed[-1].state == HEALTHY, deployed[-1].message
        deployment = hosting.stub.GetModelStatus(hosting_pb2.GetModelStatusRequest(model_id=status.model_id))
        assert hosting_pb2.Runtime.Name(deployment.runtime) == f"RUNTIME_{runtime.upper()}"
        first = deployed[-1].endpoints[0].address

        refused = []

        def load() -> None:  # more than the replica admits (2 tiles), without waiting out its hints
            with InferenceClient(first, "test-model") as client:
                while not stop.is_set():
                    try:
                        client.infer_raw("test-model", np.ones((1, 1, 4, 4), np.float32), timeout=10)
                    except grpc.RpcError as error:
                        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
                        refused.append(error)
                        time.sleep(0.05)

        threads = [threading.Thread(target=load, daemon=True) for _ in range(4)]
        for thread in threads:
            thread.start()
        up = scaled(hosting, status.model_id, deployed[-1].sequence, timeout_s=60)
        assert refused, "the replica was full"
        assert up.message.startswith("scaled to 2 replica(s): queue "), up.message
        assert [e.healthy for e in up.endpoints] == [True, True]
        second = up.endpoints[1].address
        assert second != first
        current = hosting.stub.GetModelStatus(hosting_pb2.GetModelStatusRequest(model_id=status.model_id))
        assert [e.address for e in current.endpoints] == [first, second]  # what core hands new runs
        with InferenceClient(second, "test-model") as client:
            tiles = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
            np.testing.assert_array_equal(client.infer("test-model", tiles)["out"], tiles * 2)

        stop.set()
        for thread in threads:
            thread.join(timeout=15)
        down = scaled(hosting, status.model_id, up.sequence, timeout_s=60)
        assert down.message.startswith("scaled to 1 replica(s): idle for "), down.message
        assert [e.address for e in down.endpoints] == [first]
        with InferenceClient(second, "test-model") as client:  # unlisted first, then stopped
            deadline = time.monotonic() + 15
            while client.serving() and time.monotonic() < deadline:
                time.sleep(0.2)
            assert not client.serving(), "the removed replica was stopped"
        current = hosting.stub.GetModelStatus(hosting_pb2.GetModelStatusRequest(model_id=status.model_id))
        assert current.state == HEALTHY and [e.address for e in current.endpoints] == [first]
    finally:
        stop.set()
        if status is not None:  # replicas outlive hosting on purpose: delete them with the model
            hosting.stub.DeleteModel(hosting_pb2.DeleteModelRequest(model_id=status.model_id))
        hosting.close()
