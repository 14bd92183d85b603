"""The mesh's one Open Inference Protocol (KServe V2) gRPC client, for numpy tiles.

    with InferenceClient("127.0.0.1:8001") as client:
        outputs = client.infer("ndwi-water", tiles)    # {"water_probability": ndarray}

    with InferenceClient(endpoints, "ndwi-water", output_name="water_probability") as client:
        client.describe()                              # learns the input's name, checks the output
        for key, raw, datatype, shape in client.run(batches, max_concurrency=8): ...

Hosting (readiness, smoke test, health), the orchestrator's model step, the
SDK, the benches and the tests all use it. Tiles travel as one
`raw_input_contents` tensor per request (little-endian, row-major,
batch x bands x size x size) and come back as `raw_output_contents`. The
tensor bytes skip protobuf's Python copies: the request is framed with
model_runtime.wire (the bytes protobuf would write, the payload copied once
and 16-byte aligned for the server's numpy) and the answer's payload is a
view of the received buffer. Any V2 server reads these frames. Requests go
round-robin over the endpoints, at most `max_concurrency` in flight, using
gRPC's own futures (no thread per request); `run` can wait and retry
transient failures itself, adapting how many requests it keeps in flight to
what the endpoints accept. While requests are in flight
the caller's next batch is read, so reading tiles overlaps inference.

Errors are sorted into transient (the endpoint is down, overloaded or slow:
worth retrying) and permanent (the endpoint rejects the request: retrying
cannot help); both carry the endpoint's own message.
"""

from __future__ import annotations

import heapq
import itertools
import queue
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, overload

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from inference import grpc_predict_v2_pb2 as v2
from inference import grpc_predict_v2_pb2_grpc as v2_grpc
from mesh.services import channel_options
from model_runtime import wire
from model_runtime.admission import LOAD_HEADER, PUSHBACK_HEADER, Load  # the server's load and retry hint
from model_runtime.manifest import NUMPY_DTYPES

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"

TRANSIENT_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
    }
)
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
RETRY_FIRST_S, RETRY_MAX_S = 0.2, 5.0  # run(): backoff of a transient failure without a server hint
POLL_S = 0.1  # how often a waiting caller wakes up (so signals such as a cancel are handled promptly)
# numpy dtype name -> V2 datatype ("float32" -> "FP32")
DATATYPES = {np.dtype(v).name: k for k, v in NUMPY_DTYPES.items()}


def options() -> list[tuple[str, int]]:
    """Channel options for a model endpoint: large messages, and quick reconnects to a restarted replica."""
    return [
        *channel_options(MAX_MESSAGE_BYTES),
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.min_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 2000),
    ]


def _numpy_dtype(datatype: str) -> np.dtype:
    return np.dtype(NUMPY_DTYPES[datatype]).newbyteorder("<")


class EndpointError(Exception):
    def __init__(
        self, endpoint: str, code: grpc.StatusCode | None, details: str, *, transient: bool, retry_after_s: float = 0.0
    ) -> None:
        self.endpoint, self.code, self.details, self.transient = endpoint, code, details, transient
        self.retry_after_s = retry_after_s  # the server's hint, 0 when it gave none
        name = code.name if code is not None else "ERROR"
        super().__init__(f"model endpoint {endpoint} answered {name}: {details}")


def is_transient(code: grpc.StatusCode | None, details: str) -> bool:
    if code in TRANSIENT_CODES:
        return True
    # A server killed mid-request can surface as a reset stream rather than UNAVAILABLE.
    lowered = details.lower()
    return code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN) and any(
        marker in lowered for marker in ("rst_stream", "socket closed", "connection reset", "stream removed")
    )


def _error(endpoint: str, error: grpc.RpcError) -> EndpointError:
    code = error.code() if hasattr(error, "code") else None
    details = (error.details() if hasattr(error, "details") else str(error)) or ""
    hint = 0.0
    for name, value in (error.trailing_metadata() if hasattr(error, "trailing_metadata") else None) or ():
        if name == PUSHBACK_HEADER:
            try:
                hint = min(RETRY_MAX_S, max(0.0, int(value) / 1000))
            except (TypeError, ValueError):
                pass  # not a number of milliseconds: the client's own backoff
    return EndpointError(endpoint, code, details, transient=is_transient(code, details), retry_after_s=hint)


