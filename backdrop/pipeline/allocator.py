"""Keeping freed memory for the next image instead of giving it back to the OS at once.

glibc's malloc serves big blocks with ``mmap`` and returns them (and any large free space at the top of
its heap) to the OS on ``free``. A job allocates tens of megabytes of arrays, so every job faulted in and
zeroed fresh pages: a quarter of a worker's CPU time went to the kernel (0.3 MP: 50 ms per image, 14 of
them system time; 12 MP: 216 ms, 63 of them). Raising the two thresholds lets the next image reuse the
memory; a process then holds on to its largest job's memory (up to ``retain_mb`` of free space).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

# mallopt(3) parameter numbers (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Blocks up to this size come from the heap instead of mmap: one 12 MP float32 plane is 48 MB. Builds
# that cap the threshold at 32 MiB (HEAP_MAX_SIZE / 2) refuse the first value and take the second.
MMAP_THRESHOLDS = (64 * 1024 * 1024, 32 * 1024 * 1024)


def retain_freed_memory(retain_mb: int) -> bool:
    """Sets glibc's thresholds for this process (``BACKDROP_RETAIN_FREED_MEMORY_MB``); True when they
    took. Nothing happens (False) when ``retain_mb`` is 0 or the C library is not glibc (musl, macOS),
    whose allocators differ."""
    if retain_mb <= 0 or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # The mmap threshold first: setting either one stops glibc's own threshold adjustment.
    mapped = any(mallopt(M_MMAP_THRESHOLD, size) == 1 for size in MMAP_THRESHOLDS)
    trimmed = mallopt(M_TRIM_THRESHOLD, min(retain_mb * 2**20, 2**31 - 1)) == 1
    return mapped and trimmed
