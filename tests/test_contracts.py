"""Contracts and configuration: buf lint, generated code freshness, the upstream KServe V2 wire format,
Envoy's config, compose.yaml."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from inference import grpc_predict_v2_pb2 as v2

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
