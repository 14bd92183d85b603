"""Keep large tensor buffers in the heap instead of fresh mmaps.

glibc serves allocations above its mmap threshold with a new mapping and
unmaps them on free, so every multi-MiB request or output buffer page-faults
its memory in again (and per-thread arenas make reuse rarer still). On a
2-core machine that tripled ModelInfer's handler time. Raising the mmap and
trim thresholds lets freed buffers be reused. Same effect as
MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_/MALLOC_TOP_PAD_, but set from
inside the process. No-op where glibc is absent.

With trimming that lax, every arena keeps what it once held, and glibc gives
each gRPC worker thread an arena of its own: sixteen request threads each
holding a few freed multi-MiB buffers took water-mlp to 666 MiB under sixteen
requests in flight (its limit is 512m). Two arenas (MALLOC_ARENA_MAX) kept it
near 500 MiB with no loss of speed; admission control does the rest.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8


def tune_malloc(
    mmap_threshold: int = 128 << 20, trim_threshold: int = 512 << 20, top_pad: int = 64 << 20, arenas: int = 2
) -> bool:
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return all(
        mallopt(param, value) == 1
        for param, value in (
            (M_MMAP_THRESHOLD, mmap_threshold),
            (M_TRIM_THRESHOLD, trim_threshold),
            (M_TOP_PAD, top_pad),
            (M_ARENA_MAX, arenas),
        )
    )
