"""Two core replicas (and two agents, hostings, orchestrators) behind the gateway on one PostgreSQL (`constellation
up --replicas 2`): the orchestrator owning a run, then the core driving it, are SIGKILLed in the middle of its
model step, the other replica takes the run over within
the lease bound, and the run succeeds with the outputs of an undisturbed run and a gap-free,
duplicate-free event stream. The figures over several kills are bench/takeover.py's."""

from __future__ import annotations

import grpc
import pytest

from bench.load import output_digests
from bench.takeover import (
    check_stream,
    deployment_lease,
    kill_holder,
    orchestrator_lease,
    restart,
    run_lease,
    set_up,
    slow_pipeline,
    tear_down,
    wait_for_inference,
)
from constellation.core.v1 import core_pb2
from constellation.hosting.v1 import hosting_pb2
from constellation_sdk import watch
from mesh import config
from tests.conftest import MEASURED_FIGURES

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def replicas(postgres_admin_url, tmp_path_factory):
    setup = set_up(tmp_path_factory.mktemp("replicas") / "home", postgres_admin_url)
    yield setup
    tear_down(setup)


def test_the_mesh_runs_two_cores_and_two_agents_behind_the_gateway(replicas):
    names = sorted(replicas.state["processes"])
    assert names == [
        "agent", "agent-2", "core", "core-2", "gateway", "hosting", "hosting-2", "orchestrator", "orchestrator-2"
    ]  # fmt: skip
    statuses = mesh_status(replicas)
    assert all(s["running"] and s["serving"] for s in statuses.values()), statuses


def mesh_status(setup) -> dict:
    from constellation_sdk import mesh_process

    return mesh_process.status(setup.env)


def test_a_killed_core_replicas_run_is_finished_by_the_other_with_the_same_outputs(replicas, tmp_path):
    client = replicas.client
    # a model step long enough for three takeovers in a row (each up to TTL + renew period)
    pipeline = slow_pipeline(replicas, tmp_path, sleep_s=0.6, tile=64)
    alone = client.core.RunPipeline(core_pb2.RunPipelineRequest(pipeline_id=pipeline.id))
    undisturbed = watch.follow(client.core, alone.id, spec=pipeline.spec)
    assert undisturbed.state == "succeeded", undisturbed.as_dict()

    run = client.core.RunPipeline(core_pb2.RunPipelineRequest(pipeline_id=pipeline.id))
    before = wait_for_inference(replicas, run.id)
    settings = config.load("core", replicas.env)
    bound = settings.lease_ttl_s + settings.lease_renew_s + 1.0  # TTL, the survivor's next look, a second of slack
    owner, owner_s = kill_holder(replicas, orchestrator_lease(run.id))  # its worker lives on: adopted
    MEASURED_FIGURES.append(
        f"replicas: {owner} SIGKILLed mid-run, another orchestrator owned the run after {owner_s:.1f}s"
    )
    assert owner_s <= bound
    killed, takeover_s = kill_holder(replicas, run_lease(run.id))
    MEASURED_FIGURES.append(f"replicas: {killed} SIGKILLed mid-run, another core drove the run after {takeover_s:.1f}s")
    assert takeover_s <= bound, "taken over within TTL + renew period"
    watched = deployment_lease(replicas, "slow-64")
    hosting_killed, hosting_s = kill_holder(replicas, watched)
    MEASURED_FIGURES.append(
        f"replicas: {hosting_killed} SIGKILLed, another hosting watched the model after {hosting_s:.1f}s"
    )
    assert hosting_s <= bound
    report = watch.follow(client.core, run.id, spec=pipeline.spec)  # through the gateway, past the dead replica
    assert report.state == "succeeded", report.as_dict()
    events = check_stream(replicas, run.id, pipeline.spec)
    assert events[: len(before)] == before, "what was stored before the kill is replayed unchanged"
    finished = client.core.GetRun(core_pb2.GetRunRequest(id=run.id))
    assert output_digests(finished) == output_digests(client.core.GetRun(core_pb2.GetRunRequest(id=alone.id)))
    assert {o.uri for o in finished.outputs}.isdisjoint(o.uri for o in undisturbed.run.outputs), "compared two files"
    model_id = watched.removeprefix("deployment:")
    history = []
    try:  # the stream stays open for later events: read what is there for a few seconds
        for event in replicas.client.hosting.WatchDeployment(
            hosting_pb2.WatchDeploymentRequest(model_id=model_id), timeout=5
        ):
            history.append(event)
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, error
    assert any("watches the deployment now" in e.message for e in history), [e.message for e in history]
    restart(replicas, killed)
    restart(replicas, hosting_killed)
    restart(replicas, owner)
    assert all(s["serving"] for s in mesh_status(replicas).values())
