"""The model runtime: a real KServe V2 gRPC server around a model folder."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from inference import grpc_predict_v2_pb2 as pb
from inference import grpc_predict_v2_pb2_grpc as pb_grpc
from mesh.services import channel_options
from model_runtime.manifest import ManifestError, load_manifest
from model_runtime.server import ModelServer
from tests.conftest import rpc_error

ROOT = Path(__file__).resolve().parent.parent
NDWI = ROOT / "examples" / "models" / "ndwi-water"


def in_process_ndwi():
    """The sample model loaded straight from its file, the way predict() runs without a server."""
    spec = importlib.util.spec_from_file_location("ndwi_in_process", NDWI / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.NdwiWater()
    model.load()
    return model


def ndwi_probability(tiles: np.ndarray) -> np.ndarray:
    green, nir = tiles[:, 0:1], tiles[:, 1:2]
    return (1 / (1 + np.exp(-10 * (green - nir) / (green + nir)))).astype(np.float32)


def serve(folder: Path):
    server = ModelServer(folder, port=0)
    port = server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=channel_options(1 << 28))
    return server, channel, port


def wait_ready(stub, name: str, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not stub.ModelReady(pb.ModelReadyRequest(name=name)).ready:
        assert time.monotonic() < deadline, "model never became ready"
        time.sleep(0.02)


@pytest.fixture
def ndwi():
    server, channel, port = serve(NDWI)
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    wait_ready(stub, "ndwi-water")
    yield stub, port
    channel.close()
    server.stop(0)


def infer_request(
    tiles: np.ndarray, *, raw: bool = True, name: str = "ndwi-water", datatype: str = "FP32", input_name: str = "tiles"
) -> pb.ModelInferRequest:
    tensor = pb.ModelInferRequest.InferInputTensor(name=input_name, datatype=datatype, shape=tiles.shape)
    request = pb.ModelInferRequest(model_name=name, id="req-1", inputs=[tensor])
    if raw:
        request.raw_input_contents.append(tiles.tobytes())
    else:
        request.inputs[0].contents.fp32_contents.extend(tiles.ravel().tolist())
    return request


def output(response: pb.ModelInferResponse, index: int = 0) -> np.ndarray:
    return np.frombuffer(response.raw_output_contents[index], dtype=np.float32).reshape(response.outputs[index].shape)


def write_model(folder: Path, code: str, **manifest) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.py").write_text(textwrap.dedent(code))
    data = {
        "name": "test-model",
        "version": "0.1.0",
        "task": "segmentation",
        "entrypoint": "model:Model",
        "input": {"bands": ["red"], "tile_size_px": 4, "dtype": "FP32", "value_range": [0, 1]},
        "outputs": [{"name": "out", "dtype": "FP32", "shape": [1, 4, 4]}],
    }
    data.update(manifest)
    (folder / "constellation.yaml").write_text(yaml.safe_dump(data))
    return folder


def test_infer_with_raw_and_typed_contents_matches_numpy(ndwi):
    stub, _ = ndwi
    tiles = np.random.default_rng(1).uniform(0.01, 0.6, size=(3, 2, 256, 256)).astype(np.float32)
    raw = stub.ModelInfer(infer_request(tiles))
    assert raw.id == "req-1" and raw.model_version == "1.0.0"
    assert raw.outputs[0].name == "water_probability" and list(raw.outputs[0].shape) == [3, 1, 256, 256]
    np.testing.assert_allclose(output(raw), ndwi_probability(tiles), rtol=1e-5, atol=1e-6)
    model = in_process_ndwi()
    np.testing.assert_array_equal(output(raw), model.predict(tiles))
    small = tiles[:1]
    typed = stub.ModelInfer(infer_request(small, raw=False))
    np.testing.assert_array_equal(output(typed), model.predict(small))


def test_metadata_and_liveness(ndwi):
    stub, _ = ndwi
    assert stub.ServerLive(pb.ServerLiveRequest()).live and stub.ServerReady(pb.ServerReadyRequest()).ready
    metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name="ndwi-water"))
    assert list(metadata.versions) == ["1.0.0"]
    assert (metadata.inputs[0].datatype, list(metadata.inputs[0].shape)) == ("FP32", [-1, 2, 256, 256])
    assert (metadata.outputs[0].name, list(metadata.outputs[0].shape)) == ("water_probability", [-1, 1, 256, 256])
    assert (metadata.inputs[0].name, metadata.platform) == ("tiles", "constellation_python")
    assert rpc_error(stub.ModelMetadata, pb.ModelMetadataRequest(name="other")).code() == grpc.StatusCode.NOT_FOUND
    assert (
        rpc_error(stub.ModelMetadata, pb.ModelMetadataRequest(name="ndwi-water", version="9")).code()
        == grpc.StatusCode.NOT_FOUND
    )
    server = stub.ServerMetadata(pb.ServerMetadataRequest())
    assert server.name == "constellation-model-runtime" and server.version


@pytest.mark.parametrize(
    ("tiles", "kwargs", "words"),
    [
        (np.zeros((1, 3, 256, 256), np.float32), {}, "shape [1, 3, 256, 256]"),
        (np.zeros((1, 2, 128, 128), np.float32), {}, "the model takes [batch, 2, 256, 256]"),
        (np.zeros((1, 2, 256, 256), np.float32), {"datatype": "FP64"}, "datatype FP64"),
        (
            np.zeros((1, 2, 256, 256), np.float32),
            {"input_name": "image"},
            "input is named 'image'; this model's input is 'tiles'",
        ),
        (np.zeros((0, 2, 256, 256), np.float32), {}, "shape [0, 2, 256, 256]"),
    ],
)
def test_bad_inputs_are_invalid_argument_with_the_reason(ndwi, tiles, kwargs, words):
    stub, _ = ndwi
    error = rpc_error(stub.ModelInfer, infer_request(tiles, **kwargs))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and words in error.details()


def test_truncated_raw_contents_and_unknown_model(ndwi):
    stub, _ = ndwi
    request = infer_request(np.zeros((1, 2, 256, 256), np.float32))
    request.raw_input_contents[0] = request.raw_input_contents[0][:100]
    error = rpc_error(stub.ModelInfer, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "100 bytes" in error.details()
    assert (
        rpc_error(stub.ModelInfer, infer_request(np.zeros((1, 2, 256, 256), np.float32), name="nope")).code()
        == grpc.StatusCode.NOT_FOUND
    )


def test_unknown_requested_output_and_extra_raw_contents_are_invalid_argument(ndwi):
    stub, _ = ndwi
    request = infer_request(np.zeros((1, 2, 256, 256), np.float32))
    request.outputs.add(name="cloud_mask")
    error = rpc_error(stub.ModelInfer, request)
    assert (
        error.code() == grpc.StatusCode.INVALID_ARGUMENT
        and "'cloud_mask'" in error.details()
        and "'water_probability'" in error.details()
    )
    request = infer_request(np.zeros((1, 2, 256, 256), np.float32))
    request.raw_input_contents.append(b"\0" * 16)
    error = rpc_error(stub.ModelInfer, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "2 entries for 1 input" in error.details()


def test_typed_contents_for_a_datatype_without_a_contents_field_say_to_send_raw(tmp_path):
    folder = write_model(
        tmp_path / "half",
        "class Model:\n    def predict(self, batch):\n        return batch\n",
        input={"bands": ["red"], "tile_size_px": 4, "dtype": "FP16"},
        outputs=[{"name": "out", "dtype": "FP16", "shape": [1, 4, 4]}],
    )
    server, channel, _ = serve(folder)
    try:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        wait_ready(stub, "test-model")
        tiles = np.ones((1, 1, 4, 4), np.float16)
        error = rpc_error(stub.ModelInfer, infer_request(tiles, raw=False, name="test-model", datatype="FP16"))
        assert (
            error.code() == grpc.StatusCode.INVALID_ARGUMENT
            and "send the tensor as raw_input_contents" in error.details()
        )
        response = stub.ModelInfer(infer_request(tiles, name="test-model", datatype="FP16"))
        assert response.outputs[0].datatype == "FP16" and response.raw_output_contents[0] == tiles.tobytes()
    finally:
        channel.close()
        server.stop(0)


def test_requests_over_8_mib_work(ndwi):
    stub, _ = ndwi
    tiles = np.random.default_rng(2).uniform(0.01, 0.6, size=(20, 2, 256, 256)).astype(np.float32)  # 10 MiB
    assert tiles.nbytes > 8 * 1024 * 1024
    np.testing.assert_allclose(
        output(stub.ModelInfer(infer_request(tiles))), ndwi_probability(tiles), rtol=1e-5, atol=1e-6
    )


def test_health_is_not_serving_until_the_model_has_loaded(tmp_path):
    folder = write_model(
        tmp_path / "slow",
        """
        import time
        import numpy as np
        class Model:
            def load(self):
                time.sleep(1.0)
            def predict(self, batch):
                return batch
        """,
    )
    server, channel, _ = serve(folder)
    try:
        health = health_pb2_grpc.HealthStub(channel)
        named = health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService")
        assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert health.Check(named).status == health_pb2.HealthCheckResponse.NOT_SERVING
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert not stub.ModelReady(pb.ModelReadyRequest(name="test-model")).ready
        loading = rpc_error(stub.ModelInfer, infer_request(np.zeros((1, 1, 4, 4), np.float32), name="test-model"))
        assert loading.code() == grpc.StatusCode.UNAVAILABLE and "loading" in loading.details()
        wait_ready(stub, "test-model")
        assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
        assert health.Check(named).status == health_pb2.HealthCheckResponse.SERVING
    finally:
        channel.close()
        server.stop(0)


def test_a_failing_predict_is_internal_without_a_traceback(tmp_path):
    folder = write_model(
        tmp_path / "broken",
        """
        class Model:
            def predict(self, batch):
                raise ValueError("weights are corrupt")
        """,
    )
    server, channel, _ = serve(folder)
    try:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        wait_ready(stub, "test-model")
        error = rpc_error(stub.ModelInfer, infer_request(np.zeros((1, 1, 4, 4), np.float32), name="test-model"))
        assert error.code() == grpc.StatusCode.INTERNAL
        assert "weights are corrupt" in error.details() and "Traceback" not in error.details()
    finally:
        channel.close()
        server.stop(0)


def test_concurrent_small_requests_are_batched_into_one_predict(tmp_path):
    folder = write_model(
        tmp_path / "recording",
        """
        import time
        SEEN = []
        class Model:
            def predict(self, batch):
                SEEN.append(batch.shape[0])
                time.sleep(0.05)
                return batch * 2
        """,
        batching={"max_batch_size": 8, "max_queue_delay_ms": 200},
    )
    server, channel, _ = serve(folder)
    try:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        wait_ready(stub, "test-model")
        results: dict[int, np.ndarray] = {}

        def call(i: int) -> None:
            tile = np.full((1, 1, 4, 4), float(i), np.float32)
            results[i] = output(stub.ModelInfer(infer_request(tile, name="test-model")))

        threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seen = sys.modules[type(server.model._instance).__module__].SEEN
        assert sum(seen) == 8 and max(seen) > 1 and len(seen) < 8, seen
        for i, value in results.items():  # every caller got its own slice back
            assert np.all(value == 2 * i)
    finally:
        channel.close()
        server.stop(0)


def test_a_predict_returning_the_wrong_shape_is_internal_and_names_it(tmp_path):
    folder = write_model(
        tmp_path / "wrong", "class Model:\n    def predict(self, batch):\n        return batch[:, :, :2]\n"
    )
    server, channel, _ = serve(folder)
    try:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        wait_ready(stub, "test-model")
        error = rpc_error(stub.ModelInfer, infer_request(np.zeros((1, 1, 4, 4), np.float32), name="test-model"))
        assert (
            error.code() == grpc.StatusCode.INTERNAL
            and "'out' with shape [1, 1, 2, 4]" in error.details()
            and "[batch, 1, 4, 4]" in error.details()
        )
    finally:
        channel.close()
        server.stop(0)


RECORDING_MODEL = """
import time
SEEN = []
WRITABLE = []
class Model:
    def predict(self, batch):
        SEEN.append(batch.shape[0])
        WRITABLE.append(batch.flags.writeable)
        time.sleep(0.05)
        return batch * 2
