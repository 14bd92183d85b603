"""Contracts and configuration: buf lint, generated code freshness, the upstream KServe V2 wire format,
Envoy's config, compose.yaml (validated and its TLS set-up run on this host; the stack itself is not started)."""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import yaml
from cryptography import x509

import gateway.__main__ as gateway_main
from gateway import admin, supervisor
from inference import grpc_predict_v2_pb2 as v2
from mesh import config, healthcheck
from mesh.tls import IDENTITIES, SPIFFE_PREFIX, TlsFiles

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_generated_code_matches_the_protos():
    result = run(sys.executable, "scripts/gen_protos.py", "--check")
    assert result.returncode == 0, result.stderr


def test_buf_lint_passes():
    buf = ROOT / "node_modules" / ".bin" / "buf"
    assert buf.exists(), "buf is missing: run `npm ci` (make setup does)"
    result = run(str(buf), "lint")
    assert result.returncode == 0, result.stdout + result.stderr


def test_buf_lint_would_catch_a_bad_contract(tmp_path):
    """The lint check can fail: a proto breaking the house rules is reported."""
    module = tmp_path / "protos" / "constellation" / "bad" / "v1"
    module.mkdir(parents=True)
    (module / "bad.proto").write_text(
        'syntax = "proto3";\npackage constellation.bad.v1;\nenum Colour { RED = 0; }\nmessage thing { string Name '
        "= 1; }\n"
    )
    (tmp_path / "buf.yaml").write_text((ROOT / "buf.yaml").read_text())
    result = subprocess.run(
        [str(ROOT / "node_modules" / ".bin" / "buf"), "lint"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "ENUM_ZERO_VALUE_SUFFIX" in result.stdout or "_UNSPECIFIED" in result.stdout


# (message, field) -> field number, from the public KServe V2 (Open Inference Protocol) gRPC spec.
KSERVE_V2_FIELDS = {
    ("ModelInferRequest", "model_name"): 1,
    ("ModelInferRequest", "model_version"): 2,
    ("ModelInferRequest", "id"): 3,
    ("ModelInferRequest", "parameters"): 4,
    ("ModelInferRequest", "inputs"): 5,
    ("ModelInferRequest", "outputs"): 6,
    ("ModelInferRequest", "raw_input_contents"): 7,
    ("ModelInferResponse", "outputs"): 5,
    ("ModelInferResponse", "raw_output_contents"): 6,
    ("ModelMetadataResponse", "platform"): 3,
    ("ModelMetadataResponse", "inputs"): 4,
    ("ModelMetadataResponse", "outputs"): 5,
    ("InferParameter", "string_param"): 3,
    ("InferTensorContents", "fp32_contents"): 6,
    ("InferTensorContents", "bytes_contents"): 8,
}


@pytest.mark.parametrize(("message", "field"), sorted(KSERVE_V2_FIELDS))
def test_inference_proto_is_wire_identical_to_kserve_v2(message, field):
    descriptor = v2.DESCRIPTOR.message_types_by_name[message]
    assert descriptor.full_name == f"inference.{message}"
    assert descriptor.fields_by_name[field].number == KSERVE_V2_FIELDS[(message, field)]


def test_inference_service_methods():
    service = v2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == "inference.GRPCInferenceService"
    assert {m.name for m in service.methods} == {
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
    }


def test_envoy_accepts_its_config():
    result = run(str(BIN / "envoy"), "--mode", "validate", "-c", "envoy/envoy.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_docker_compose_accepts_compose_yaml():
    compose = shutil.which("docker-compose")
    assert compose, "docker-compose is missing: apt-get install docker-compose (.ci/run does)"
    result = run(compose, "-f", "compose.yaml", "config", "-q")
    assert result.returncode == 0, result.stderr
    services = run(compose, "-f", "compose.yaml", "config", "--services").stdout.split()
    assert set(services) == {
        "postgres",
        "s3",
        "credentials",
        "core",
        "hosting",
        "orchestrator",
        "dagster-ui",
        "agent",
        "gateway",
    }


# --------------------------------------------------------------------------- compose.yaml under TLS

MESH_IMAGE = "constellation/mesh:dev"
SERVICES = ("core", "hosting", "orchestrator", "agent")
# The names the certificates must carry besides 127.0.0.1: the compose services, for when they dial by name.
COMPOSE_HOSTS = (*SERVICES, "gateway")
VOLUME = "/data"


@pytest.fixture(scope="module")
def compose() -> dict[str, dict]:
    """compose.yaml's services as docker-compose resolves them (anchors merged, variables substituted)."""
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose is missing: apt-get install docker-compose (.ci/run does)"
    result = run(binary, "-f", "compose.yaml", "config")
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)["services"]


def on_this_host(service: dict, volume: Path) -> dict[str, str]:
    """A container's environment with the shared volume (/data) at `volume`, to run its command here."""
    environment = {
        name: str(volume) + value.removeprefix(VOLUME) if value == VOLUME or value.startswith(f"{VOLUME}/") else value
        for name, value in service["environment"].items()
    }
    return {**environment, "PATH": f"{BIN}:{os.environ['PATH']}", "PYTHONPATH": os.environ.get("PYTHONPATH", "")}


@pytest.fixture(scope="module")
def volume(compose, tmp_path_factory) -> Path:
    """The shared volume after the credentials container's command ran here with the environment compose gives it
    (`$$` is compose's escape for a `$` the container's shell expands)."""
    folder = tmp_path_factory.mktemp("compose") / "data"
    folder.mkdir()
    made = subprocess.run(
        ["sh", "-c", compose["credentials"]["command"][2].replace("$$", "$")],
        env=on_this_host(compose["credentials"], folder),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    return folder


def test_every_mesh_container_of_compose_has_only_its_own_certificate(compose):
    """Each service and the gateway mount a volume of their own at /data/certs (tls-<name>, which the credentials
    container fills with the CA's certificate and their own pair); only the credentials container mounts `certs`,
    with the CA's key and every identity's."""
    parts = {name for name, service in compose.items() if service["image"] == MESH_IMAGE} - {"s3", "dagster-ui"}
    assert parts == {*SERVICES, "gateway", "credentials"}
    for name in parts:
        assert compose[name]["environment"]["CONSTELLATION_TLS_DIR"] == f"{VOLUME}/certs", name
        own = "certs" if name == "credentials" else f"tls-{name}"
        keys = {v for v in compose[name]["volumes"] if v.startswith(("credentials:", "certs:", "tls-"))}
        expected = {f"credentials:{VOLUME}/credentials:rw", f"{own}:{VOLUME}/certs:rw"}
        if name == "credentials":
            expected |= {f"tls-{other}:{VOLUME}/tls/{other}:rw" for other in COMPOSE_HOSTS}
        assert keys == expected, name
    # The S3 store and the Dagster UI run the mesh image too, but no key's volume; the database has none either.
    for name in ("s3", "postgres", "dagster-ui"):
        assert not [v for v in compose[name].get("volumes", []) if v.startswith(("credentials:", "certs:", "tls-"))]
    for name in [*SERVICES, "gateway"]:
        assert compose[name]["depends_on"]["credentials"] == {"condition": "service_completed_successfully"}, name
    gateway = compose["gateway"]
    assert gateway["command"] == ["python", "-m", "gateway"]  # renders envoy.yaml with TLS, runs the console too
    health = ["CMD", "python", "-m", "gateway.admin", f"{VOLUME}/{admin.SOCKET_NAME}", "/ready"]
    assert gateway["healthcheck"]["test"] == health
    script = compose["credentials"]["command"][2]
    assert compose["credentials"]["command"][:2] == ["sh", "-c"] and "constellation certs" in script
    for host in COMPOSE_HOSTS:
        assert f"--host {host}" in script


def test_compose_credentials_container_makes_private_certificates_naming_the_services(compose, volume):
    certs = volume / "certs"
    assert stat.S_IMODE(certs.stat().st_mode) == 0o700
    assert stat.S_IMODE((volume / "credentials" / "admin.key").stat().st_mode) == 0o600
    for identity in IDENTITIES:
        assert stat.S_IMODE((certs / f"{identity}.key").stat().st_mode) == 0o600, identity
        sans = (
            x509.load_pem_x509_certificate((certs / f"{identity}.crt").read_bytes())
            .extensions.get_extension_for_class(x509.SubjectAlternativeName)
            .value
        )
        assert set(COMPOSE_HOSTS) <= set(sans.get_values_for_type(x509.DNSName)), identity
        assert ipaddress.ip_address("127.0.0.1") in sans.get_values_for_type(x509.IPAddress), identity
    for name in COMPOSE_HOSTS:  # what each service serves mTLS with, and its health check calls as
        own = volume / "tls" / name  # mounted at /data/certs in the service's container
        assert sorted(p.name for p in own.iterdir()) == sorted(["ca.crt", f"{name}.crt", f"{name}.key"]), name
        assert stat.S_IMODE(own.stat().st_mode) == 0o700 and stat.S_IMODE((own / f"{name}.key").stat().st_mode) == 0o600
        TlsFiles(own, name).check()
        assert healthcheck.identity(own) == TlsFiles(own, name)


def test_compose_gateway_renders_tls_at_the_door_and_mtls_to_every_cluster(compose, volume):
    """The Envoy config the gateway container's `python -m gateway` writes, from the environment compose gives it."""
    certs = volume / "certs"
    envoy_yaml = gateway_main.render(on_this_host(compose["gateway"], volume))
    rendered = yaml.safe_load(envoy_yaml.read_text())
    [listener] = rendered["static_resources"]["listeners"]
    # All of its own network namespace; compose publishes the port on the host's 127.0.0.1 only.
    assert listener["address"]["socket_address"] == {"address": "0.0.0.0", "port_value": config.DEFAULT_GATEWAY_PORT}
    port = config.DEFAULT_GATEWAY_PORT
    assert compose["gateway"]["ports"] == [f"127.0.0.1:{port}:{port}/tcp"]
    downstream = listener["filter_chains"][0]["transport_socket"]["typed_config"]
    assert downstream["@type"].endswith(".DownstreamTlsContext")
    [served] = downstream["common_tls_context"]["tls_certificates"]
    assert served["certificate_chain"]["filename"] == str(certs / "gateway.crt")
    clusters = {cluster["name"]: cluster for cluster in rendered["static_resources"]["clusters"]}
    assert set(clusters) == {*SERVICES, "console", "tiles"}
    # The tile server is a Unix socket the supervisor makes in a private folder beside Envoy: no TLS hop.
    tiles = clusters.pop("tiles")
    assert "transport_socket" not in tiles
    assert "pipe" in tiles["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    for name, cluster in clusters.items():
        upstream = cluster["transport_socket"]["typed_config"]
        assert upstream["@type"].endswith(".UpstreamTlsContext"), name
        validation = upstream["common_tls_context"]["validation_context"]
        assert validation["trusted_ca"]["filename"] == str(certs / "ca.crt")
        peer = "gateway" if name == "console" else name  # the console's server serves with the gateway's certificate
        assert validation["match_typed_subject_alt_names"] == [
            {"san_type": "URI", "matcher": {"exact": SPIFFE_PREFIX + peer}}
        ]
        if name in SERVICES:  # by service name, every replica the name resolves to an endpoint
            [endpoint] = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
            assert endpoint["endpoint"]["address"]["socket_address"] == {
                "address": name,
                "port_value": config.DEFAULT_PORTS[name][0],
            }
            assert cluster["type"] == "STRICT_DNS" and cluster["health_checks"], name
    # Envoy loads it, certificate files included.
    result = run(str(BIN / "envoy"), "--mode", "validate", "-c", str(envoy_yaml))
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_gateway_command_serves_https_and_the_console_and_passes_its_health_check(compose, volume):
    """`python -m gateway` as the container runs it (on a free port instead of 8080; no service is up, so only
    the gateway's own parts answer): compose's health check passes, the console answers over HTTPS through Envoy
    and its mTLS hop, and plaintext gets nothing."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # On this host's loopback, not on all of its addresses as in the container.
    env = {
        **on_this_host(compose["gateway"], volume),
        "CONSTELLATION_GATEWAY_PORT": str(port),
        "CONSTELLATION_HOST": "127.0.0.1",
    }
    process = subprocess.Popen(compose["gateway"]["command"], cwd=ROOT, env=env, stdin=subprocess.DEVNULL)
    try:
        supervisor.wait_ready(admin.socket_path(volume), timeout_s=30, process=process)
        [*check, socket_in_container, path] = compose["gateway"]["healthcheck"]["test"][1:]
        assert socket_in_container == f"{VOLUME}/{admin.SOCKET_NAME}"
        health = subprocess.run(
            [*check, str(admin.socket_path(volume)), path], env=env, capture_output=True, text=True, timeout=30
        )
        assert health.returncode == 0, health.stdout + health.stderr
        page = requests.get(
            f"https://127.0.0.1:{port}/console.json", verify=str(volume / "certs" / "ca.crt"), timeout=10
        )
        assert page.status_code == 200 and page.json()["auth"] is True
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(f"http://127.0.0.1:{port}/console.json", timeout=10)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