class InferenceClient:
    """A client of one model's endpoints (or of any model on one endpoint, through `infer(model, tiles)`)."""

    def __init__(
        self,
        endpoints: str | Sequence[str],
        model_name: str = "",
        model_version: str = "",
        *,
        input_dtype: str = "FP32",
        output_name: str = "",
        timeout_s: float = 60.0,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        """`credentials`: TLS to endpoints that serve it (model_runtime --tls-cert; e.g.
        `mesh.tls.TlsFiles(folder, "orchestrator").channel_credentials()` for mTLS); None: plaintext."""
        endpoints = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        if not endpoints:
            raise ValueError("at least one endpoint")
        self.model_name, self.model_version = model_name, model_version
        self.input_dtype, self.output_name, self.timeout_s = input_dtype, output_name, timeout_s
        self._endpoints = endpoints
        self._channels = [
            grpc.secure_channel(e, credentials, options=options())
            if credentials is not None
            else grpc.insecure_channel(e, options=options())
            for e in self._endpoints
        ]
        self._stubs = [v2_grpc.GRPCInferenceServiceStub(c) for c in self._channels]
        self._infer = [
            c.unary_unary(MODEL_INFER, request_serializer=bytes, response_deserializer=wire.decode_response)
            for c in self._channels
        ]
        self._next = itertools.cycle(range(len(self._stubs)))
        self.input_name = "input"

    def close(self) -> None:
        for channel in self._channels:
            channel.close()

    def __enter__(self) -> InferenceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Readiness and health (the first endpoint)

    def ready(self, timeout_s: float = 1.0) -> bool:
        """Whether the first endpoint says ModelReady for the client's model."""
        try:
            request = v2.ModelReadyRequest(name=self.model_name, version=self.model_version)
            return bool(self._stubs[0].ModelReady(request, timeout=timeout_s).ready)
        except grpc.RpcError:
            return False

    def wait_ready(self, timeout_s: float, alive: Callable[[], bool] = lambda: True) -> None:
        """Until the first endpoint says ModelReady; raises TimeoutError, or RuntimeError once `alive()` is false."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.ready():
                return
            if not alive():
                raise RuntimeError("the model server exited")
            time.sleep(0.1)
        raise TimeoutError(f"not ready after {timeout_s:.0f}s")

    def serving(self, timeout_s: float = 1.0) -> bool:
        """Whether the first endpoint's gRPC health service answers SERVING."""
        return self.health(timeout_s)[0]

    def health(self, timeout_s: float = 1.0) -> tuple[bool, Load | None]:
        """Whether the first endpoint answers SERVING, and the load it reports with it (None when it reports
        none; see model_runtime.admission.Load)."""
        try:
            reply, call = health_pb2_grpc.HealthStub(self._channels[0]).Check.with_call(
                health_pb2.HealthCheckRequest(), timeout=timeout_s
            )
        except grpc.RpcError:
            return False, None
        trailers = dict(call.trailing_metadata() or ())
        load = Load.parse(str(trailers.get(LOAD_HEADER, "")))
        return reply.status == health_pb2.HealthCheckResponse.SERVING, load

    def describe(self) -> v2.ModelMetadataResponse:
        """The model's metadata from the first endpoint; learns the input tensor's name and checks the output."""
        endpoint = self._endpoints[0]
        try:
            metadata = self._stubs[0].ModelMetadata(
                v2.ModelMetadataRequest(name=self.model_name, version=self.model_version), timeout=self.timeout_s
            )
        except grpc.RpcError as error:
            raise _error(endpoint, error) from None
        if metadata.inputs:
            self.input_name = metadata.inputs[0].name
        names = [o.name for o in metadata.outputs]
        if self.output_name and names and self.output_name not in names:
            message = f"model {self.model_name!r} has no output {self.output_name!r}; it has {', '.join(names)}"
            raise EndpointError(endpoint, None, message, transient=False)
        return metadata

    # Inference

    def frame(self, batch: np.ndarray, request_id: str = "") -> bytes:
        """The serialised ModelInferRequest for a batch (its bytes are copied once, into the frame)."""
        contiguous = np.ascontiguousarray(batch, dtype=_numpy_dtype(self.input_dtype))
        message = v2.ModelInferRequest(model_name=self.model_name, model_version=self.model_version, id=request_id)
        message.inputs.add(name=self.input_name, datatype=self.input_dtype, shape=contiguous.shape)
        if self.output_name:
            message.outputs.add(name=self.output_name)
        return wire.encode_request(message, [contiguous.data.cast("B")], align=wire.ALIGN)

    def output_of(self, answer: tuple[v2.ModelInferResponse, list[memoryview]]) -> tuple[memoryview, str, list[int]]:
        """(raw bytes, datatype, shape) of the requested output (the first when none was named)."""
        response, raws = answer
        for i, tensor in enumerate(response.outputs):
            if not self.output_name or tensor.name == self.output_name:
                if i < len(raws):
                    return raws[i], tensor.datatype, list(tensor.shape)
                values = getattr(tensor.contents, "fp32_contents", [])
                return memoryview(np.asarray(values, dtype="<f4").tobytes()), "FP32", list(tensor.shape)
        raise EndpointError("", None, f"the response has no output {self.output_name!r}", transient=False)

    @overload
    def infer(self, batch: np.ndarray, /) -> np.ndarray: ...

    @overload
    def infer(
        self, model: str, tiles: np.ndarray, version: str = "", timeout: float | None = None
    ) -> dict[str, np.ndarray]: ...

    def infer(
        self, model: str | np.ndarray, tiles: np.ndarray | None = None, version: str = "", timeout: float | None = None
    ) -> np.ndarray | dict[str, np.ndarray]:
        """One synchronous request. `infer(batch)`: the client's model, its chosen output as an array.
        `infer(model, tiles)`: any model on the endpoint, named, with every output by name; the tiles'
        own dtype is sent."""
        if isinstance(model, str):
            assert tiles is not None, "infer(model, tiles) needs the tiles"
            return self._infer_named(model, tiles, version, timeout)
        index = next(self._next)
        try:
            answer = self._infer[index](self.frame(model), timeout=self.timeout_s)
        except grpc.RpcError as error:
            raise _error(self._endpoints[index], error) from None
        raw, datatype, shape = self.output_of(answer)
        return np.frombuffer(raw, dtype=_numpy_dtype(datatype)).reshape(shape)

    def infer_raw(
        self, model: str, tiles: np.ndarray, version: str = "", timeout: float | None = None
    ) -> tuple[v2.ModelInferResponse, list[memoryview]]:
        """One request to the named model with the tiles (in their own dtype) as input "tiles": the response,
        and a view of each output's bytes. Raises grpc.RpcError as the endpoint answered."""
        tiles = np.ascontiguousarray(tiles, dtype=tiles.dtype.newbyteorder("<"))
        request = v2.ModelInferRequest(model_name=model, model_version=version)
        request.inputs.add(name="tiles", datatype=DATATYPES[tiles.dtype.name], shape=tiles.shape)
        frame = wire.encode_request(request, [tiles.data.cast("B")], align=wire.ALIGN)
        return self._infer[next(self._next)](frame, timeout=timeout)

    def _infer_named(self, model: str, tiles: np.ndarray, version: str, timeout: float | None) -> dict[str, np.ndarray]:
        response, raws = self.infer_raw(model, tiles, version, timeout)
        return {
            tensor.name: np.frombuffer(raw, dtype=_numpy_dtype(tensor.datatype)).reshape(tuple(tensor.shape))
            for tensor, raw in zip(response.outputs, raws, strict=True)
        }

    def run(
        self,
        batches: Iterable[tuple[Any, np.ndarray | bytes]],
        max_concurrency: int,
        *,
        retry_for_s: float = 0.0,
        on_retry: Callable[[EndpointError, float], None] | None = None,
    ) -> Iterator[tuple[Any, memoryview, str, list[int]]]:
        """Send every (key, batch) with at most `max_concurrency` requests in flight; yield (key, raw output,
        datatype, shape) as answers arrive, in any order. A batch is a numpy array or a request already made
        by `frame`. A permanent failure cancels what is in flight and is raised.

        With `retry_for_s`, a transient failure (the endpoint full, restarting or slow) is sent again after a
        wait: the server's `grpc-retry-pushback-ms` hint, else an exponential backoff from RETRY_FIRST_S, each
        with jitter; `on_retry(error, wait_s)` hears of it. The request goes to another endpoint where there
        is one, the failing endpoint rests for the wait, and RESOURCE_EXHAUSTED halves the requests in flight
        (each answer then adds back 1/in-flight, up to `max_concurrency`: additive increase, multiplicative
        decrease). It gives up, raising the last failure, once `retry_for_s` pass without a single answer."""
        source = iter(batches)
        done: queue.Queue = queue.Queue()
        in_flight: dict[int, tuple[grpc.Future, int, Any, bytes, int]] = {}
        retries: list[tuple[float, int, Any, bytes, int]] = []  # heap by the time each may go again
        resting = [0.0] * len(self._endpoints)  # until when each endpoint gets no new request
        order = itertools.count()
        upcoming: tuple[Any, np.ndarray | bytes] | None = None
        exhausted = False
        window = float(max_concurrency)
        answered_at = time.monotonic()

        def pull() -> None:
            nonlocal upcoming, exhausted
            if upcoming is None and not exhausted:
                try:
                    upcoming = next(source)
                except StopIteration:
                    exhausted = True

        def send(key: Any, request: bytes, attempt: int, now: float) -> None:
            index = self._pick(resting, now)
            future = self._infer[index].future(request, timeout=self.timeout_s)
            in_flight[id(future)] = (future, index, key, request, attempt)
            future.add_done_callback(lambda f: done.put(f))

        try:
            while True:
                pull()
                now = time.monotonic()
                while len(in_flight) < max(1, int(window)):
                    if retries and retries[0][0] <= now:
                        _, _, key, request, attempt = heapq.heappop(retries)
                        send(key, request, attempt, now)
                    elif upcoming is not None:
                        key, batch = upcoming
                        upcoming = None
                        send(key, batch if isinstance(batch, bytes) else self.frame(batch), 0, now)
                        pull()  # read the next batch while these are in flight
                    else:
                        break
                if not in_flight and not retries and upcoming is None:
                    return
                wait = POLL_S if not retries else min(POLL_S, max(0.0, retries[0][0] - now))
                try:
                    future = done.get(timeout=wait)
                except queue.Empty:
                    continue
                _, index, key, request, attempt = in_flight.pop(id(future))
                endpoint = self._endpoints[index]
                try:
                    response = future.result()
                except grpc.RpcError as error:
                    failure = _error(endpoint, error)
                    now = time.monotonic()
                    if not (failure.transient and retry_for_s and now - answered_at < retry_for_s):
                        raise failure from None
                    delay = failure.retry_after_s or min(RETRY_MAX_S, RETRY_FIRST_S * 2**attempt)
                    delay *= random.uniform(0.5, 1.5)  # jitter: runs refused together do not return together
                    if failure.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                        window = max(1.0, window / 2)
                    resting[index] = now + delay
                    heapq.heappush(retries, (now + delay, next(order), key, request, attempt + 1))
                    if on_retry is not None:
                        on_retry(failure, delay)
                    continue
                except grpc.FutureCancelledError:
                    raise EndpointError(
                        endpoint, grpc.StatusCode.CANCELLED, "request cancelled", transient=True
                    ) from None
                answered_at = time.monotonic()
                window = min(float(max_concurrency), window + 1 / window)
                yield (key, *self.output_of(response))
        finally:
            for future, *_ in in_flight.values():
                future.cancel()

    def _pick(self, resting: list[float], now: float) -> int:
        """The next endpoint round-robin, passing over resting ones while any other is awake."""
        for _ in range(len(self._endpoints)):
            index = next(self._next)
            if resting[index] <= now:
                return index
        return next(self._next)
