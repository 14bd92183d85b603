"""Owners in core: who may change, delete, run and cancel what (core_svc.ownership), and core's own audit records
of those calls, on a real core server with an admin key, two editor keys and a viewer key (SQLite and PostgreSQL).

Core's hosting is a socket that accepts connections and never answers, so a run of a model pipeline stays in its
deploy stage (it waits for hosting) long enough to be canceled.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from alembic import command
from alembic.config import Config
from click.testing import CliRunner
from sqlalchemy import text

from constellation.common.v1 import common_pb2 as c
from constellation.core.v1 import audit_pb2, audit_pb2_grpc, core_pb2, core_pb2_grpc, identity_pb2, identity_pb2_grpc
from constellation_sdk import cli
from core_svc.db import MIGRATIONS
from core_svc.server import build as build_core
from mesh import config
from mesh.db import create_db_engine
from mesh.services import insecure_channel
from tests.catalog_data import LANDSAT_BANDS, ndwi_model, water_spec
from tests.conftest import rpc_error, service_env

KEYS = {
    "admin": "admin-key-7f3e",
    "a": "editor-a-key-91c2",
    "b": "editor-b-key-5d08",
    "viewer": "viewer-key-2b6a",
    "service": "service-key-c41d",  # the mesh's service key: what hosting and the others present to core
}
API_KEYS = f"{KEYS['admin']}:admin,{KEYS['a']}:editor,{KEYS['b']}:editor,{KEYS['viewer']}:viewer"
DENIED = grpc.StatusCode.PERMISSION_DENIED
CANCELING_OR_CANCELED = (c.RUN_STATE_CANCELING, c.RUN_STATE_CANCELED)


@pytest.fixture
def silent_hosting() -> Iterator[str]:
    """host:port of a socket that accepts connections and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"127.0.0.1:{listener.getsockname()[1]}"


@dataclass
class Mesh:
    core: core_pb2_grpc.CoreServiceStub
    audit: audit_pb2_grpc.AuditServiceStub
    address: str = ""
    identity: identity_pb2_grpc.IdentityServiceStub | None = None

    def as_(self, who: str, request_id: str = "") -> list[tuple[str, str]]:
        metadata = [("authorization", f"Bearer {KEYS[who]}")]
        return metadata + ([("x-request-id", request_id)] if request_id else [])


def start_core(tmp_path, database_url: str, hosting: str):
    env = service_env(
        tmp_path,
        DATABASE_URL=database_url,
        CONSTELLATION_API_KEYS=API_KEYS,
        CONSTELLATION_SERVICE_KEY=KEYS["service"],
        CONSTELLATION_HOSTING_ADDR=hosting,
    )
    server = build_core(config.load("core", env))
    server.start()
    return server


@pytest.fixture
def mesh(tmp_path, database_url, silent_hosting) -> Iterator[Mesh]:
    server = start_core(tmp_path, database_url, silent_hosting)
    address = f"127.0.0.1:{server.port}"
    channel = insecure_channel(address)
    yield Mesh(
        core_pb2_grpc.CoreServiceStub(channel),
        audit_pb2_grpc.AuditServiceStub(channel),
        address,
        identity_pb2_grpc.IdentityServiceStub(channel),
    )
    channel.close()
    server.stop(0)


def owned_catalog(mesh: Mesh, who: str, suffix: str) -> tuple[core_pb2.Dataset, core_pb2.Model, core_pb2.Pipeline]:
    """A dataset, a model and a pipeline over them, created by `who`."""
    scene = core_pb2.Dataset(name=f"scene-{suffix}", uri="file:///data/L7_ETMs.tif", bands=LANDSAT_BANDS)
    dataset = mesh.core.CreateDataset(core_pb2.CreateDatasetRequest(dataset=scene), metadata=mesh.as_(who))
    model = mesh.core.RegisterModel(
        core_pb2.RegisterModelRequest(model=ndwi_model(name=f"water-{suffix}")), metadata=mesh.as_(who)
    )
    pipeline = mesh.core.CreatePipeline(
        core_pb2.CreatePipelineRequest(
            pipeline=core_pb2.Pipeline(name=f"pipe-{suffix}", spec=water_spec(dataset.id, model.id))
        ),
        metadata=mesh.as_(who),
    )
    return dataset, model, pipeline


