"""The Open Inference Protocol (KServe V2) gRPC server for one model folder.

Tensors travel as `raw_input_contents` / `raw_output_contents` (little-endian,
row-major). ModelInfer bypasses protobuf for those payloads (see wire.py):
inputs become numpy views of the received bytes without a copy, and outputs
are written into the response with one copy. Typed `contents` are accepted
too, for clients that send them.

The model contract: the entrypoint class is built with no arguments, `load()`
(optional) runs once on a background thread while health says NOT_SERVING,
then `predict(batch)` gets a read-only array (N, bands, H, W) of the input
dtype (a view of the request bytes; copy it before changing it in place) and
returns an array (N, *shape) for the first output, or a dict naming every
output declared in constellation.yaml. predict() must be thread-safe (a
model that only reads its weights is): up to `max_parallel_batches` calls run
at once (numpy, torch and onnxruntime release the GIL, so those calls use more
cores), and requests beyond what the server admits are refused with
RESOURCE_EXHAUSTED and a retry hint (model_runtime.admission).
"""

from __future__ import annotations

import importlib
import logging
import sys
import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from inference import grpc_predict_v2_pb2 as pb
from model_runtime.admission import LOAD_HEADER, PUSHBACK_HEADER, Admission, Full, Limits, measured
from model_runtime.batching import Batcher
from model_runtime.manifest import NUMPY_DTYPES, Manifest, load_manifest
from model_runtime.memory import tune_malloc
from model_runtime.wire import ALIGN, decode_request, encode_response

log = logging.getLogger("model_runtime")

SERVER_NAME = "constellation-model-runtime"
SERVER_VERSION = "1.0.0"
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
HEALTH_SERVICES = ("", "inference.GRPCInferenceService")  # NOT_SERVING until load() returns
INPUT_NAME = "tiles"  # the one input tensor, as ModelMetadata names it
# Which typed-contents field carries each datatype.
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}


class BadRequest(Exception):
    """The request does not match the model's declared input."""