"""


def recorded(server, name: str) -> list:
    return getattr(sys.modules[type(server.model._instance).__module__], name)


def concurrently(calls: list) -> float:
    threads = [threading.Thread(target=call) for call in calls]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start


def test_a_full_batch_does_not_wait_for_the_queue_delay(tmp_path):
    folder = write_model(tmp_path / "full", RECORDING_MODEL, batching={"max_batch_size": 4, "max_queue_delay_ms": 1000})
    server, channel, _ = serve(folder)
    try:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        wait_ready(stub, "test-model")
        start = time.perf_counter()
        stub.ModelInfer(
            infer_request(np.ones((4, 1, 4, 4), np.float32), name="test-model")
        )  # one request that fills a batch
        assert time.perf_counter() - start < 0.5
        tile = infer_request(np.ones((1, 1, 4, 4), np.float32), name="test-model")
        elapsed = concurrently([lambda: stub.ModelInfer(tile)] * 4)  # four that fill one together
        assert recorded(server, "SEEN") == [4, 4] and elapsed < 0.5, (recorded(server, "SEEN"), elapsed)
    finally:
        channel.close()
        server.stop(0)


def test_a_request_larger_than_max_batch_size_runs_in_chunks(tmp_path):
    folder = write_model(tmp_path / "chunks", RECORDING_MODEL, batching={"max_batch_size": 4, "max_queue_delay_ms": 0})
    server, channel, _ = serve(folder)
    try:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        wait_ready(stub, "test-model")
        tiles = np.arange(10 * 16, dtype=np.float32).reshape(10, 1, 4, 4)
        np.testing.assert_array_equal(output(stub.ModelInfer(infer_request(tiles, name="test-model"))), tiles * 2)
        assert recorded(server, "SEEN") == [4, 4, 2]
    finally:
        channel.close()
        server.stop(0)


def test_predict_always_gets_a_read_only_batch(tmp_path):
    folder = write_model(
        tmp_path / "readonly", RECORDING_MODEL, batching={"max_batch_size": 8, "max_queue_delay_ms": 100}
    )
    server, channel, _ = serve(folder)
    try:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        wait_ready(stub, "test-model")
        tile = np.ones((1, 1, 4, 4), np.float32)
        stub.ModelInfer(infer_request(tile, name="test-model"))  # raw contents, alone
        stub.ModelInfer(infer_request(tile, raw=False, name="test-model"))  # typed contents
        concurrently([lambda: stub.ModelInfer(infer_request(tile, name="test-model"))] * 4)  # merged
        assert max(recorded(server, "SEEN")) > 1 and not any(recorded(server, "WRITABLE"))
    finally:
        channel.close()
        server.stop(0)


def test_tritonclient_gets_correct_metadata_and_results(ndwi):
    _, port = ndwi
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "helpers" / "triton_check.py"), f"127.0.0.1:{port}", "ndwi-water"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["live"] and seen["ready"]
    metadata = seen["metadata"]  # tritonclient's as_json: protobuf JSON, int64 dims as strings
    assert metadata["name"] == "ndwi-water" and metadata["versions"] == ["1.0.0"]
    assert metadata["inputs"] == [{"name": "tiles", "datatype": "FP32", "shape": ["-1", "2", "256", "256"]}]
    assert metadata["outputs"] == [
        {"name": "water_probability", "datatype": "FP32", "shape": ["-1", "1", "256", "256"]}
    ]
    assert seen["shape"] == [4, 1, 256, 256] and seen["dtype"] == "float32"
    assert seen["agrees_with_numpy_ndwi"] and seen["max_abs_error"] < 1e-5


def test_the_sample_manifest_is_valid():
    manifest = load_manifest(NDWI)
    assert manifest.bands == ("green", "nir") and manifest.input_shape == (2, 256, 256)
    example = np.load(NDWI / manifest.example_input)
    assert example.shape[1:] == manifest.input_shape and example.dtype == np.float32


BASE = {
    "name": "m",
    "version": "1.0",
    "task": "segmentation",
    "entrypoint": "model:Model",
    "input": {"bands": ["green"], "tile_size_px": 8, "dtype": "FP32", "value_range": [0, 1]},
    "outputs": [{"name": "out", "dtype": "FP32", "shape": [1, 8, 8]}],
}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"name": "Has Caps"}, "name"),
        ({"task": "painting"}, "task"),
        ({"entrypoint": "model"}, "entrypoint"),
        ({"entrypoint": "missing:Model"}, "entrypoint"),
        ({"entrypoint": "..evil:Model"}, "entrypoint"),
        ({"input": {"bands": [], "dtype": "FP32"}}, "input.bands"),
        ({"input": {"bands": ["green"], "dtype": "float"}}, "input.dtype"),
        ({"outputs": [{"name": "out", "dtype": "FP32", "shape": [0]}]}, "outputs[0].shape"),
        ({"requirements": ["numpy>=1.26", "--index-url https://evil.example/simple"]}, "requirements[1]"),
        ({"requirements": ["../wheels/numpy.whl"]}, "requirements[0]"),
        ({"requirements": ["numpy @ https://example.org/numpy.whl"]}, "requirements[0]"),
        ({"requirements": ["-e ."]}, "requirements[0]"),
        ({"requirements": ["numpy>>1"]}, "requirements[0]"),
        ({"example_input": "../../etc/passwd"}, "example_input"),
        ({"resources": {"memory": "lots"}}, "resources.memory"),
        ({"colour": "blue"}, "colour"),
        ({"version": None}, "version"),
        ({"requirements": ["numpy-2.0-py3-none-any.whl"]}, "requirements[0]"),
        ({"requirements": ["mypkg.tar.gz"]}, "requirements[0]"),
        ({"requirements": ["git+https://github.com/x/y"]}, "requirements[0]"),
        ({"requirements": ["/opt/wheels/numpy"]}, "requirements[0]"),
        ({"requirements": ["file:numpy"]}, "requirements[0]"),
        ({"requirements": ["-r other.txt"]}, "requirements[0]"),
        ({"requirements": ["numpy==2.0 --hash=sha256:00"]}, "requirements[0]"),
        ({"requirements": [3]}, "requirements[0]"),
        ({"requirements": "numpy"}, "requirements"),
        ({"input": {"bands": ["green"], "dtype": "FP32", "tile_size_px": True}}, "input.tile_size_px"),
        ({"input": {"bands": ["green"], "dtype": "FP32", "tile_sise_px": 8}}, "input.tile_sise_px"),
        ({"batching": {"max_batch_sise": 8}}, "batching.max_batch_sise"),
        ({"batching": [8]}, "batching"),
    ],
)
def test_bad_manifests_name_the_field(tmp_path, change, field):
    (tmp_path / "model.py").write_text("class Model: pass\n")
    (tmp_path / "constellation.yaml").write_text(yaml.safe_dump({**BASE, **change}))
    with pytest.raises(ManifestError) as raised:
        load_manifest(tmp_path)
    assert field in [p.field for p in raised.value.problems], raised.value.problems


def test_every_problem_is_reported_at_once_with_its_field(tmp_path):
    (tmp_path / "constellation.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "Bad Name",
                "version": "",
                "task": "painting",
                "entrypoint": "/abs/model:Model",
                "input": {"bands": ["green", "green"], "tile_size_px": -1, "dtype": "float", "value_range": [1, 0]},
                "outputs": [
                    {"name": "a", "dtype": "FP32", "shape": [1]},
                    {"name": "a", "dtype": "XX", "shape": [0], "colour": 1},
                ],
                "requirements": ["numpy>=1.26", "--extra-index-url https://evil.example"],
                "example_input": "/etc/passwd",
                "resources": {"cpu": 0, "memory": "lots", "gpu": 0.5},
                "batching": {"max_batch_size": 0, "max_queue_delay_ms": -1},
            }
        )
    )
    with pytest.raises(ManifestError) as raised:
        load_manifest(tmp_path)
    fields = [p.field for p in raised.value.problems]
    assert sorted(fields) == sorted(
        [
            "name",
            "version",
            "task",
            "entrypoint",
            "input.bands",
            "input.tile_size_px",
            "input.dtype",
            "input.value_range",
            "outputs[1].name",
            "outputs[1].dtype",
            "outputs[1].shape",
            "outputs[1].colour",
            "requirements[1]",
            "example_input",
            "resources.cpu",
            "resources.memory",
            "resources.gpu",
            "batching.max_batch_size",
            "batching.max_queue_delay_ms",
        ]
    )
    assert all(p.description for p in raised.value.problems)
    assert "requirements[1]: '--extra-index-url https://evil.example' is a pip option" in str(raised.value)


def test_manifest_module_imports_without_grpc():
    code = (
        "import sys; import model_runtime.manifest; assert not [m for m in sys.modules if "
        "m.startswith(('grpc', 'inference', 'numpy'))]"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=30)


def test_entrypoint_symlink_out_of_the_folder_is_rejected(tmp_path):
    outside = tmp_path / "outside.py"
    outside.write_text("class Model: pass\n")
    folder = tmp_path / "model-folder"
    folder.mkdir()
    (folder / "model.py").symlink_to(outside)
    (folder / "constellation.yaml").write_text(yaml.safe_dump(BASE))
    with pytest.raises(ManifestError) as raised:
        load_manifest(folder)
    assert [p.field for p in raised.value.problems] == ["entrypoint"]
    shutil.rmtree(folder)


def test_zero_copy_framing_is_byte_identical_to_protobuf():
    from model_runtime import wire

    tiles = np.arange(2 * 2 * 4 * 4, dtype=np.float32).reshape(2, 2, 4, 4)
    request = infer_request(tiles)
    head = pb.ModelInferRequest()
    head.CopyFrom(request)
    del head.raw_input_contents[:]
    framed = wire.encode_request(head, [memoryview(tiles).cast("B")])
    assert framed == request.SerializeToString()
    decoded, raws = wire.decode_request(framed)
    assert decoded == head and bytes(raws[0]) == tiles.tobytes()
    response = pb.ModelInferResponse(
        model_name="m", outputs=[pb.ModelInferResponse.InferOutputTensor(name="o", datatype="FP32", shape=[2])]
    )
    response.raw_output_contents.append(b"\x00\x00\x80?\x00\x00\x00@")
    head_only = pb.ModelInferResponse()
    head_only.CopyFrom(response)
    del head_only.raw_output_contents[:]
    assert wire.encode_response(head_only, [b"\x00\x00\x80?\x00\x00\x00@"]) == response.SerializeToString()
    assert bytes(wire.decode_response(response.SerializeToString())[1][0]) == b"\x00\x00\x80?\x00\x00\x00@"


@pytest.mark.parametrize("name_length", range(0, 40))
def test_aligned_framing_puts_every_payload_on_16_bytes_and_parses_as_the_same_message(name_length):
    from model_runtime import wire

    tiles = np.arange(2 * 3 * 5, dtype=np.float32).reshape(2, 3, 5)
    request = pb.ModelInferRequest(
        model_name="m" * name_length,
        inputs=[pb.ModelInferRequest.InferInputTensor(name="tiles", datatype="FP32", shape=tiles.shape)],
    )
    payloads = [memoryview(tiles).cast("B"), memoryview(tiles[:1]).cast("B")]
    frame = wire.encode_request(request, payloads, align=16)
    parsed = pb.ModelInferRequest.FromString(frame)  # upstream protobuf skips the padding as an unknown field
    parsed.DiscardUnknownFields()
    expected = pb.ModelInferRequest()
    expected.CopyFrom(request)
    expected.raw_input_contents.extend([tiles.tobytes(), tiles[:1].tobytes()])
    assert parsed == expected
    head, raws = wire.decode_request(frame)
    start = np.frombuffer(frame, np.uint8).ctypes.data
    assert head == request and [bytes(r) for r in raws] == [tiles.tobytes(), tiles[:1].tobytes()]
    assert [(np.frombuffer(r, np.uint8).ctypes.data - start) % 16 for r in raws] == [0, 0]


def test_our_clients_tiles_reach_predict_without_a_copy_and_others_get_an_aligned_copy(tmp_path):
    from clients.inference import InferenceClient

    folder = write_model(
        tmp_path / "zerocopy",
        """
        import numpy as np
        SEEN = []
        class Model:
            def predict(self, batch):
                owner = batch
                while isinstance(owner, np.ndarray) and owner.base is not None:
                    owner = owner.base
                SEEN.append((type(owner).__name__, batch.flags.aligned, batch.ctypes.data % 16))
                return batch.copy()
        """,
    )
    server, channel, port = serve(folder)
    try:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        wait_ready(stub, "test-model")
        tiles = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
        with InferenceClient(f"127.0.0.1:{port}") as client:
            np.testing.assert_array_equal(client.infer("test-model", tiles)["out"], tiles)
        # protobuf's own framing, with an id whose length leaves the payload misaligned
        request = infer_request(tiles, name="test-model")
        while request.SerializeToString().index(tiles.tobytes()) % 4 == 0:
            request.id += "x"
        np.testing.assert_array_equal(output(stub.ModelInfer(request)), tiles)
        seen = recorded(server, "SEEN")
        assert seen[0] == ("memoryview", True, 0)  # a view of the received bytes
        assert seen[1][:2] == ("ndarray", True)  # copied to an aligned buffer it owns
    finally:
        channel.close()
        server.stop(0)


def test_our_client_gets_the_same_numbers(ndwi):
    from clients.inference import InferenceClient

    _, port = ndwi
    tiles = np.random.default_rng(5).uniform(0.01, 0.6, size=(4, 2, 256, 256)).astype(np.float32)
    with InferenceClient(f"127.0.0.1:{port}") as client:
        outputs = client.infer("ndwi-water", tiles)
    np.testing.assert_allclose(outputs["water_probability"], ndwi_probability(tiles), rtol=1e-5, atol=1e-6)