def denied(call, request, metadata) -> str:
    error = rpc_error(call, request, metadata=metadata)
    assert error.code() == DENIED, (error.code(), error.details())
    return error.details()


def audit_events(mesh: Mesh, filter_text: str = "", expected: int = 1) -> list[audit_pb2.AuditEvent]:
    """The audit records an admin reads with `filter_text`, once at least `expected` have been written (core
    writes its own records from a background thread)."""
    deadline = time.monotonic() + 10
    while True:
        request = audit_pb2.ListAuditEventsRequest(filter=filter_text, page_size=1000)
        events = list(mesh.audit.ListAuditEvents(request, metadata=mesh.as_("admin")).events)
        if len(events) >= expected or time.monotonic() > deadline:
            return events
        time.sleep(0.05)


def test_owner_is_whoever_created_and_lists_filter_on_it(mesh):
    dataset_a, model_a, pipeline_a = owned_catalog(mesh, "a", "a")
    dataset_b, _, _ = owned_catalog(mesh, "b", "b")
    owner_a, owner_b = dataset_a.owner, dataset_b.owner
    assert owner_a.startswith("key:") and owner_b.startswith("key:") and owner_a != owner_b
    assert model_a.owner == pipeline_a.owner == owner_a
    assert not any(key in owner_a + owner_b for key in KEYS.values())
    # Read back as another user (viewers read everything): the owner is stored, not echoed.
    assert mesh.core.GetDataset(core_pb2.GetDatasetRequest(id=dataset_a.id), metadata=mesh.as_("viewer")).owner == (
        owner_a
    )
    run = mesh.core.RunPipeline(core_pb2.RunPipelineRequest(pipeline_id=pipeline_a.id), metadata=mesh.as_("a"))
    assert run.owner == owner_a

    def listed(call, request_type, filter_text, who="viewer"):
        reply = call(request_type(filter=filter_text), metadata=mesh.as_(who))
        return {m.id for m in getattr(reply, reply.DESCRIPTOR.fields[0].name)}

    assert listed(mesh.core.ListDatasets, core_pb2.ListDatasetsRequest, f'owner = "{owner_b}"') == {dataset_b.id}
    assert listed(mesh.core.ListDatasets, core_pb2.ListDatasetsRequest, 'owner = "me"', who="a") == {dataset_a.id}
    assert listed(mesh.core.ListDatasets, core_pb2.ListDatasetsRequest, 'owner = "me"', who="viewer") == set()
    assert listed(mesh.core.ListModels, core_pb2.ListModelsRequest, f'owner = "{owner_a}"') == {model_a.id}
    assert listed(mesh.core.ListPipelines, core_pb2.ListPipelinesRequest, 'owner = "me"', who="a") == {pipeline_a.id}
    assert listed(mesh.core.ListRuns, core_pb2.ListRunsRequest, f'owner = "{owner_a}"') == {run.id}
    assert listed(mesh.core.ListRuns, core_pb2.ListRunsRequest, 'owner = "me"', who="b") == set()