class LoadedModel:
    """The model folder's entrypoint class, loaded once, with its manifest."""

    def __init__(self, folder: Path, manifest: Manifest) -> None:
        self.folder = folder
        self.manifest = manifest
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self._instance: Any = None  # the model folder's class: nothing is known of it but predict()
        self.batcher: Batcher | None = None
        self.admission = Admission(Limits.of(manifest))

    def load(self) -> None:
        try:
            sys.path.insert(0, str(self.folder))
            loaded = sys.modules.get(self.manifest.module)
            if loaded is not None and not Path(getattr(loaded, "__file__", "/")).resolve().is_relative_to(
                self.folder.resolve()
            ):
                del sys.modules[self.manifest.module]  # same module name from another model folder (in-process tests)
            module = importlib.import_module(self.manifest.module)
            instance = getattr(module, self.manifest.class_name)()
            if hasattr(instance, "load"):
                instance.load()
            self._instance = instance
            self.batcher = Batcher(
                measured(self.admission, self.predict),
                self.manifest.max_batch_size,
                self.manifest.max_queue_delay_ms,
                self.admission.limits.max_parallel_batches,
            )
            self.ready.set()
            limits = self.admission.limits
            log.info(
                "model loaded: %s %s (at most %d predict calls at once, %d tiles admitted)",
                self.manifest.name, self.manifest.version, limits.max_parallel_batches, limits.max_queued_tiles,
            )  # fmt: skip
        except BaseException as error:  # reported through health and ModelReady
            self.error = error
            log.exception("model failed to load")

    def predict(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        result = self._instance.predict(batch)
        outputs = result if isinstance(result, dict) else {self.manifest.outputs[0].name: result}
        checked = {}
        for spec in self.manifest.outputs:
            if spec.name not in outputs:
                raise RuntimeError(f"predict() returned no output named {spec.name!r}")
            value = np.asarray(outputs[spec.name])
            if value.ndim == 0 or value.shape[0] != batch.shape[0]:
                raise RuntimeError(
                    f"predict() returned {spec.name!r} with shape {list(value.shape)} for a batch of {batch.shape[0]}"
                )
            if len(value.shape) != len(spec.shape) + 1 or any(
                d not in (-1, s) for d, s in zip(spec.shape, value.shape[1:], strict=False)
            ):
                raise RuntimeError(
                    f"predict() returned {spec.name!r} with shape {list(value.shape)}; constellation.yaml "
                    f"declares [batch, {', '.join(map(str, spec.shape))}]"
                )
            checked[spec.name] = value.astype(NUMPY_DTYPES[spec.dtype], copy=False)
        return checked


def _input_array(request: pb.ModelInferRequest, raws: list[memoryview], manifest: Manifest) -> np.ndarray:
    if len(request.inputs) != 1:
        raise BadRequest(f"send exactly one input tensor (bands × H × W tiles); got {len(request.inputs)}")
    tensor = request.inputs[0]
    if tensor.name != INPUT_NAME:
        raise BadRequest(f"input is named {tensor.name!r}; this model's input is {INPUT_NAME!r} (see ModelMetadata)")
    if len(raws) > 1:
        raise BadRequest(f"raw_input_contents has {len(raws)} entries for 1 input; send one entry per input")
    expected_dtype = manifest.dtype
    if tensor.datatype != expected_dtype:
        raise BadRequest(f"input {tensor.name!r} has datatype {tensor.datatype}; the model takes {expected_dtype}")
    shape = tuple(tensor.shape)
    declared = manifest.input_shape
    if len(shape) != 4 or min(shape) < 1 or any(d != -1 and d != s for d, s in zip(declared, shape[1:], strict=True)):
        wanted = "×".join("any" if d == -1 else str(d) for d in declared)
        raise BadRequest(
            f"input {tensor.name!r} has shape {list(shape)}; the model takes [batch, {wanted.replace('×', ', ')}]"
        )
    dtype = np.dtype(NUMPY_DTYPES[expected_dtype]).newbyteorder("<")
    count = int(np.prod(shape))
    if raws:
        raw = raws[0]
        if len(raw) != count * dtype.itemsize:
            raise BadRequest(
                f"raw_input_contents[0] holds {len(raw)} bytes; shape {list(shape)} of {expected_dtype} needs "
                f"{count * dtype.itemsize}"
            )
        array = np.frombuffer(raw, dtype=dtype).reshape(shape)  # read-only: a view of the request bytes
        if not array.flags.aligned:
            # The payload sits wherever the sender's framing put it inside the request; numpy
            # (and most native libraries) run misaligned data at a fraction of their speed, so
            # one copy into an aligned buffer is the cheaper path. Our client frames aligned
            # (wire.py), so this is for other clients' frames.
            array = array.copy()
            array.flags.writeable = False
        return array
    field = CONTENTS_FIELD.get(expected_dtype)
    if field is None:
        raise BadRequest(
            f"{expected_dtype} has no typed contents field in the protocol; send the tensor as raw_input_contents"
        )
    values = getattr(tensor.contents, field)
    if len(values) != count:
        raise BadRequest(
            f"input {tensor.name!r} carries {len(values)} values in contents; shape {list(shape)} needs {count}"
        )
    array = np.asarray(values, dtype=dtype).reshape(shape)
    array.flags.writeable = False  # the same contract as raw contents
    return array


class InferenceServicer:
    def __init__(self, model: LoadedModel) -> None:
        self.model = model

    def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.model.ready.is_set())

    def _check_model(self, name: str, version: str, context) -> None:
        manifest = self.model.manifest
        if name != manifest.name:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no model named {name!r}; this server serves {manifest.name!r}")
        if version and version != manifest.version:
            context.abort(
                grpc.StatusCode.NOT_FOUND, f"model {name!r} has no version {version!r}; it serves {manifest.version!r}"
            )

    def ModelReady(self, request, context):
        self._check_model(request.name, request.version, context)
        return pb.ModelReadyResponse(ready=self.model.ready.is_set())

    def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION, extensions=["dynamic_batching"])

    def ModelMetadata(self, request, context):
        self._check_model(request.name, request.version, context)
        manifest = self.model.manifest
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=manifest.name,
            versions=[manifest.version],
            platform="constellation_python",
            inputs=[tensor(name=INPUT_NAME, datatype=manifest.dtype, shape=[-1, *manifest.input_shape])],
            outputs=[tensor(name=o.name, datatype=o.dtype, shape=[-1, *o.shape]) for o in manifest.outputs],
        )

    def ModelInfer(self, message, context):
        """`message` is (request without its raw payloads, views of them); see wire.py."""
        request, raws = message
        self._check_model(request.model_name, request.model_version, context)
        if not self.model.ready.is_set():
            context.abort(
                grpc.StatusCode.UNAVAILABLE,
                "the model is still loading" if self.model.error is None else "the model failed to load",
            )
        spec = {o.name: o for o in self.model.manifest.outputs}
        wanted = [o.name for o in request.outputs] or list(spec)
        unknown = [n for n in wanted if n not in spec]
        if unknown:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"unknown output(s) {', '.join(map(repr, unknown))}; the model has {', '.join(map(repr, spec))}",
            )
        try:
            batch = _input_array(request, raws, self.model.manifest)
        except BadRequest as error:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        try:
            with self.model.admission.admit(batch.shape[0]):
                outputs = self.model.batcher.infer(batch)
        except Full as full:  # the client waits the hint and tries again (clients.inference does)
            context.set_trailing_metadata(((PUSHBACK_HEADER, str(full.retry_after_ms)),))
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(full))
        except Exception as error:  # a model bug: INTERNAL with a short reason, details in the log
            log.exception("predict failed")
            context.abort(grpc.StatusCode.INTERNAL, f"predict failed: {type(error).__name__}: {str(error)[:200]}")
        response = pb.ModelInferResponse(
            model_name=self.model.manifest.name, model_version=self.model.manifest.version, id=request.id
        )
        payloads = []
        for name in wanted:
            value = np.ascontiguousarray(outputs[name], dtype=outputs[name].dtype.newbyteorder("<"))
            response.outputs.add(name=name, datatype=spec[name].dtype, shape=value.shape)
            payloads.append(memoryview(value).cast("B"))
        return response, payloads


