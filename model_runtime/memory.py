"""Keep large tensor buffers in the heap instead of fresh mmaps.

glibc serves allocations above its mmap threshold with a new mapping and
unmaps them on free, so every multi-MiB request or output buffer page-faults
its memory in again (and per-thread arenas make reuse rarer still). On a
2-core machine that tripled ModelInfer's handler time. Raising the mmap and
trim thresholds lets freed buffers be reused. Same effect as
MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_/MALLOC_TOP_PAD_, but set from
inside the process. No-op where glibc is absent.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3


def tune_malloc(mmap_threshold: int = 128 << 20, trim_threshold: int = 512 << 20, top_pad: int = 64 << 20) -> bool:
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
        )
    )
