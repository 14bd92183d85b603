"""Admission control: the model server bounds its own work instead of growing until the kernel kills it.

Two bounds, both from the manifest (`batching` names them; 0 or absent derives them):

- `max_parallel_batches`: predict() calls running at once (merged batches and requests that fill a batch
  on their own alike); 1 unless the manifest says more. Each call holds the model's working memory for
  a batch, and a model whose predict() uses every core it has (onnxruntime's, torch's thread pools)
  gains nothing from a second: water-mlp with two at once peaked 150 MiB higher at the same speed. A
  model whose predict() runs on one core may declare up to its `resources.cpu`.
- `max_queued_tiles`: tiles admitted at once, waiting or in predict(). Derived from `resources.memory`: a
  quarter of it over a tile's cost (its input and outputs as declared, twice: the request's bytes and the
  batch or answer built from them), and never below two full batches; without a memory limit, eight
  batches.

A request that does not fit is refused at once with RESOURCE_EXHAUSTED and a retry hint in the
`grpc-retry-pushback-ms` trailer (gRPC's own name for server pushback): the time the server expects to
need for the tiles ahead of it, from the recent predict rate.

The server's load rides on every gRPC health check's trailing metadata (`LOAD_HEADER`, see `Load`), so
hosting's monitor, which polls health anyway, learns it at no extra call: tiles admitted, the limit, and
requests refused since start.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from model_runtime.manifest import NUMPY_DTYPES, Manifest, memory_bytes

PUSHBACK_HEADER = "grpc-retry-pushback-ms"
LOAD_HEADER = "constellation-load"  # on health checks' trailers: "admitted=3 limit=16 refused=0"
MIN_PUSHBACK_MS, MAX_PUSHBACK_MS = 20, 5000
MEMORY_SHARE = 0.25  # of resources.memory for tiles in flight; the rest is the model, its batches and Python


class Full(Exception):
    """No room for the request now; `retry_after_ms` is the hint sent back."""

    def __init__(self, tiles: int, admitted: int, limit: int, retry_after_ms: int) -> None:
        self.retry_after_ms = retry_after_ms
        super().__init__(
            f"the model server holds {admitted} tiles, its limit is {limit}, and {tiles} more do not fit; "
            f"retry after {retry_after_ms} ms"
        )


@dataclass(frozen=True)
class Limits:
    max_parallel_batches: int
    max_queued_tiles: int

    @classmethod
    def of(cls, manifest: Manifest) -> Limits:
        """The manifest's limits, derived where it leaves them at 0."""
        parallel = manifest.max_parallel_batches or 1
        queued = manifest.max_queued_tiles
        if not queued:
            declared = str(manifest.resources.get("memory", "") or "")
            memory = memory_bytes(declared) if declared else 0
            floor = 2 * manifest.max_batch_size
            if memory:
                queued = max(floor, int(memory * MEMORY_SHARE // (2 * tile_bytes(manifest))))
            else:
                queued = 8 * manifest.max_batch_size
        return cls(parallel, queued)


@dataclass(frozen=True)
class Load:
    """What a model server holds now: tiles admitted, its limit, and requests refused since it started."""

    admitted: int
    limit: int
    refused: int

    def header(self) -> str:
        return f"admitted={self.admitted} limit={self.limit} refused={self.refused}"

    @classmethod
    def parse(cls, text: str) -> Load | None:
        """A `header()` string back; None for anything else (a server without load reports, a bad value)."""
        try:
            fields = dict(part.split("=", 1) for part in text.split())
            return cls(int(fields["admitted"]), int(fields["limit"]), int(fields["refused"]))
        except (KeyError, ValueError):
            return None


def tile_bytes(manifest: Manifest) -> int:
    """One tile's input and outputs, as declared (a model of any tile size counted at 256 px)."""
    side = manifest.tile_size_px or 256
    size = np.dtype(NUMPY_DTYPES[manifest.dtype]).itemsize * len(manifest.bands) * side * side
    for output in manifest.outputs:
        count = math.prod(side if d == -1 else d for d in output.shape)
        size += np.dtype(NUMPY_DTYPES[output.dtype]).itemsize * count
    return max(size, 1)


class Admission:
    """Counts the tiles admitted; `admit(n)` holds n of them for a request's life or raises Full."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self.admitted = 0
        self.peak = 0
        self.refused = 0  # requests refused with Full since start
        self._seconds_per_tile = 0.0  # moving average of predict time per tile

    @contextmanager
    def admit(self, tiles: int) -> Iterator[None]:
        limit = self.limits.max_queued_tiles
        with self._lock:
            # A request larger than the limit is admitted alone (it runs in chunks of max_batch_size).
            if self.admitted and self.admitted + tiles > limit:
                self.refused += 1
                raise Full(tiles, self.admitted, limit, self._pushback_ms(tiles))
            self.admitted += tiles
            self.peak = max(self.peak, self.admitted)
        try:
            yield
        finally:
            with self._lock:
                self.admitted -= tiles

    def load(self) -> Load:
        with self._lock:
            return Load(self.admitted, self.limits.max_queued_tiles, self.refused)

    def observe(self, tiles: int, seconds: float) -> None:
        """A predict() call of `tiles` took `seconds`: the basis of the retry hint."""
        if tiles <= 0:
            return
        per_tile = seconds / tiles
        with self._lock:
            average = self._seconds_per_tile
            self._seconds_per_tile = per_tile if not average else 0.8 * average + 0.2 * per_tile

    def _pushback_ms(self, tiles: int) -> int:
        """How long until `tiles` would fit: the excess drained at the observed rate (lock held)."""
        excess = self.admitted + tiles - self.limits.max_queued_tiles
        expected = 1000 * excess * self._seconds_per_tile / self.limits.max_parallel_batches
        return int(min(MAX_PUSHBACK_MS, max(MIN_PUSHBACK_MS, expected)))


def measured(admission: Admission, predict):
    """`predict` that reports each call's size and time to `admission`."""

    def timed(batch: np.ndarray):
        started = time.perf_counter()
        result = predict(batch)
        admission.observe(batch.shape[0], time.perf_counter() - started)
        return result

    return timed
