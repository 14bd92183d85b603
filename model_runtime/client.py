"""A small Open Inference Protocol client for numpy tiles, using the zero-copy framing of wire.py.

    with InferenceClient("127.0.0.1:8001") as client:
        outputs = client.infer("ndwi-water", tiles)   # {"water_probability": ndarray}
"""

from __future__ import annotations

from types import TracebackType

import grpc
import numpy as np

from inference import grpc_predict_v2_pb2 as pb
from model_runtime.manifest import NUMPY_DTYPES
from model_runtime.wire import ALIGN, decode_response, encode_request

DATATYPES = {np.dtype(v).name: k for k, v in NUMPY_DTYPES.items()}
OPTIONS = [("grpc.max_send_message_length", 256 << 20), ("grpc.max_receive_message_length", 256 << 20)]


class InferenceClient:
    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address, options=OPTIONS)
        self._infer = self.channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=lambda frame: frame,
            response_deserializer=decode_response,
        )

    def infer(self, model: str, tiles: np.ndarray, version: str = "", timeout: float | None = None) -> dict[str, np.ndarray]:
        tiles = np.ascontiguousarray(tiles, dtype=tiles.dtype.newbyteorder("<"))
        request = pb.ModelInferRequest(
            model_name=model,
            model_version=version,
            inputs=[pb.ModelInferRequest.InferInputTensor(name="tiles", datatype=DATATYPES[tiles.dtype.name], shape=tiles.shape)],
        )
        response, raws = self._infer(encode_request(request, [memoryview(tiles).cast("B")], align=ALIGN), timeout=timeout)
        outputs = {}
        for tensor, raw in zip(response.outputs, raws, strict=True):
            dtype = np.dtype(NUMPY_DTYPES[tensor.datatype]).newbyteorder("<")
            outputs[tensor.name] = np.frombuffer(raw, dtype=dtype).reshape(tuple(tensor.shape))
        return outputs

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> InferenceClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