class LoadReportingHealth(health.HealthServicer):
    """gRPC health, with the server's load (admission.Load) on each Check's trailers for hosting's monitor."""

    def __init__(self, admission: Admission) -> None:
        super().__init__()
        self._admission = admission

    def Check(self, request, context):
        context.set_trailing_metadata(((LOAD_HEADER, self._admission.load().header()),))
        return super().Check(request, context)


def inference_handler(servicer: InferenceServicer) -> grpc.GenericRpcHandler:
    """The generated handlers, except that ModelInfer frames its tensors itself."""
    handlers = {}
    for method in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
        behaviour = getattr(servicer, method.name)
        if method.name == "ModelInfer":
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                behaviour,
                request_deserializer=decode_request,
                response_serializer=lambda reply: encode_response(reply[0], reply[1], align=ALIGN),
            )
        else:
            request_type = getattr(pb, method.input_type.name)
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                behaviour,
                request_deserializer=request_type.FromString,
                response_serializer=lambda reply: reply.SerializeToString(),
            )
    return grpc.method_handlers_generic_handler("inference.GRPCInferenceService", handlers)


@dataclass(frozen=True)
class ServerTls:
    """PEM files to serve with: the endpoint's key pair, and the CA its clients' certificates must come from (mTLS;
    without one, any client may connect over TLS)."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def credentials(self) -> grpc.ServerCredentials:
        ca = self.client_ca.read_bytes() if self.client_ca else None
        return grpc.ssl_server_credentials(
            [(self.key.read_bytes(), self.cert.read_bytes())], root_certificates=ca, require_client_auth=ca is not None
        )


class ModelServer:
    def __init__(
        self,
        model_dir: Path,
        host: str = "127.0.0.1",
        port: int = 8001,
        workers: int = 16,
        tls: ServerTls | None = None,
    ) -> None:
        tune_malloc()
        self.model = LoadedModel(model_dir, load_manifest(model_dir))
        options = [
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ]
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="infer"), options=options
        )
        self.server.add_generic_rpc_handlers((inference_handler(InferenceServicer(self.model)),))
        self.health = LoadReportingHealth(self.model.admission)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        for service in HEALTH_SERVICES:
            self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.on_load_failure: Callable[[], None] | None = None  # e.g. the CLI exits
        # host "unix:/path" listens on a Unix socket (hosting's confined local processes have no network)
        address = host if host.startswith("unix:") else f"{host}:{port}"
        try:
            if tls is not None:
                self.port = self.server.add_secure_port(address, tls.credentials())
            else:
                self.port = self.server.add_insecure_port(address)
        except RuntimeError as error:  # grpcio raises RuntimeError("Failed to bind ...")
            raise OSError(f"could not bind {address}: {error}") from None
        if self.port == 0:
            raise OSError(f"could not bind {address}")

    def start(self) -> int:
        self.server.start()

        def load() -> None:
            self.model.load()
            if self.model.ready.is_set():
                for service in HEALTH_SERVICES:
                    self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
            elif self.on_load_failure is not None:
                self.on_load_failure()

        threading.Thread(target=load, name="load", daemon=True).start()
        return self.port

    def stop(self, grace: float = 5.0) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        if self.model.batcher is not None:
            self.model.batcher.close()
