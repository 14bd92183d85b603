"""TLS and mTLS: `constellation certs`, a whole mesh run with `up --tls` behind the real Envoy (the SDK, grpcurl,
gRPC-web over HTTPS, the console hop), the peer table, foreign and missing certificates, model_runtime over mTLS,
and the plaintext warning."""

from __future__ import annotations

import datetime
import json
import logging
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
from cryptography import x509
from cryptography.x509.oid import NameOID
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients.inference import InferenceClient
from constellation.common.v1 import common_pb2 as c
from constellation.core.v1 import audit_pb2, core_pb2, core_pb2_grpc
from constellation.hosting.v1 import hosting_pb2
from constellation.orchestrator.v1 import orchestrator_pb2
from constellation_sdk import Client, catalog, mesh_process, watch
from core_svc.server import build as build_core
from gateway import console
from mesh import certs, config, peers
from mesh.services import SERVICES, insecure_channel
from mesh.tls import IDENTITIES, TlsFiles
from model_runtime.server import ModelServer, ServerTls
from tests.conftest import EXAMPLE_MODELS, mesh_env, rpc_error, service_env
from tests.test_main_job import run_demo

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SCENE = ROOT / "examples" / "data" / "L7_ETMs.tif"
L7_BANDS = ["blue", "green", "red", "nir", "swir1", "swir2"]


