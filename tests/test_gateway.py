"""The whole local mesh behind the real Envoy: grpcurl, gRPC-web, CORS, the SDK and the CLI."""

from __future__ import annotations

import base64
import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import requests

from constellation.core.v1 import core_pb2
from constellation.hosting.v1 import hosting_pb2
from constellation_sdk import Client, mesh_process
from tests.conftest import mesh_env

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    env = mesh_env(tmp_path_factory.mktemp("mesh"), docker=True)
    # The console's dev server (`npm run dev`) is another origin: CORS answers it only when configured.
    env["CONSTELLATION_GATEWAY_CORS_ORIGINS"] = "http://localhost:5173"
    state = mesh_process.up(env)
    yield {"env": env, "gateway": state["processes"]["gateway"]["address"], "state": state}
    mesh_process.down(env)


def grpcurl(mesh, *args: str, data: dict | None = None) -> subprocess.CompletedProcess:
    command = [shutil.which("grpcurl") or str(BIN / "grpcurl"), "-plaintext"]
    if data is not None:
        command += ["-d", json.dumps(data)]
    return subprocess.run([*command, mesh["gateway"], *args], capture_output=True, text=True, timeout=30)


def test_grpcurl_lists_every_service_through_the_gateway(mesh):
    listed = grpcurl(mesh, "list")
    assert listed.returncode == 0, listed.stderr
    assert set(listed.stdout.split()) == {
        "constellation.core.v1.CoreService",
        "constellation.core.v1.IdentityService",
        "constellation.core.v1.AuditService",
        "constellation.hosting.v1.HostingService",
        "constellation.orchestrator.v1.OrchestratorService",
        "constellation.agent.v1.AgentService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }


def test_grpcurl_json_round_trip(mesh):
    dataset = {
        "name": "grpcurl-scene",
        "uri": "s3://scenes/olinda.tif",
        "sensor": "landsat-7",
        "bands": ["green", "nir"],
        "resolution_m": 28.5,
    }
    created = grpcurl(mesh, "constellation.core.v1.CoreService/CreateDataset", data={"dataset": dataset})
    assert created.returncode == 0, created.stderr
    dataset_id = json.loads(created.stdout)["id"]
    listed = grpcurl(mesh, "constellation.core.v1.CoreService/ListDatasets", data={"filter": 'name = "grpcurl-scene"'})
    [found] = json.loads(listed.stdout)["datasets"]
    assert found["id"] == dataset_id and found["uri"] == "s3://scenes/olinda.tif" and found["resolution_m"] == 28.5


def test_grpcurl_invalid_request_names_the_field(mesh):
    bad = grpcurl(
        mesh,
        "constellation.core.v1.CoreService/CreateDataset",
        data={"dataset": {"name": "x", "uri": "ftp://x", "bands": ["red"]}},
    )
    assert bad.returncode != 0
    assert "Code: InvalidArgument" in bad.stderr
    assert '"field":"dataset.uri"' in bad.stderr.replace(" ", "")


def grpc_web(
    mesh, method: str, message, *, text: bool = False, headers: dict | None = None
) -> tuple[requests.Response, list[bytes], dict]:
    """One gRPC-web call over HTTP/1.1; returns the response, its data frames and its trailers."""
    body = b"\x00" + struct.pack(">I", message.ByteSize()) + message.SerializeToString()
    content_type = "application/grpc-web-text" if text else "application/grpc-web+proto"
    response = requests.post(
        f"http://{mesh['gateway']}/{method}",
        data=base64.b64encode(body) if text else body,
        headers={
            "content-type": content_type,
            "accept": content_type,
            "x-grpc-web": "1",
            "x-user-agent": "grpc-web-python-test",
            **(headers or {}),
        },
        timeout=10,
    )
    payload = response.content
    if text:
        assert response.headers["content-type"].startswith("application/grpc-web-text")
        # Each chunk is base64-encoded on its own, padding included; quads decode independently.
        payload = b"".join(base64.b64decode(payload[i : i + 4]) for i in range(0, len(payload), 4))
    frames, trailers = [], {}
    while payload:
        flag, length = payload[0], struct.unpack(">I", payload[1:5])[0]
        chunk, payload = payload[5 : 5 + length], payload[5 + length :]
        if flag & 0x80:
            for line in chunk.decode().strip().split("\r\n"):
                key, _, value = line.partition(":")
                trailers[key.strip().lower()] = value.strip()
        else:
            frames.append(chunk)
    return response, frames, trailers


def test_grpc_web_reaches_core(mesh):
    request = core_pb2.CreateDatasetRequest(
        dataset=core_pb2.Dataset(name="web-scene", uri="file:///data/web.tif", bands=["red", "nir"])
    )
    response, [frame], trailers = grpc_web(mesh, "constellation.core.v1.CoreService/CreateDataset", request)
    assert response.status_code == 200 and trailers["grpc-status"] == "0"
    created = core_pb2.Dataset.FromString(frame)
    assert created.id.startswith("ds_") and list(created.bands) == ["red", "nir"]

    _, [frame], trailers = grpc_web(
        mesh, "constellation.core.v1.CoreService/GetDataset", core_pb2.GetDatasetRequest(id=created.id), text=True
    )
    assert trailers["grpc-status"] == "0" and core_pb2.Dataset.FromString(frame) == created


def test_grpc_web_errors_arrive_as_status_trailers(mesh):
    response, frames, trailers = grpc_web(
        mesh, "constellation.core.v1.CoreService/GetDataset", core_pb2.GetDatasetRequest(id="ds_missing")
    )
    status = trailers.get("grpc-status") or response.headers.get("grpc-status")
    message = trailers.get("grpc-message") or response.headers.get("grpc-message", "")
    assert status == str(grpc.StatusCode.NOT_FOUND.value[0]) and not frames
    assert "ds_missing" in requests.utils.unquote(message)


def test_cors_preflight_from_a_browser_origin(mesh):
    origin = "http://localhost:5173"
    preflight = requests.options(
        f"http://{mesh['gateway']}/constellation.core.v1.CoreService/ListDatasets",
        headers={
            "origin": origin,
            "access-control-request-method": "POST",
            "access-control-request-headers": "content-type,x-grpc-web,x-user-agent,authorization",
        },
        timeout=10,
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == origin
    allowed = preflight.headers["access-control-allow-headers"]
    for header in ("x-grpc-web", "content-type", "authorization"):
        assert header in allowed
    response, _, trailers = grpc_web(
        mesh,
        "constellation.core.v1.CoreService/ListDatasets",
        core_pb2.ListDatasetsRequest(),
        headers={"origin": origin},
    )
    assert response.headers["access-control-allow-origin"] == origin
    assert "grpc-status" in response.headers["access-control-expose-headers"]
    assert trailers["grpc-status"] == "0"


def test_sdk_client_through_the_gateway(mesh):
    with Client(gateway=mesh["gateway"]) as client:
        client.wait_ready()
        assert client.serving()
        created = client.core.CreateDataset(
            core_pb2.CreateDatasetRequest(
                dataset=core_pb2.Dataset(name="sdk-scene", uri="file:///data/sdk.tif", bands=["green"])
            )
        )
        listed = client.core.ListDatasets(core_pb2.ListDatasetsRequest(filter='name = "sdk-scene"'))
        assert [d.id for d in listed.datasets] == [created.id]
        assert client.hosting.ListModels(hosting_pb2.ListModelsRequest()).models == []
        with pytest.raises(grpc.RpcError) as missing:
            client.hosting.GetModelStatus(hosting_pb2.GetModelStatusRequest(model_id="hm_missing"))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def test_cli_status_reports_every_part_serving(mesh):
    result = subprocess.run(
        [str(BIN / "constellation"), "status", "--json"], env=mesh["env"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert set(report) == {"core", "hosting", "orchestrator", "agent", "gateway"}
    assert all(entry["serving"] for entry in report.values())


def test_a_second_up_refuses_while_the_mesh_runs(mesh):
    with pytest.raises(RuntimeError, match="already running"):
        mesh_process.up(mesh["env"])