def test_an_editor_changes_only_what_it_owns_and_an_admin_changes_anything(mesh):
    dataset, model, pipeline = owned_catalog(mesh, "a", "a")
    run = mesh.core.RunPipeline(core_pb2.RunPipelineRequest(pipeline_id=pipeline.id), metadata=mesh.as_("a"))
    update = core_pb2.UpdateDatasetRequest(dataset=core_pb2.Dataset(id=dataset.id, description="by b"))

    # Editor B: nothing of A's, and the refusal names the rule, not the owner.
    for call, request in [
        (mesh.core.UpdateDataset, update),
        (mesh.core.DeleteDataset, core_pb2.DeleteDatasetRequest(id=dataset.id)),
        (mesh.core.DeleteModel, core_pb2.DeleteModelRequest(id=model.id)),
        (mesh.core.DeletePipeline, core_pb2.DeletePipelineRequest(id=pipeline.id)),
        (mesh.core.CancelRun, core_pb2.CancelRunRequest(id=run.id)),
    ]:
        details = denied(call, request, mesh.as_("b"))
        assert "is not yours" in details and "editor changes only what it owns" in details
        assert dataset.owner not in details
    # An invalid change by a non-owner is still refused for ownership first.
    bad = core_pb2.UpdateDatasetRequest(dataset=core_pb2.Dataset(id=dataset.id, uri="file:///etc/passwd"))
    denied(mesh.core.UpdateDataset, bad, mesh.as_("b"))
    assert mesh.core.GetDataset(core_pb2.GetDatasetRequest(id=dataset.id), metadata=mesh.as_("b")).description == ""

    # The viewer: nothing at all, not even its own (it can create nothing).
    for call, request in [
        (mesh.core.UpdateDataset, update),
        (mesh.core.DeleteDataset, core_pb2.DeleteDatasetRequest(id=dataset.id)),
        (mesh.core.CancelRun, core_pb2.CancelRunRequest(id=run.id)),
        (mesh.core.RunPipeline, core_pb2.RunPipelineRequest(pipeline_id=pipeline.id)),
        (mesh.core.CreateDataset, core_pb2.CreateDatasetRequest(dataset=core_pb2.Dataset(name="v"))),
    ]:
        denied(call, request, mesh.as_("viewer"))

    # Editor B may run A's pipeline: the run is B's, and B cancels it; A cannot.
    b_run = mesh.core.RunPipeline(core_pb2.RunPipelineRequest(pipeline_id=pipeline.id), metadata=mesh.as_("b"))
    assert b_run.owner and b_run.owner != pipeline.owner
    denied(mesh.core.CancelRun, core_pb2.CancelRunRequest(id=b_run.id), mesh.as_("a"))
    canceled = mesh.core.CancelRun(core_pb2.CancelRunRequest(id=b_run.id), metadata=mesh.as_("b"))
    assert canceled.state in CANCELING_OR_CANCELED

    # A changes its own; the admin changes anyone's.
    assert mesh.core.UpdateDataset(update, metadata=mesh.as_("a")).description == "by b"
    admin = mesh.as_("admin")
    assert mesh.core.CancelRun(core_pb2.CancelRunRequest(id=run.id), metadata=admin).state in CANCELING_OR_CANCELED
    mesh.core.DeletePipeline(core_pb2.DeletePipelineRequest(id=pipeline.id), metadata=admin)
    mesh.core.DeleteModel(core_pb2.DeleteModelRequest(id=model.id), metadata=admin)
    mesh.core.DeleteDataset(core_pb2.DeleteDatasetRequest(id=dataset.id), metadata=admin)
    assert rpc_error(mesh.core.GetDataset, core_pb2.GetDatasetRequest(id=dataset.id), metadata=admin).code() == (
        grpc.StatusCode.NOT_FOUND
    )


def test_rows_from_before_owners_belong_to_nobody_and_only_admins_change_them(tmp_path, database_url, silent_hosting):
    """A catalog made by the previous schema (revision 0003) gets owners by migration: none for its rows."""
    engine = create_db_engine(database_url)
    alembic = Config()
    alembic.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        alembic.attributes["connection"] = connection
        command.upgrade(alembic, "0003")
        connection.execute(
            text(
                "INSERT INTO datasets (id, name, description, uri, sensor, bands, resolution_m, tags, bands_index, "
                "tags_index, create_time, update_time) VALUES ('ds_old', 'old-scene', '', 'file:///data/old.tif', "
                "'landsat-7', '[\"red\"]', 30.0, '[]', ',red,', ',', :now, :now)"
            ),
            {"now": "2025-01-01 00:00:00+00:00"},
        )
    engine.dispose()
    server = start_core(tmp_path, database_url, silent_hosting)
    try:
        with insecure_channel(f"127.0.0.1:{server.port}") as channel:
            core = core_pb2_grpc.CoreServiceStub(channel)
            mesh = Mesh(core, audit_pb2_grpc.AuditServiceStub(channel))
            old = core.GetDataset(core_pb2.GetDatasetRequest(id="ds_old"), metadata=mesh.as_("a"))
            assert old.owner == "" and old.name == "old-scene"
            update = core_pb2.UpdateDatasetRequest(dataset=core_pb2.Dataset(id="ds_old", description="mine now?"))
            assert "has no owner" in denied(core.UpdateDataset, update, mesh.as_("a"))
            denied(core.DeleteDataset, core_pb2.DeleteDatasetRequest(id="ds_old"), mesh.as_("b"))
            assert core.UpdateDataset(update, metadata=mesh.as_("admin")).owner == ""
            core.DeleteDataset(core_pb2.DeleteDatasetRequest(id="ds_old"), metadata=mesh.as_("admin"))
    finally:
        server.stop(0)