# --------------------------------------------------------------------------- constellation certs


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_certs_command_makes_a_ca_and_a_verified_certificate_per_identity(tmp_path):
    folder = tmp_path / "certs"
    made = subprocess.run(
        [str(BIN / "constellation"), "certs", "--dir", str(folder), "--host", "core-svc", "--host", "10.0.0.7"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    assert made.stdout.count("created") == len(IDENTITIES)
    assert folder.stat().st_mode & 0o777 == 0o700
    ca = load(folder / "ca.crt")
    assert (folder / "ca.key").stat().st_mode & 0o777 == 0o600
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for name in IDENTITIES:
        cert = load(folder / f"{name}.crt")
        cert.verify_directly_issued_by(ca)  # raises unless the CA signed it
        assert (folder / f"{name}.key").stat().st_mode & 0o777 == 0o600
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == name
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.UniformResourceIdentifier) == [f"spiffe://constellation/{name}"]
        assert {"localhost", "core-svc"} <= set(san.get_values_for_type(x509.DNSName))
        assert {"127.0.0.1", "10.0.0.7"} <= {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}


def test_certs_rerun_keeps_the_ca_and_good_leaves_and_renews_expiring_or_rotated_ones(tmp_path):
    folder = tmp_path / "certs"
    certs.issue(folder)
    ca_before = (folder / "ca.crt").read_bytes()
    serials = {name: load(folder / f"{name}.crt").serial_number for name in IDENTITIES}

    assert {i.action for i in certs.issue(folder)} == {"kept"}
    # A leaf within the renewal window is renewed: a window longer than a leaf's life makes every one "expire soon".
    renewed = certs.issue(folder, renew_within=datetime.timedelta(days=certs.LEAF_DAYS + 1))
    assert {i.action for i in renewed} == {"renewed"}
    # A new --host renews every leaf to carry it; --rotate renews all regardless.
    assert {i.action for i in certs.issue(folder, hosts=["mesh.example"])} == {"renewed"}
    assert {i.action for i in certs.issue(folder, hosts=["mesh.example"])} == {"kept"}
    assert {i.action for i in certs.issue(folder, hosts=["mesh.example"], rotate=True)} == {"renewed"}
    assert (folder / "ca.crt").read_bytes() == ca_before
    ca = load(folder / "ca.crt")
    for name in IDENTITIES:
        cert = load(folder / f"{name}.crt")
        cert.verify_directly_issued_by(ca)
        assert cert.serial_number != serials[name]


# --------------------------------------------------------------------------- the peer table


def test_every_method_of_every_service_has_a_peer_rule():
    for full_name, _ in SERVICES.values():
        service = descriptor_pool.Default().FindServiceByName(full_name)
        assert set(peers.RULES[full_name]) == {m.name for m in service.methods}, full_name
    assert set(peers.RULES) == {full_name for full_name, _ in SERVICES.values()}
    known = set(IDENTITIES)
    assert all(allowed <= known for rules in peers.RULES.values() for allowed in rules.values())


def test_peer_rules_answer_by_identity():
    launch = "/constellation.orchestrator.v1.OrchestratorService/LaunchRun"
    assert peers.denial(launch, "core") is None
    assert "allows core" in (peers.denial(launch, "client") or "")
    assert peers.denial("/grpc.health.v1.Health/Check", "agent") is None
    assert peers.denial("/constellation.core.v1.CoreService/ListDatasets", "agent") is None
    assert peers.denial("/constellation.core.v1.CoreService/DeleteDataset", "agent") is not None
    assert peers.denial("/constellation.core.v1.CoreService/Nope", "client") is not None
    assert peers.denial("/grpc.health.v1.Health/Check", None) is not None


# --------------------------------------------------------------------------- a whole mesh with --tls


@pytest.fixture(scope="module")
def tls_mesh(tmp_path_factory):
    home = tmp_path_factory.mktemp("tls-mesh")
    env = mesh_env(home)
    state = mesh_process.up(env, tls=True)
    processes = state["processes"]
    yield {
        "env": env,
        "home": home,
        "state": state,
        "certs": Path(state["tls_dir"]),
        "gateway": processes["gateway"]["address"],
        **{name: processes[name]["address"] for name in mesh_process.SERVICES},
    }
    stopped = mesh_process.down(env)
    assert not any("not stopped" in line for line in stopped), stopped


def test_up_tls_makes_the_certificates_in_the_home(tls_mesh):
    assert tls_mesh["certs"] == tls_mesh["home"] / "certs"
    assert {f"{name}.crt" for name in IDENTITIES} <= {p.name for p in tls_mesh["certs"].iterdir()}
    core_log = Path(tls_mesh["state"]["processes"]["core"]["log"]).read_text()
    assert '"tls": "mtls"' in core_log and "serving plaintext" not in core_log


def test_a_tls_mesh_runs_a_job_through_the_gateway_with_the_sdk(tls_mesh, tmp_path):
    with Client(tls_mesh["gateway"], tls_dir=tls_mesh["certs"]) as client:
        client.wait_ready()
        dataset = catalog.ensure_dataset(client.core, catalog.scene_dataset(SCENE, "tls-olinda", L7_BANDS))
        spec = c.PipelineSpec(
            blocks=[
                c.Block(id="scene", dataset=c.DatasetBlock(dataset_id=dataset.id)),
                c.Block(id="ndwi", index=c.IndexBlock(preset=c.SPECTRAL_INDEX_NDWI)),
                c.Block(id="out", export=c.ExportBlock(uri=(tmp_path / "out").as_uri())),
            ],
            edges=[
                c.Edge(source_block_id="scene", target_block_id="ndwi"),
                c.Edge(source_block_id="ndwi", target_block_id="out"),
            ],
        )
        pipeline = catalog.ensure_pipeline(client.core, "tls-ndwi", spec)
        run = client.core.RunPipeline(core_pb2.RunPipelineRequest(pipeline_id=pipeline.id))
        report = watch.follow(client.core, run.id, spec=pipeline.spec)
    assert report.state == "succeeded", report.as_dict()
    written = [Path(o.uri.removeprefix("file://")) for o in report.run.outputs]
    assert written and all(path.is_file() and path.stat().st_size > 0 for path in written)


@pytest.mark.slow
def test_the_demo_deploys_a_model_and_maps_water_on_a_tls_mesh(tls_mesh):
    """Core packages and deploys the model on hosting and launches the run on the orchestrator, all over mTLS."""
    summary = run_demo(tls_mesh["env"], "--model", "ndwi-water")
    assert summary["state"] == "succeeded", summary
    assert f"https://{tls_mesh['gateway']}/" in summary["stdout"]
    hosting_log = Path(tls_mesh["state"]["processes"]["hosting"]["log"]).read_text()
    assert "PERMISSION_DENIED" not in hosting_log


def test_a_plaintext_connection_to_a_tls_service_fails(tls_mesh):
    with insecure_channel(tls_mesh["core"]) as channel:
        error = rpc_error(health_pb2_grpc.HealthStub(channel).Check, health_pb2.HealthCheckRequest(), timeout=5)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://{tls_mesh['gateway']}/", timeout=5)


def test_a_certificate_from_another_ca_is_refused(tls_mesh, tmp_path):
    other = tmp_path / "other-ca"
    certs.issue(other, names=["client", "core"])
    # A client whose whole folder comes from another CA trusts neither the gateway nor the service.
    for address in (tls_mesh["gateway"], tls_mesh["core"]):
        with Client(address, tls_dir=other) as client:
            assert rpc_error(client.core.ListDatasets, core_pb2.ListDatasetsRequest(), timeout=5).code() == (
                grpc.StatusCode.UNAVAILABLE
            )
    # Trusting the mesh's CA but presenting another CA's client certificate (even one named "core"): the service
    # ends the handshake.
    mesh_ca = (tls_mesh["certs"] / "ca.crt").read_bytes()
    foreign = TlsFiles(other, "core")
    credentials = grpc.ssl_channel_credentials(mesh_ca, foreign.key.read_bytes(), foreign.cert.read_bytes())
    with grpc.secure_channel(tls_mesh["orchestrator"], credentials) as channel:
        error = rpc_error(health_pb2_grpc.HealthStub(channel).Check, health_pb2.HealthCheckRequest(), timeout=5)
    assert error.code() == grpc.StatusCode.UNAVAILABLE


def test_the_client_certificate_may_not_launch_an_orchestrator_run(tls_mesh):
    with Client(tls_mesh["orchestrator"], tls_dir=tls_mesh["certs"]) as direct:
        assert direct.serving()  # health is open to any peer of the mesh's CA
        denied = rpc_error(direct.orchestrator.LaunchRun, orchestrator_pb2.LaunchRunRequest(), timeout=10)
        assert direct.orchestrator.ListRuns(orchestrator_pb2.ListRunsRequest(), timeout=10) is not None
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "peer 'client' may not call LaunchRun" in denied.details() and "allows core" in denied.details()
    # Nor may the gateway: users start runs through core's RunPipeline.
    with Client(tls_mesh["gateway"], tls_dir=tls_mesh["certs"]) as client:
        denied = rpc_error(client.orchestrator.CancelRun, orchestrator_pb2.CancelRunRequest(id="r"), timeout=10)
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED and "peer 'gateway'" in denied.details()


def test_a_service_certificate_may_call_only_what_its_rule_lists(tls_mesh):
    agent = TlsFiles(tls_mesh["certs"], "agent")
    with grpc.secure_channel(tls_mesh["core"], agent.channel_credentials()) as channel:
        core = core_pb2_grpc.CoreServiceStub(channel)
        assert core.ListDatasets(core_pb2.ListDatasetsRequest(), timeout=10) is not None
        denied = rpc_error(core.DeleteDataset, core_pb2.DeleteDatasetRequest(id="ds_x"), timeout=10)
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED and "peer 'agent'" in denied.details()


def test_hosting_and_the_orchestrator_send_their_audit_records_to_core_over_mtls(tls_mesh):
    with Client(tls_mesh["gateway"], tls_dir=tls_mesh["certs"]) as client:
        refused = rpc_error(client.orchestrator.CancelRun, orchestrator_pb2.CancelRunRequest(id="run_tls_audit"))
        missing = rpc_error(client.hosting.DeleteModel, hosting_pb2.DeleteModelRequest(model_id="hm_tls_audit"))
        wanted = {"orchestrator": (refused, "run_tls_audit"), "hosting": (missing, "hm_tls_audit")}
        targets = {(service, target) for service, (_, target) in wanted.items()}
        found: dict[str, audit_pb2.AuditEvent] = {}
        deadline = time.monotonic() + 20
        while len(found) < 2 and time.monotonic() < deadline:  # the services send their records in batches
            events = client.audit.ListAuditEvents(audit_pb2.ListAuditEventsRequest(page_size=1000), timeout=10).events
            found = {e.service: e for e in events if (e.service, e.target_id) in targets}
            time.sleep(0.2)
    assert set(found) == {"orchestrator", "hosting"}
    for service, (error, _) in wanted.items():
        request_id = dict(error.initial_metadata())["x-request-id"]
        assert (found[service].outcome, found[service].request_id) == (error.code().name, request_id)
    assert found["orchestrator"].outcome == "PERMISSION_DENIED"  # the gateway may not cancel orchestrator runs
    for service in ("hosting", "orchestrator"):
        assert "audit records not written" not in Path(tls_mesh["state"]["processes"][service]["log"]).read_text()


def grpcurl(*args: str) -> subprocess.CompletedProcess:
    command = [shutil.which("grpcurl") or str(BIN / "grpcurl"), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=30)


def test_grpcurl_with_cacert_works_through_the_gateway(tls_mesh):
    ca = str(tls_mesh["certs"] / "ca.crt")
    listed = grpcurl("-cacert", ca, tls_mesh["gateway"], "list")
    assert listed.returncode == 0, listed.stderr
    assert "constellation.core.v1.CoreService" in listed.stdout.split()
    health = grpcurl("-cacert", ca, tls_mesh["gateway"], "grpc.health.v1.Health/Check")
    assert health.returncode == 0 and json.loads(health.stdout) == {"status": "SERVING"}, health.stderr
    plain = grpcurl("-plaintext", tls_mesh["gateway"], "list")
    assert plain.returncode != 0


def test_grpc_web_and_the_console_over_https(tls_mesh):
    ca = str(tls_mesh["certs"] / "ca.crt")
    message = core_pb2.ListDatasetsRequest()
    body = b"\x00" + struct.pack(">I", message.ByteSize()) + message.SerializeToString()
    origin = f"https://127.0.0.1:{tls_mesh['gateway'].rsplit(':', 1)[1]}"
    response = requests.post(
        f"https://{tls_mesh['gateway']}/constellation.core.v1.CoreService/ListDatasets",
        data=body,
        headers={"content-type": "application/grpc-web+proto", "x-grpc-web": "1", "origin": origin},
        verify=ca,
        timeout=10,
    )
    assert response.status_code == 200 and response.raw.version == 11  # HTTP/1.1 (requests has no HTTP/2)
    assert response.headers["access-control-allow-origin"] == origin
    trailer = response.content[response.content.rindex(b"\x80") + 5 :].decode()
    assert "grpc-status:0" in trailer.replace(" ", "")
    # The console's static server is its own hop behind Envoy, over mTLS with the gateway's certificate.
    page = requests.get(f"https://{tls_mesh['gateway']}/console.json", verify=ca, timeout=10)
    assert page.status_code == 200 and "outputs_uri" in page.json()


def test_the_console_loads_over_https_in_chromium_and_reads_the_catalog(tls_mesh):
    """The page and its gRPC-web calls over the gateway's TLS (the browser negotiates h2 by ALPN). Chromium is told
    to accept the certificate: trusting a CA needs an NSS database; the other tests verify the chain."""
    from playwright.sync_api import sync_playwright

    from tests.test_web_console import CHROMIUM, DIST

    assert (DIST / "index.html").exists(), "web/dist is missing: run `make web` (make test does)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(ignore_https_errors=True)
            page.set_default_timeout(30_000)
            crashes: list[str] = []
            page.on("pageerror", lambda error: crashes.append(str(error)))
            response = page.goto(f"https://{tls_mesh['gateway']}/")
            assert response is not None and response.ok and response.url.startswith("https://")
            page.wait_for_selector("[data-testid=catalog-ready]")
            assert page.locator("[data-testid=error]").count() == 0 and not crashes
        finally:
            browser.close()


def test_the_console_server_takes_only_the_gateway(tls_mesh):
    server = console.serve(0, tls_mesh["home"], tls_mesh["home"], tls=TlsFiles(tls_mesh["certs"], "gateway"))
    url = f"https://127.0.0.1:{server.server_address[1]}/console.json"
    ca = str(tls_mesh["certs"] / "ca.crt")
    try:
        as_gateway = TlsFiles(tls_mesh["certs"], "gateway")
        assert requests.get(url, verify=ca, cert=(str(as_gateway.cert), str(as_gateway.key)), timeout=10).ok
        as_client = TlsFiles(tls_mesh["certs"], "client")
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(url, verify=ca, cert=(str(as_client.cert), str(as_client.key)), timeout=10)
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(url, verify=ca, timeout=10)
    finally:
        server.shutdown()


def test_cli_status_and_the_container_health_check_work_under_tls(tls_mesh):
    status = subprocess.run(
        [str(BIN / "constellation"), "status", "--json"],
        env=tls_mesh["env"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert status.returncode == 0, status.stdout + status.stderr
    assert all(entry["serving"] for entry in json.loads(status.stdout).values())
    env = {**tls_mesh["env"], "CONSTELLATION_TLS_DIR": str(tls_mesh["certs"])}
    check = [sys.executable, "-m", "mesh.healthcheck", tls_mesh["hosting"]]
    assert subprocess.run(check, env=env, capture_output=True, timeout=30).returncode == 0
    without = {k: v for k, v in env.items() if k != "CONSTELLATION_TLS_DIR"}
    assert subprocess.run(check, env=without, capture_output=True, timeout=30).returncode == 1


# --------------------------------------------------------------------------- model endpoints


def test_model_runtime_serves_mtls_and_the_inference_client_calls_it(tmp_path):
    folder = tmp_path / "certs"
    certs.issue(folder, names=["hosting", "orchestrator"])
    other = tmp_path / "other"
    certs.issue(other, names=["orchestrator"])
    endpoint = TlsFiles(folder, "hosting")
    server = ModelServer(EXAMPLE_MODELS / "ndwi-water", port=0, tls=ServerTls(endpoint.cert, endpoint.key, endpoint.ca))
    port = server.start()
    address = f"127.0.0.1:{port}"
    tiles = np.random.default_rng(1).random((2, 2, 256, 256), dtype=np.float32)
    try:
        with InferenceClient(
            address, "ndwi-water", credentials=TlsFiles(folder, "orchestrator").channel_credentials()
        ) as client:
            client.wait_ready(30)
            outputs = client.infer("ndwi-water", tiles)
        assert outputs["water_probability"].shape == (2, 1, 256, 256)
        for credentials in (None, TlsFiles(other, "orchestrator").channel_credentials()):
            with InferenceClient(address, "ndwi-water", credentials=credentials, timeout_s=5) as refused:
                assert not refused.ready(timeout_s=3)
    finally:
        server.stop(0)


# --------------------------------------------------------------------------- plaintext


def test_plaintext_is_served_with_one_warning(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    server = build_core(config.load("core", service_env(tmp_path, DATABASE_URL=f"sqlite:///{tmp_path / 'c.db'}")))
    server.start()
    server.stop(0)
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and "plaintext" in r.getMessage()]
    assert len(warned) == 1 and warned[0].name == "mesh.server"

    caplog.clear()
    env = {"CONSTELLATION_HOME": str(tmp_path / "home")}
    assert mesh_process._tls_setup(env, mesh_process.MeshPaths(tmp_path / "home"), tls=False) is None
    assert [r.name for r in caplog.records if "plaintext" in r.getMessage()] == ["constellation.mesh"]


def test_a_missing_certificate_stops_a_service_naming_the_setting(tmp_path):
    certs.issue(tmp_path / "certs", names=["client"])
    with pytest.raises(config.ConfigError, match="CONSTELLATION_TLS_DIR: .*core.crt is missing"):
        config.load("core", {"CONSTELLATION_TLS_DIR": str(tmp_path / "certs")})
