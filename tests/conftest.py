"""Fixtures that run the real thing: PostgreSQL, SQLite, in-process gRPC servers on port 0."""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from constellation.core.v1 import core_pb2_grpc
from core_svc.server import build as build_core
from mesh import config
from mesh.services import insecure_channel, with_api_key
from tests.pg import PostgresCluster, create_database, free_port

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_MODELS = ROOT / "examples" / "models"
# The places the suite's services may read scenes from and export to (clients.roots): the temporary folders tests
# make, /data (where the catalog tests' scenes are said to live, never read) and the sample scenes; any bucket.
TEST_STORAGE_ROOTS = {
    "CONSTELLATION_DATA_ROOTS": f"{tempfile.gettempdir()},/data,{ROOT / 'examples' / 'data'}",
    "CONSTELLATION_EXPORT_ROOTS": tempfile.gettempdir(),
    "CONSTELLATION_S3_BUCKETS": "*",
}


# The suite's meshes are secured with this admin key (never authentication off, unless a test is about that):
# services started from service_env() or mesh_env() accept it, and in this process the SDK's Client presents it,
# as it reads CONSTELLATION_API_KEY. Tests about the generated credential (tests/test_secure_default.py) drop it.
TEST_API_KEY = f"suite-admin-{secrets.token_urlsafe(16)}"
TEST_AUTH = {"CONSTELLATION_API_KEY": TEST_API_KEY}


def key_channel(address: str) -> grpc.Channel:
    """A channel to one service of the suite's, presenting TEST_API_KEY."""
    return with_api_key(insecure_channel(address), TEST_API_KEY)


@pytest.fixture(scope="session", autouse=True)
def suite_environment() -> Iterator[None]:
    """Every service a test starts, in this process or as a child, reads its roots and key from this environment."""
    saved = {key: os.environ.get(key) for key in {**TEST_STORAGE_ROOTS, **TEST_AUTH}}
    os.environ.update({**TEST_STORAGE_ROOTS, **TEST_AUTH})
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str]:
    """The PostgreSQL server at DATABASE_URL when set (its user must be allowed to CREATE DATABASE),
    else a throwaway cluster started for this test run."""
    external = os.environ.get("DATABASE_URL", "")
    if external.startswith("postgresql"):
        yield external
        return
    cluster = PostgresCluster().start()
    try:
        yield cluster.admin_url
    finally:
        cluster.destroy()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'core.db'}"
    return create_database(request.getfixturevalue("postgres_admin_url"))


def service_env(tmp_path, **extra: str) -> dict[str, str]:
    env = {
        "CONSTELLATION_HOME": str(tmp_path / "home"),
        "CONSTELLATION_CORE_PORT": "0",
        "CONSTELLATION_CORE_METRICS_PORT": "0",
        "CONSTELLATION_HEALTH_INTERVAL_S": "0.2",
        "CONSTELLATION_SHUTDOWN_GRACE_S": "2",
        # Core's peers: closed ports unless a test starts them (never a mesh that happens to run here).
        "CONSTELLATION_HOSTING_ADDR": f"127.0.0.1:{free_port()}",
        "CONSTELLATION_ORCHESTRATOR_ADDR": f"127.0.0.1:{free_port()}",
        **TEST_AUTH,
    }
    env.update(extra)
    return env


# Figures tests measure (timings, sizes); printed after the results, since `make test` captures prints.
MEASURED_FIGURES: list[str] = []


def pytest_terminal_summary(terminalreporter) -> None:
    if MEASURED_FIGURES:
        terminalreporter.section("measured figures")
        for line in MEASURED_FIGURES:
            terminalreporter.write_line(line)


def mesh_env(home, docker: bool = False) -> dict[str, str]:
    """Environment for `constellation up` in `home` on free ports (SQLite, local files, offline planner, the
    suite's TEST_API_KEY); hosting uses Docker only when `docker` (else local processes)."""
    from constellation_sdk import mesh_process

    env = {
        **os.environ,
        **TEST_STORAGE_ROOTS,
        **TEST_AUTH,
        "CONSTELLATION_HOME": str(home),
        "CONSTELLATION_HEALTH_INTERVAL_S": "0.5",
        "CONSTELLATION_LOG_FORMAT": "json",
    }
    for service in mesh_process.SERVICES:
        env[f"CONSTELLATION_{service.upper()}_PORT"] = str(free_port())
        env[f"CONSTELLATION_{service.upper()}_METRICS_PORT"] = "0"
    env["CONSTELLATION_GATEWAY_PORT"] = str(free_port())
    env["CONSTELLATION_HOSTING_DOCKER"] = "auto" if docker else "off"
    env["CONSTELLATION_HOSTING_MODEL_ROOTS"] = f"{EXAMPLE_MODELS},{tempfile.gettempdir()}"  # and tests' folders
    env.pop("DATABASE_URL", None)
    return env


@pytest.fixture
def core_server(database_url: str, tmp_path):
    server = build_core(config.load("core", service_env(tmp_path, DATABASE_URL=database_url)))
    server.start()
    yield server
    server.stop(0)


@pytest.fixture
def core(core_server) -> Iterator[core_pb2_grpc.CoreServiceStub]:
    core_channel = key_channel(f"127.0.0.1:{core_server.port}")
    yield core_pb2_grpc.CoreServiceStub(core_channel)
    core_channel.close()


def rpc_error(call, *args, **kwargs) -> grpc.RpcError:
    """Call and return the RpcError it raises; fails the test if it succeeds."""
    try:
        call(*args, **kwargs)
    except grpc.RpcError as error:
        return error
    pytest.fail(f"{call} succeeded; an error was expected")


@pytest.fixture(scope="session")
def stac_api(postgres_admin_url: str, tmp_path_factory) -> Iterator:
    """A real STAC API (stac-fastapi-pgstac on PostGIS, tests/stac_server.py) holding the test items of
    tests/stac_items.py in one collection; its COGs lie in a temporary folder (a data root)."""
    from tests.stac_server import StacServer

    server = StacServer(postgres_admin_url, tmp_path_factory.mktemp("stac-api")).start()
    try:
        yield server
    finally:
        server.stop()