def test_core_audits_its_mutating_calls_with_outcome_and_request_id_but_not_reads(mesh):
    dataset, _, _ = owned_catalog(mesh, "a", "a")
    update = core_pb2.UpdateDatasetRequest(dataset=core_pb2.Dataset(id=dataset.id, description="x"))
    denied(mesh.core.UpdateDataset, update, mesh.as_("b", request_id="req-denied-1"))
    denied(mesh.core.DeleteDataset, core_pb2.DeleteDatasetRequest(id=dataset.id), mesh.as_("viewer", "req-viewer-1"))
    mesh.core.UpdateDataset(update, metadata=mesh.as_("a", request_id="req-ok-1"))
    mesh.core.GetDataset(core_pb2.GetDatasetRequest(id=dataset.id), metadata=mesh.as_("a", request_id="req-read-1"))
    mesh.core.ListDatasets(core_pb2.ListDatasetsRequest(), metadata=mesh.as_("a", request_id="req-read-2"))
    missing = rpc_error(mesh.core.UpdateDataset, update, metadata=[("x-request-id", "req-nokey-1")])
    assert missing.code() == grpc.StatusCode.UNAUTHENTICATED

    events = audit_events(mesh, expected=7)  # created 3, denied 2, updated 1, unauthenticated 1
    by_request = {e.request_id: e for e in events}
    assert {"req-read-1", "req-read-2"}.isdisjoint(by_request), "reads are not audited"
    assert {e.method for e in events} == {
        "CreateDataset", "RegisterModel", "CreatePipeline", "UpdateDataset", "DeleteDataset"
    }  # fmt: skip
    ok, refused, viewer = by_request["req-ok-1"], by_request["req-denied-1"], by_request["req-viewer-1"]
    assert (ok.service, ok.method, ok.target_id, ok.outcome, ok.subject, ok.role) == (
        "core", "UpdateDataset", dataset.id, "OK", dataset.owner, "editor"
    )  # fmt: skip
    assert (refused.method, refused.target_id, refused.outcome, refused.role) == (
        "UpdateDataset", dataset.id, "PERMISSION_DENIED", "editor"
    )  # fmt: skip
    assert refused.subject.startswith("key:") and refused.subject != dataset.owner
    assert (viewer.outcome, viewer.role) == ("PERMISSION_DENIED", "viewer")
    nokey = by_request["req-nokey-1"]
    assert (nokey.outcome, nokey.subject, nokey.role) == ("UNAUTHENTICATED", "", "")
    created = next(e for e in events if e.method == "CreateDataset")
    assert created.target_id == dataset.id, "a create names the resource it made"
    assert all(e.peer.startswith(("ipv4:127.0.0.1:", "ipv6:")) and e.time.seconds > 0 for e in events)
    # Newest first, and filters narrow the log.
    assert [e.id for e in events] == sorted((e.id for e in events), reverse=True)
    assert {e.request_id for e in audit_events(mesh, 'outcome = "permission_denied"')} == {
        "req-denied-1", "req-viewer-1"
    }  # fmt: skip
    assert [e.request_id for e in audit_events(mesh, f'method = "UpdateDataset" AND subject = "{dataset.owner}"')] == [
        "req-ok-1"
    ]
    # No key, no header, in any field of any record.
    rows = "".join(str(e) for e in events)
    assert not any(key in rows for key in KEYS.values()) and "Bearer" not in rows


def test_only_admins_read_and_only_services_write_the_audit_log(mesh):
    listing = audit_pb2.ListAuditEventsRequest()
    for who in ("a", "viewer"):
        assert "needs an admin key" in denied(mesh.audit.ListAuditEvents, listing, mesh.as_(who))
    event = audit_pb2.AuditEvent(service="hosting", method="DeployModel", outcome="OK", subject="key:forged")
    event.time.GetCurrentTime()
    record = audit_pb2.RecordAuditEventsRequest(events=[event])
    for who in ("admin", "a", "viewer"):  # not even an admin writes the log
        assert "only its services" in denied(mesh.audit.RecordAuditEvents, record, mesh.as_(who))
    assert mesh.audit.RecordAuditEvents(record, metadata=mesh.as_("service")).recorded == 1
    forged = [e for e in audit_events(mesh, expected=4) if e.subject == "key:forged"]
    assert [e.service for e in forged] == ["hosting"]
    # The refused attempts are in the log; the accepted batch is not recorded twice.
    intake = audit_events(mesh, 'method = "RecordAuditEvents"', expected=3)
    assert sorted(e.role for e in intake) == ["admin", "editor", "viewer"]
    assert {e.outcome for e in intake} == {"PERMISSION_DENIED"}


