"""water-mlp: a per-pixel MLP over six Landsat 7 bands, run with onnxruntime.

One InferenceSession, built in load() and shared by every predict() call
(InferenceSession.run is thread-safe). Its intra-op pool is sized to the CPUs
this process may use, and its threads sleep between runs instead of spinning,
so a small box's cores stay free for gRPC and the caller.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import onnxruntime

MODEL_FILE = Path(__file__).resolve().with_name("water_mlp.onnx")
INPUT_NAME, OUTPUT_NAME = "tiles", "water_probability"
# Pixels per session run. The hidden layers hold 2 x 32 float32 per pixel, so 16 tiles of 256 px at once
# peak near 500 MB; chunks of 4 tiles keep the process near 150 MB whatever the batch, at the same speed.
CHUNK_PIXELS = 4 * 256 * 256


def usable_cpus() -> int:
    """CPUs in this process's affinity mask, capped by a cgroup v2 CPU quota (a container's --cpus)."""
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cpus


def session_options(threads: int) -> onnxruntime.SessionOptions:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class WaterMlp:
    def __init__(self) -> None:
        self._session: onnxruntime.InferenceSession | None = None

    def load(self) -> None:
        self._session = onnxruntime.InferenceSession(
            str(MODEL_FILE), session_options(usable_cpus()), providers=["CPUExecutionProvider"]
        )

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """(N, 6, H, W) uint8 digital numbers [blue, green, red, nir, swir1, swir2] -> (N, 1, H, W) float32 p(water)."""
        if self._session is None:
            raise RuntimeError("load() has not run")
        step = max(1, CHUNK_PIXELS // (batch.shape[2] * batch.shape[3]))
        if len(batch) <= step:
            return self._session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(batch)})[0]
        out = np.empty((len(batch), 1, *batch.shape[2:]), np.float32)
        for start in range(0, len(batch), step):
            out[start : start + step] = self._session.run(
                [OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(batch[start : start + step])}
            )[0]
        return out
