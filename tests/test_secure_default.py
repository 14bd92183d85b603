"""Secure by default: with no key configured, `constellation up` makes an admin key in the mesh's home (0600 in a
0700 folder, printed once) and nothing but health and reflection answers without it; the CLI and SDK find it, the
console gets it through a one-time login link; turning authentication off takes CONSTELLATION_AUTH=off and is
logged as a warning."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from google.protobuf.descriptor_pool import Default as default_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc

from constellation.core.v1 import core_pb2, core_pb2_grpc
from constellation_sdk import Client, mesh_process
from constellation_sdk.settings import ClientSettings
from gateway import console
from gateway.settings import GatewaySettings
from mesh import config, credentials
from mesh.identity import SERVICE_ROLE
from mesh.roles import required_role
from mesh.server import MeshServer
from mesh.services import SERVED_BY, SERVICES
from tests.conftest import TEST_API_KEY, mesh_env, rpc_error, service_env
from tests.test_web_console import browser, new_page  # noqa: F401 -- the browser fixture, used below

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DESCRIPTOR_POOL = default_pool()
KEY_VARIABLES = ("CONSTELLATION_API_KEY", "CONSTELLATION_API_KEYS", "CONSTELLATION_AUTH")


def without_keys(env: dict[str, str]) -> dict[str, str]:
    return {name: value for name, value in env.items() if name not in KEY_VARIABLES}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --------------------------------------------------------------------------- the credential files


def test_credentials_are_private_from_the_start_and_kept(tmp_path):
    home = tmp_path / "home"
    old_umask = os.umask(0)  # even a umask that grants everything cannot widen them
    try:
        key, created = credentials.ensure(home)
    finally:
        os.umask(old_umask)
    assert created and len(key) >= 43  # 32 random bytes, url-safe base64
    assert mode(home / "credentials") == 0o700
    assert mode(credentials.admin_key_path(home)) == 0o600 and mode(credentials.service_key_path(home)) == 0o600
    assert credentials.read_key(credentials.service_key_path(home)) not in ("", key)
    assert credentials.ensure(home) == (key, False)
    assert [p.name for p in (home / "credentials").iterdir() if p.name.startswith(".admin")] == []


def test_a_key_file_others_could_read_is_refused(tmp_path):
    home = tmp_path / "home"
    credentials.ensure(home)
    key_file = credentials.admin_key_path(home)
    key_file.chmod(0o644)
    with pytest.raises(credentials.CredentialError, match=r"mode 0644.*chmod 600"):
        credentials.read_admin_key(home)
    with pytest.raises(config.ConfigError, match="mode 0644"):
        config.load("core", without_keys(service_env(tmp_path)))
    with pytest.raises(credentials.CredentialError):
        ClientSettings.from_env({"CONSTELLATION_HOME": str(home)}).key()
    key_file.chmod(0o600)
    (home / "credentials").chmod(0o755)
    with pytest.raises(credentials.CredentialError, match="folder .* mode 0755"):
        credentials.read_admin_key(home)
    (home / "credentials").chmod(0o700)
    key_file.unlink()
    key_file.symlink_to(credentials.service_key_path(home))
    with pytest.raises(credentials.CredentialError, match="cannot be opened safely"):
        credentials.read_admin_key(home)


def test_operator_keys_replace_the_generated_one(tmp_path):
    credentials.ensure(tmp_path / "home")
    generated = credentials.read_admin_key(tmp_path / "home")
    env = {**without_keys(service_env(tmp_path)), "CONSTELLATION_API_KEYS": "operator:admin"}
    assert config.load("core", env).api_keys == {"operator": "admin"}
    assert GatewaySettings.load(env).api_keys == {"operator"}
    assert config.load("core", without_keys(service_env(tmp_path))).api_keys == {generated: "admin"}
    assert config.load("core", {**env, "CONSTELLATION_AUTH": "off"}).api_keys == {}
    with pytest.raises(config.ConfigError, match="CONSTELLATION_AUTH"):
        config.load("core", {**env, "CONSTELLATION_AUTH": "maybe"})


def test_a_service_alone_without_any_key_refuses_to_start(tmp_path):
    env = {**os.environ, **without_keys(service_env(tmp_path))}
    for name in KEY_VARIABLES:
        env.pop(name, None)
    result = subprocess.run([sys.executable, "-m", "core_svc"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "core cannot start: no API key" in result.stderr
    assert "constellation up" in result.stderr and "CONSTELLATION_AUTH=off" in result.stderr
    assert "Traceback" not in result.stderr


def test_login_tokens_work_once_expire_and_are_stored_hashed(tmp_path):
    home = tmp_path / "home"
    token = credentials.issue_login_token(home, ttl_s=60)
    stored = (home / "credentials" / credentials.LOGIN_TOKENS).read_text()
    assert token not in stored and mode(home / "credentials" / credentials.LOGIN_TOKENS) == 0o600
    assert credentials.redeem_login_token(home, "not-a-token") is False
    assert credentials.redeem_login_token(home, token) is True
    assert credentials.redeem_login_token(home, token) is False
    short = credentials.issue_login_token(home, ttl_s=0.05)
    time.sleep(0.1)
    assert credentials.redeem_login_token(home, short) is False


# --------------------------------------------------------------------------- a fresh mesh from `constellation up`


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "constellation"), *args], env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """A mesh started by `constellation up` with no key anywhere (a fresh machine)."""
    env = without_keys(mesh_env(tmp_path_factory.mktemp("fresh") / "home"))
    started = cli(env, "up")
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        state = mesh_process.read_state(mesh_process.MeshPaths(Path(env["CONSTELLATION_HOME"])))
        yield {"env": env, "up": started.stdout, "state": state, "home": Path(env["CONSTELLATION_HOME"])}
    finally:
        mesh_process.down(env)


def every_method(service: str) -> list[tuple[str, bool]]:
    """(path, server-streaming) of every method the service defines."""
    full_name, _ = SERVICES[service]
    descriptor = DESCRIPTOR_POOL.FindServiceByName(full_name)
    return [(f"/{full_name}/{m.name}", m.server_streaming) for m in descriptor.methods]


def call(channel: grpc.Channel, path: str, streaming: bool, metadata) -> None:
    """One call with an empty request (raises the RpcError)."""
    if streaming:
        list(channel.unary_stream(path)(b"", metadata=metadata, timeout=30))
    else:
        channel.unary_unary(path)(b"", metadata=metadata, timeout=30)


def test_up_makes_a_private_admin_key_and_prints_it_once(fresh):
    home = fresh["home"]
    key = credentials.read_admin_key(home)
    assert mode(home / "credentials") == 0o700 and mode(credentials.admin_key_path(home)) == 0o600
    assert fresh["up"].count(key) == 1 and "shown this once" in fresh["up"]
    gateway = fresh["state"]["processes"]["gateway"]["address"]
    assert f"console: http://{gateway}/?login=" in fresh["up"]
    assert key not in (home / "run" / "mesh.json").read_text()
    for log in (home / "logs").iterdir():
        assert key not in log.read_text(errors="replace"), log


def test_nothing_but_health_answers_without_the_key(fresh):
    key = credentials.read_admin_key(fresh["home"])
    gateway = fresh["state"]["processes"]["gateway"]["address"]
    refused = 0
    for service in SERVICES:  # IdentityService too, which core serves
        direct = fresh["state"]["processes"][SERVED_BY.get(service, service)]["address"]
        for address in (gateway, direct):
            with grpc.insecure_channel(address) as channel:
                for path, streaming in every_method(service):
                    for metadata in (None, [("authorization", "Bearer wrong")], [("x-api-key", TEST_API_KEY)]):
                        error = rpc_error(call, channel, path, streaming, metadata)
                        assert error.code() == grpc.StatusCode.UNAUTHENTICATED, (path, address, metadata)
                        refused += 1
                health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
                assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert refused >= 35 * 2 * 3  # every method of every service, through the gateway and directly
    with grpc.insecure_channel(gateway) as channel:  # the generated key passes (the request is then judged)
        for service in mesh_process.SERVICES:
            path, streaming = next((p, s) for p, s in every_method(service) if required_role(p) != SERVICE_ROLE)
            try:
                call(channel, path, streaming, [("x-api-key", key)])
            except grpc.RpcError as error:
                assert error.code() not in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


def test_the_cli_and_sdk_find_the_key_without_any_setting(fresh):
    listed = cli(fresh["env"], "datasets", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == {}
    gateway = fresh["state"]["processes"]["gateway"]["address"]
    assert ClientSettings.from_env(fresh["env"]).key() == credentials.read_admin_key(fresh["home"])
    with Client(gateway, api_key=ClientSettings.from_env(fresh["env"]).key()) as client:
        assert list(client.core.ListDatasets(core_pb2.ListDatasetsRequest()).datasets) == []
    console = f"http://{gateway}/"
    with urllib.request.urlopen(console + "console.json", timeout=10) as response:
        assert json.load(response)["auth"] is True


def test_the_login_link_logs_the_console_in_once(fresh, browser):  # noqa: F811 -- the imported fixture
    link = cli(fresh["env"], "login-link")
    assert link.returncode == 0, link.stderr
    url = link.stdout.strip()
    page = new_page(browser, api_key=None)
    page.goto(url)
    page.wait_for_selector("[data-testid=catalog-ready]")
    assert "login=" not in page.url  # the token leaves the address bar at once
    assert page.evaluate("sessionStorage.getItem('constellation.apiKey')") == credentials.read_admin_key(fresh["home"])
    assert page.locator("[data-testid=error]").count() == 0 and page.locator("[data-testid=login-error]").count() == 0
    page.close()
    again = new_page(browser, api_key=None)
    again.goto(url)
    refused = again.locator("[data-testid=login-error]")
    refused.wait_for()
    assert "not valid" in refused.inner_text() and "constellation login-link" in refused.inner_text()
    assert again.evaluate("sessionStorage.getItem('constellation.apiKey')") is None
    again.locator("[data-testid=error]").first.wait_for()
    assert "UNAUTHENTICATED" in again.locator("[data-testid=error]").first.inner_text()
    assert not again.crashes
    again.close()


def test_a_second_up_does_not_print_the_key_again(fresh):
    key = credentials.read_admin_key(fresh["home"])
    assert cli(fresh["env"], "down").returncode == 0
    started = cli(fresh["env"], "up")
    assert started.returncode == 0, started.stderr
    assert key not in started.stdout and str(credentials.admin_key_path(fresh["home"])) in started.stdout
    assert credentials.read_admin_key(fresh["home"]) == key
    assert "?login=" in started.stdout


# --------------------------------------------------------------------------- the explicit opt-out


def test_auth_off_is_explicit_logged_and_shown(tmp_path):
    env = {**without_keys(mesh_env(tmp_path / "home")), "CONSTELLATION_AUTH": "off"}
    started = cli(env, "up")
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert "WARNING: authentication is off" in started.stdout
        state = mesh_process.read_state(mesh_process.MeshPaths(tmp_path / "home"))
        assert not (tmp_path / "home" / "credentials").exists()
        for part in (*mesh_process.SERVICES, "gateway"):
            log = Path(state["processes"][part]["log"]).read_text()
            assert "authentication is off" in log and ("WARNING" in log or '"level": "warning"' in log), part
        gateway = state["processes"]["gateway"]["address"]
        with grpc.insecure_channel(gateway) as channel:
            assert (
                list(core_pb2_grpc.CoreServiceStub(channel).ListDatasets(core_pb2.ListDatasetsRequest()).datasets) == []
            )
        with urllib.request.urlopen(f"http://{gateway}/console.json", timeout=10) as response:
            assert json.load(response)["auth_off"] is True
    finally:
        mesh_process.down(env)


def test_a_server_never_runs_open_by_accident(tmp_path):
    """Settings read without load() hold no generated key: a server refuses them rather than letting everyone in."""
    with pytest.raises(config.ConfigError, match="no API key"):
        MeshServer(config.Settings.from_env(without_keys(service_env(tmp_path)), service="core"), [])


def post_login(base: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(base + "/login", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def test_the_console_trades_a_login_token_for_the_key_once(tmp_path):
    home = tmp_path / "home"
    key, _ = credentials.ensure(home)
    server = console.serve(0, tmp_path / "no-dist", tmp_path, {key}, login_key=key, home=home)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        token = credentials.issue_login_token(home, ttl_s=60)
        assert post_login(base, b"not json")[0] == 400
        assert post_login(base, b'{"token": 7}')[0] == 400
        assert post_login(base, json.dumps({"token": "x" * 2000}).encode())[0] == 400  # over the body limit
        wrong = post_login(base, json.dumps({"token": "guess"}).encode())
        assert wrong[0] == 401 and "constellation login-link" in wrong[1]["error"]
        assert post_login(base, json.dumps({"token": token}).encode()) == (200, {"api_key": key})
        assert post_login(base, json.dumps({"token": token}).encode())[0] == 401  # used
    finally:
        server.shutdown()
        server.server_close()
    operator = console.serve(0, tmp_path / "no-dist", tmp_path, {"operator"})  # configured keys: no login links
    try:
        status, body = post_login(f"http://127.0.0.1:{operator.server_address[1]}", b'{"token": "t"}')
        assert status == 404 and "type one" in body["error"]
    finally:
        operator.shutdown()
        operator.server_close()