def test_cli_lists_what_is_mine_and_reads_the_audit_log(mesh, monkeypatch):
    mine, _, pipeline = owned_catalog(mesh, "a", "a")
    owned_catalog(mesh, "b", "b")
    run = mesh.core.RunPipeline(core_pb2.RunPipelineRequest(pipeline_id=pipeline.id), metadata=mesh.as_("b"))
    monkeypatch.setenv("CONSTELLATION_GATEWAY", mesh.address)

    def cli_as(who: str, *args: str):
        monkeypatch.setenv("CONSTELLATION_API_KEY", KEYS[who])
        return CliRunner().invoke(cli.main, list(args))

    listed = cli_as("a", "datasets", "list", "--mine", "--json")
    assert listed.exit_code == 0, listed.output
    assert [d["id"] for d in json.loads(listed.output)["datasets"]] == [mine.id]
    assert run.id in cli_as("b", "runs", "list", "--mine").output
    assert cli_as("a", "runs", "list", "--mine").output.strip() == "no runs"

    audit_events(mesh, expected=7)
    newest = cli_as("admin", "audit", "--user", mine.owner, "--since", "1h", "--limit", "2", "--json")
    assert newest.exit_code == 0, newest.output
    assert [e["method"] for e in json.loads(newest.output)["events"]] == ["CreatePipeline", "RegisterModel"]
    table = cli_as("admin", "audit", "--method", "CreateDataset", "--outcome", "OK")
    assert table.exit_code == 0 and len(table.output.splitlines()) == 2 and mine.id in table.output
    assert "no audit records" in cli_as("admin", "audit", "--since", "2999-01-01T00:00").output
    refused = cli_as("a", "audit")
    assert refused.exit_code == 1 and "PERMISSION_DENIED" in refused.output
    assert cli_as("admin", "audit", "--since", "yesterday").exit_code == 2


def test_a_user_owns_what_any_of_their_keys_made_and_no_key_reaches_the_audit_log(mesh):
    assert mesh.identity is not None
    admin = mesh.as_("admin")
    carol = mesh.identity.CreateUser(
        identity_pb2.CreateUserRequest(user=identity_pb2.User(name="carol", role=identity_pb2.ROLE_EDITOR)),
        metadata=admin,
    )
    made = [
        mesh.identity.CreateApiKey(identity_pb2.CreateApiKeyRequest(user_id=carol.id), metadata=admin) for _ in range(2)
    ]
    laptop, phone = ([("authorization", f"Bearer {m.key}")] for m in made)
    scene = core_pb2.Dataset(name="carol-scene", uri="file:///data/L7_ETMs.tif", bands=LANDSAT_BANDS)
    dataset = mesh.core.CreateDataset(core_pb2.CreateDatasetRequest(dataset=scene), metadata=laptop)
    assert dataset.owner == carol.id
    update = core_pb2.UpdateDatasetRequest(dataset=core_pb2.Dataset(id=dataset.id, description="from the phone"))
    assert mesh.core.UpdateDataset(update, metadata=phone).owner == carol.id
    denied(mesh.core.DeleteDataset, core_pb2.DeleteDatasetRequest(id=dataset.id), mesh.as_("a"))

    events = audit_events(mesh, expected=6)  # a user, two keys, a create, an update, a refusal
    assert {(e.method, e.subject) for e in events if e.subject == carol.id} == {
        ("CreateDataset", carol.id), ("UpdateDataset", carol.id)
    }  # fmt: skip
    assert [e.target_id for e in events if e.method == "CreateApiKey"] == [carol.id, carol.id]
    logged = "".join(str(e) for e in events)
    assert not any(m.key in logged or m.key.rsplit("_", 1)[-1] in logged for m in made)
