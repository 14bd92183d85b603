"""Users, API keys and roles across the mesh: keys made and revoked through the gateway, checked by core from its
database and by hosting, the orchestrator and the agent through core (with a short cache); the role table; the
service key and the user a service acts for."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pool

from constellation.agent.v1 import agent_pb2
from constellation.common.v1 import common_pb2 as c
from constellation.core.v1 import core_pb2, core_pb2_grpc, identity_pb2, identity_pb2_grpc
from constellation.hosting.v1 import hosting_pb2, hosting_pb2_grpc
from constellation.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from constellation_sdk import mesh_process
from constellation_sdk.client import Client
from core_svc.server import build as build_core
from mesh import config, roles
from mesh.identity import ON_BEHALF_HEADER
from mesh.server import MeshServer
from mesh.services import SERVICES, insecure_channel, registration
from tests.catalog_data import LANDSAT_BANDS, ndwi_model, water_spec
from tests.conftest import ROOT, mesh_env, rpc_error, service_env
from tests.pg import free_port
from tests.test_index_block import index_spec

ROOT_KEY = "root-admin-key"
CACHE_S = 1.0
SCENE = ROOT / "examples" / "data" / "L7_ETMs.tif"


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


def eventually(check: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Seconds until `check()` held; fails the test after `timeout_s`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if check():
            return time.monotonic() - started
        time.sleep(0.1)
    pytest.fail(f"{what}: not within {timeout_s} s")


def code_of(call: Callable, request, key: str = "") -> grpc.StatusCode:
    """The code `call` answers `request` with (presenting `key`, or the key of the call's channel)."""
    try:
        call(request, metadata=bearer(key) if key else None, timeout=10)
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


# --------------------------------------------------------------------------- the role table


def test_the_role_table_has_a_row_for_every_method_and_no_other():
    pool = descriptor_pool.Default()
    served = {
        full_name: {m.name for m in pool.FindServiceByName(full_name).methods} for full_name, _ in SERVICES.values()
    }
    assert {name: set(methods) for name, methods in roles.METHOD_ROLES.items()} == served
    for methods in roles.METHOD_ROLES.values():
        assert set(methods.values()) <= {"viewer", "editor", "admin", "service"}
    assert roles.required_role("/constellation.core.v1.IdentityService/Authenticate") == "service"
    assert roles.required_role("/constellation.orchestrator.v1.OrchestratorService/LaunchRun") == "service"
    assert roles.required_role("/constellation.hosting.v1.HostingService/PushImage") == "admin"


@pytest.fixture
def secured_core(tmp_path, database_url):
    """Core on SQLite and on PostgreSQL, with one admin key in the settings."""
    env = service_env(tmp_path, CONSTELLATION_API_KEYS=ROOT_KEY, DATABASE_URL=database_url)
    server = build_core(config.load("core", env))
    server.start()
    channel = insecure_channel(f"127.0.0.1:{server.port}")
    yield channel
    channel.close()
    server.stop(0)


def test_a_method_missing_from_the_role_table_is_refused(secured_core, monkeypatch):
    stub = core_pb2_grpc.CoreServiceStub(secured_core)
    assert stub.ListDatasets(core_pb2.ListDatasetsRequest(), metadata=bearer(ROOT_KEY)).datasets == []
    monkeypatch.delitem(roles.METHOD_ROLES["constellation.core.v1.CoreService"], "ListDatasets")
    refused = rpc_error(stub.ListDatasets, core_pb2.ListDatasetsRequest(), metadata=bearer(ROOT_KEY))
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED and "role table" in refused.details()


def test_core_checks_user_keys_in_its_database(secured_core):
    accounts = identity_pb2_grpc.IdentityServiceStub(secured_core)
    root = bearer(ROOT_KEY)
    user = accounts.CreateUser(
        identity_pb2.CreateUserRequest(user=identity_pb2.User(name="kim", role=identity_pb2.ROLE_EDITOR)), metadata=root
    )
    made = accounts.CreateApiKey(identity_pb2.CreateApiKeyRequest(user_id=user.id), metadata=root)
    who = accounts.WhoAmI(identity_pb2.WhoAmIRequest(), metadata=bearer(made.key))
    assert (who.subject, who.role, who.name) == (user.id, identity_pb2.ROLE_EDITOR, "kim")
    tampered = made.key[:-1] + ("0" if made.key[-1] != "0" else "1")
    for wrong in (tampered, f"cst_{'0' * 16}_{made.key[-64:]}", "cst_short"):
        refused = rpc_error(accounts.WhoAmI, identity_pb2.WhoAmIRequest(), metadata=bearer(wrong))
        assert refused.code() == grpc.StatusCode.UNAUTHENTICATED and refused.details() == "the API key is not valid"
    accounts.RevokeApiKey(identity_pb2.RevokeApiKeyRequest(id=made.api_key.id), metadata=root)
    revoked = rpc_error(accounts.WhoAmI, identity_pb2.WhoAmIRequest(), metadata=bearer(made.key))
    assert revoked.code() == grpc.StatusCode.UNAUTHENTICATED and "revoked" in revoked.details()


# --------------------------------------------------------------------------- a service's checks, without core


@pytest.fixture
def peer(tmp_path):
    """A hosting-like server (the generated base servicers: a call that gets past the interceptor answers
    UNIMPLEMENTED) whose core does not answer."""
    env = {
        **service_env(tmp_path),
        "CONSTELLATION_HOSTING_PORT": "0",
        "CONSTELLATION_HOSTING_METRICS_PORT": "0",
        "CONSTELLATION_CORE_ADDR": f"127.0.0.1:{free_port()}",
        "CONSTELLATION_API_KEYS": "admin-k,viewer-k:viewer",
        "CONSTELLATION_SERVICE_KEY": "service-k",
    }
    server = MeshServer(
        config.load("hosting", env),
        [
            registration("hosting", hosting_pb2_grpc.HostingServiceServicer()),
            registration("orchestrator", orchestrator_pb2_grpc.OrchestratorServiceServicer()),
        ],
    )
    server.start()
    channel = insecure_channel(f"127.0.0.1:{server.port}")
    yield channel
    channel.close()
    server.stop(0)


def test_a_user_key_gets_unavailable_when_core_does_not_answer_and_settings_keys_keep_working(peer):
    hosting = hosting_pb2_grpc.HostingServiceStub(peer)
    listing = hosting_pb2.ListModelsRequest()
    down = rpc_error(hosting.ListModels, listing, metadata=bearer("cst_0123456789abcdef_" + "0" * 64))
    assert down.code() == grpc.StatusCode.UNAVAILABLE and "core" in down.details()
    assert code_of(hosting.ListModels, listing, "viewer-k") == grpc.StatusCode.UNIMPLEMENTED  # past the checks
    assert code_of(hosting.ListModels, listing, "guess") == grpc.StatusCode.UNAUTHENTICATED


def test_only_a_service_may_act_for_a_user_and_then_the_users_role_counts(peer):
    hosting = hosting_pb2_grpc.HostingServiceStub(peer)
    package = hosting_pb2.PackageModelRequest(model_name="m", model_version="1.0.0")

    def as_(key: str, on_behalf: str) -> grpc.RpcError:
        return rpc_error(hosting.PackageModel, package, metadata=(*bearer(key), (ON_BEHALF_HEADER, on_behalf)))

    from_admin = as_("admin-k", "admin;usr_x;x")
    assert from_admin.code() == grpc.StatusCode.PERMISSION_DENIED and "only a mesh service" in from_admin.details()
    for_viewer = as_("service-k", "viewer;usr_v;vera")
    assert for_viewer.code() == grpc.StatusCode.PERMISSION_DENIED and "needs an editor key" in for_viewer.details()
    assert as_("service-k", "editor;usr_e;ed").code() == grpc.StatusCode.UNIMPLEMENTED  # allowed: past the checks
    assert as_("service-k", "service;service:mesh;x").code() == grpc.StatusCode.PERMISSION_DENIED
    assert as_("service-k", "garbage").code() == grpc.StatusCode.PERMISSION_DENIED


def test_launch_run_is_for_services_only(peer):
    orchestrator = orchestrator_pb2_grpc.OrchestratorServiceStub(peer)
    launch = orchestrator_pb2.LaunchRunRequest(run_id="run_x")
    refused = rpc_error(orchestrator.LaunchRun, launch, metadata=bearer("admin-k"))
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED and "internal" in refused.details()
    assert code_of(orchestrator.LaunchRun, launch, "service-k") == grpc.StatusCode.UNIMPLEMENTED


# --------------------------------------------------------------------------- a whole mesh


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    home = tmp_path_factory.mktemp("identity-mesh")
    (home / "models").mkdir()
    env = {
        **mesh_env(home),
        "CONSTELLATION_API_KEYS": f"{ROOT_KEY}:admin",
        "CONSTELLATION_AUTH_CACHE_S": str(CACHE_S),
        "CONSTELLATION_HOSTING_MODEL_ROOTS": str(home / "models"),
        "CONSTELLATION_GATEWAY_RATE_LIMIT_PER_ADDRESS": "0",
        "CONSTELLATION_GATEWAY_RATE_LIMIT_PER_KEY": "0",
    }
    state = mesh_process.up(env)
    try:
        yield {"env": env, "home": home, "processes": state["processes"]}
    finally:
        mesh_process.down(env)


def client(mesh, key: str, service: str = "gateway") -> Client:
    return Client(mesh["processes"][service]["address"], api_key=key)


def make_user(mesh, name: str, role: int, ttl_s: int = 0) -> tuple[identity_pb2.User, str]:
    with client(mesh, ROOT_KEY) as root:
        user = root.identity.CreateUser(identity_pb2.CreateUserRequest(user=identity_pb2.User(name=name, role=role)))
        made = root.identity.CreateApiKey(identity_pb2.CreateApiKeyRequest(user_id=user.id, ttl_seconds=ttl_s))
    assert made.key.startswith(f"cst_{made.api_key.id}_")
    return user, made.key


def test_users_and_their_keys_through_the_gateway(mesh):
    alice, alice_key = make_user(mesh, "alice", identity_pb2.ROLE_EDITOR)
    bob, bob_key = make_user(mesh, "bob", identity_pb2.ROLE_VIEWER)
    with client(mesh, alice_key) as as_alice, client(mesh, bob_key) as as_bob:
        me = as_alice.identity.WhoAmI(identity_pb2.WhoAmIRequest())
        assert (me.subject, me.role, me.name) == (alice.id, identity_pb2.ROLE_EDITOR, "alice")
        # A viewer reads and cannot create; an editor creates and cannot manage users.
        assert as_bob.core.ListDatasets(core_pb2.ListDatasetsRequest()).datasets is not None
        dataset = core_pb2.Dataset(name="scene-a", uri=SCENE.as_uri(), bands=LANDSAT_BANDS)
        denied = rpc_error(as_bob.core.CreateDataset, core_pb2.CreateDatasetRequest(dataset=dataset))
        assert denied.code() == grpc.StatusCode.PERMISSION_DENIED and "needs an editor key" in denied.details()
        assert as_alice.core.CreateDataset(core_pb2.CreateDatasetRequest(dataset=dataset)).name == "scene-a"
        for call, request in [
            (as_alice.identity.CreateUser, identity_pb2.CreateUserRequest(user=identity_pb2.User(name="eve"))),
            (as_alice.identity.ListUsers, identity_pb2.ListUsersRequest()),
            (as_alice.identity.UpdateUser, identity_pb2.UpdateUserRequest(user=identity_pb2.User(id=alice.id))),
        ]:
            assert rpc_error(call, request).code() == grpc.StatusCode.PERMISSION_DENIED
        # A user manages their own keys, and only theirs; a listing never holds a secret.
        forever = rpc_error(as_bob.identity.CreateApiKey, identity_pb2.CreateApiKeyRequest(ttl_seconds=2**62))
        assert forever.code() == grpc.StatusCode.INVALID_ARGUMENT  # found by the fuzzer: it was INTERNAL
        own = as_bob.identity.CreateApiKey(identity_pb2.CreateApiKeyRequest(description="laptop"))
        assert own.api_key.user_id == bob.id
        listed = as_bob.identity.ListApiKeys(identity_pb2.ListApiKeysRequest())
        assert len(listed.api_keys) == 2
        assert own.key.split("_")[-1].encode() not in listed.SerializeToString()
        others = rpc_error(as_bob.identity.ListApiKeys, identity_pb2.ListApiKeysRequest(user_id=alice.id))
        assert others.code() == grpc.StatusCode.PERMISSION_DENIED
        [alices] = as_alice.identity.ListApiKeys(identity_pb2.ListApiKeysRequest()).api_keys
        theirs = rpc_error(as_bob.identity.RevokeApiKey, identity_pb2.RevokeApiKeyRequest(id=alices.id))
        assert theirs.code() == grpc.StatusCode.NOT_FOUND
        assert as_bob.identity.RevokeApiKey(identity_pb2.RevokeApiKeyRequest(id=own.api_key.id)).HasField("revoke_time")
    with client(mesh, ROOT_KEY) as root:
        names = {u.name for u in root.identity.ListUsers(identity_pb2.ListUsersRequest()).users}
        assert {"alice", "bob"} <= names
        duplicate = rpc_error(
            root.identity.CreateUser,
            identity_pb2.CreateUserRequest(user=identity_pb2.User(name="alice", role=identity_pb2.ROLE_VIEWER)),
        )
        assert duplicate.code() == grpc.StatusCode.ALREADY_EXISTS


def every_service_answers(mesh, key: str) -> dict[str, grpc.StatusCode]:
    """The code each service gives `key` for a read, through the gateway."""
    with client(mesh, key) as user:
        return {
            "core": code_of(user.core.ListDatasets, core_pb2.ListDatasetsRequest()),
            "hosting": code_of(user.hosting.ListModels, hosting_pb2.ListModelsRequest()),
            "orchestrator": code_of(user.orchestrator.ListRuns, orchestrator_pb2.ListRunsRequest()),
            "agent": code_of(
                user.agent.Recommend, agent_pb2.RecommendRequest(prompt="map water", planner=agent_pb2.PLANNER_OFFLINE)
            ),
        }


def refused_everywhere(mesh, key: str) -> bool:
    return set(every_service_answers(mesh, key).values()) == {grpc.StatusCode.UNAUTHENTICATED}


def test_a_revoked_key_stops_working_on_every_service_within_the_cache_ttl(mesh):
    carol, key = make_user(mesh, "carol", identity_pb2.ROLE_VIEWER)
    assert set(every_service_answers(mesh, key).values()) == {grpc.StatusCode.OK}  # and now cached
    with client(mesh, ROOT_KEY) as root:
        [listed] = root.identity.ListApiKeys(identity_pb2.ListApiKeysRequest(user_id=carol.id)).api_keys
        assert listed.HasField("last_used_time")
        root.identity.RevokeApiKey(identity_pb2.RevokeApiKeyRequest(id=listed.id))
    with client(mesh, key) as as_carol:
        at_once = rpc_error(as_carol.core.ListDatasets, core_pb2.ListDatasetsRequest())
    assert at_once.code() == grpc.StatusCode.UNAUTHENTICATED and "revoked" in at_once.details()
    took = eventually(lambda: refused_everywhere(mesh, key), CACHE_S + 3, "the revoked key refused everywhere")
    assert took <= CACHE_S + 1


def test_an_expired_key_and_a_disabled_user_are_refused(mesh):
    dave, short_lived = make_user(mesh, "dave", identity_pb2.ROLE_EDITOR, ttl_s=3)
    assert set(every_service_answers(mesh, short_lived).values()) == {grpc.StatusCode.OK}
    eventually(lambda: refused_everywhere(mesh, short_lived), 3 + CACHE_S + 3, "the expired key refused everywhere")
    with client(mesh, short_lived) as as_dave:
        expired = rpc_error(as_dave.core.ListDatasets, core_pb2.ListDatasetsRequest())
    assert "expired" in expired.details()

    erin, key = make_user(mesh, "erin", identity_pb2.ROLE_EDITOR)
    assert set(every_service_answers(mesh, key).values()) == {grpc.StatusCode.OK}
    with client(mesh, ROOT_KEY) as root:
        disable = identity_pb2.UpdateUserRequest(user=identity_pb2.User(id=erin.id, disabled=True))
        disable.update_mask.paths.append("disabled")
        assert root.identity.UpdateUser(disable).disabled
    eventually(lambda: refused_everywhere(mesh, key), CACHE_S + 3, "the disabled user's key refused everywhere")
    with client(mesh, key) as as_erin:
        disabled = rpc_error(as_erin.core.ListDatasets, core_pb2.ListDatasetsRequest())
    assert disabled.code() == grpc.StatusCode.UNAUTHENTICATED and "disabled" in disabled.details()


def test_keys_are_stored_as_hashes_and_never_logged(mesh):
    frank, key = make_user(mesh, "frank", identity_pb2.ROLE_VIEWER)
    assert set(every_service_answers(mesh, key).values()) == {grpc.StatusCode.OK}
    with client(mesh, "cst_0123456789abcdef_" + "f" * 64) as wrong:  # refusals are logged too
        rpc_error(wrong.hosting.ListModels, hosting_pb2.ListModelsRequest())
    key_id, secret = key.removeprefix("cst_").split("_")
    database = mesh["home"] / "core.db"
    with sqlite3.connect(database) as db:
        row = db.execute("SELECT * FROM api_keys WHERE id = ?", (key_id,)).fetchone()
    assert hashlib.sha256(secret.encode()).hexdigest() in row
    assert not [value for value in row if isinstance(value, str) and secret in value]
    stored = b"".join(path.read_bytes() for path in database.parent.glob("core.db*"))
    assert secret.encode() not in stored
    logs = list((mesh["home"] / "logs").glob("*.log"))
    assert {"core.log", "hosting.log", "orchestrator.log", "agent.log"} <= {p.name for p in logs}
    for log in logs:
        text = log.read_text()
        assert secret not in text and ROOT_KEY not in text, f"a key is in {log.name}"
        assert "f" * 64 not in text


def test_authenticate_answers_only_a_service(mesh):
    grace, key = make_user(mesh, "grace", identity_pb2.ROLE_ADMIN)
    request = identity_pb2.AuthenticateRequest(api_key=key)
    for caller in (ROOT_KEY, key):
        with client(mesh, caller) as user:
            refused = rpc_error(user.identity.Authenticate, request)
        assert refused.code() == grpc.StatusCode.PERMISSION_DENIED and "internal" in refused.details()
    service_key = config.load("core", mesh["env"]).service_key  # derived from the admin key: no key configured
    assert service_key and service_key != ROOT_KEY
    with insecure_channel(mesh["processes"]["core"]["address"]) as channel:
        stub = identity_pb2_grpc.IdentityServiceStub(channel)
        who = stub.Authenticate(request, metadata=bearer(service_key))
        assert (who.subject, who.role) == (grace.id, identity_pb2.ROLE_ADMIN)
        unknown = rpc_error(
            stub.Authenticate, identity_pb2.AuthenticateRequest(api_key="nope"), metadata=bearer(service_key)
        )
        assert unknown.code() == grpc.StatusCode.UNAUTHENTICATED and "nope" not in unknown.details()


def test_a_user_cannot_claim_to_act_for_someone_else(mesh):
    heidi, key = make_user(mesh, "heidi", identity_pb2.ROLE_VIEWER)
    claim = (*bearer(key), (ON_BEHALF_HEADER, f"admin;{heidi.id};heidi"))
    push = hosting_pb2.PushImageRequest(model_id="hm_x")
    with insecure_channel(mesh["processes"]["hosting"]["address"]) as channel:
        direct = rpc_error(hosting_pb2_grpc.HostingServiceStub(channel).PushImage, push, metadata=claim)
    assert direct.code() == grpc.StatusCode.PERMISSION_DENIED and "only a mesh service" in direct.details()
    with client(mesh, key) as as_heidi:  # the gateway drops the header: she stays a viewer
        through = rpc_error(as_heidi.hosting.PushImage, push, metadata=((ON_BEHALF_HEADER, f"admin;{heidi.id};h"),))
    assert through.code() == grpc.StatusCode.PERMISSION_DENIED and "needs an admin key" in through.details()


def calls_logged(log: Path, method: str) -> list[str]:
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return [line.get("caller", "") for line in lines if line.get("msg") == "rpc" and line.get("method") == method]


def test_a_run_calls_hosting_and_the_orchestrator_as_the_user_who_started_it(mesh):
    ivan, key = make_user(mesh, "ivan", identity_pb2.ROLE_EDITOR)
    logs = mesh["home"] / "logs"
    with client(mesh, key) as as_ivan:
        scene = core_pb2.Dataset(name="ivan-scene", uri=SCENE.as_uri(), bands=LANDSAT_BANDS, sensor="landsat-7")
        dataset_id = as_ivan.core.CreateDataset(core_pb2.CreateDatasetRequest(dataset=scene)).id
        export = (mesh["home"] / "outputs").as_uri()
        # An index pipeline: core launches it on the orchestrator, which runs it to the end.
        spec = index_spec(dataset_id=dataset_id, export_uri=export)
        pipeline = as_ivan.core.CreatePipeline(
            core_pb2.CreatePipelineRequest(pipeline=core_pb2.Pipeline(name="ivan-index", spec=spec))
        )
        run = as_ivan.core.RunPipeline(core_pb2.RunPipelineRequest(pipeline_id=pipeline.id))
        # A model pipeline whose model source does not exist: core asks hosting for it, for ivan, and fails.
        model = ndwi_model(name="ivan-model", source=str(mesh["home"] / "models" / "missing"))
        model_id = as_ivan.core.RegisterModel(core_pb2.RegisterModelRequest(model=model)).id
        water = as_ivan.core.CreatePipeline(
            core_pb2.CreatePipelineRequest(
                pipeline=core_pb2.Pipeline(name="ivan-water", spec=water_spec(dataset_id, model_id, export))
            )
        )
        failing = as_ivan.core.RunPipeline(core_pb2.RunPipelineRequest(pipeline_id=water.id))

        def ended(run_id: str) -> int:
            return as_ivan.core.GetRun(core_pb2.GetRunRequest(id=run_id)).state

        done = (c.RUN_STATE_SUCCEEDED, c.RUN_STATE_FAILED, c.RUN_STATE_CANCELED)
        eventually(lambda: ended(run.id) in done and ended(failing.id) in done, 180, "both runs ended")
        assert ended(run.id) == c.RUN_STATE_SUCCEEDED
        assert ended(failing.id) == c.RUN_STATE_FAILED
        failed = as_ivan.core.GetRun(core_pb2.GetRunRequest(id=failing.id)).state_message
        assert "PERMISSION_DENIED" not in failed and "UNAUTHENTICATED" not in failed, failed
    assert ivan.id in calls_logged(logs / "orchestrator.log", "LaunchRun")
    assert ivan.id in calls_logged(logs / "orchestrator.log", "WatchRun")
    assert ivan.id in calls_logged(logs / "hosting.log", "ListModels")


def test_the_cli_manages_users_and_keys(mesh, monkeypatch):
    from click.testing import CliRunner

    from constellation_sdk import cli

    monkeypatch.setenv("CONSTELLATION_GATEWAY", mesh["processes"]["gateway"]["address"])

    def constellation(*args: str, key: str = ROOT_KEY) -> str:
        monkeypatch.setenv("CONSTELLATION_API_KEY", key)
        result = CliRunner().invoke(cli.main, list(args))
        assert result.exit_code == 0, result.output
        return result.output

    created = json.loads(constellation("users", "create", "judy", "--role", "editor", "--json"))
    assert (created["name"], created["role"]) == ("judy", "ROLE_EDITOR")
    made = constellation("keys", "create", "--user", "judy", "--expires-in", "30d", "--description", "laptop")
    key = made.split()[0]
    assert key.startswith("cst_") and "not shown again" in made
    assert constellation("whoami", key=key).split()[:2] == ["judy", "editor"]
    [listed] = json.loads(constellation("keys", "list", "--json", key=key))["api_keys"]
    assert listed["description"] == "laptop" and "expire_time" in listed and key not in json.dumps(listed)
    assert "judy" in constellation("users", "list")
    assert "viewer" in constellation("users", "update", "judy", "--role", "viewer")
    assert "disabled" in constellation("users", "disable", "judy")
    denied = CliRunner().invoke(cli.main, ["whoami"], env={"CONSTELLATION_API_KEY": key})
    assert denied.exit_code == 1 and "UNAUTHENTICATED" in denied.output and "disabled" in denied.output
    constellation("users", "update", "judy", "--enable")
    assert "revoked" in constellation("keys", "revoke", listed["id"], key=key)
    assert "revoked" in constellation("keys", "list", "--user", "judy", "--all")
    assert constellation("keys", "list", "--user", "judy") == "no keys\n"
