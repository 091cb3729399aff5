"""Running a per-pixel step over horizontal stripes of an image on a few threads.

At 12 MP, chains of OpenCV arithmetic are bound by memory traffic and mostly single-threaded; doing the
whole chain stripe by stripe keeps each stripe in cache and uses every core (OpenCV releases the GIL).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import cv2

STRIPE_ROWS = 128
# Below this many pixels the thread hand-off costs more than it saves.
MIN_PARALLEL_PIXELS = 1_000_000

# Keyed by process id too: a pool inherited through fork() (prefork workers) has no threads.
_pools: dict[tuple[int, int], ThreadPoolExecutor] = {}


def for_each_stripe(step: Callable[[slice], object], height: int, width: int) -> None:
    """Call ``step(rows)`` for every stripe of ``height`` rows; stripes must not depend on each other."""
    stripes = [slice(top, min(height, top + STRIPE_ROWS)) for top in range(0, height, STRIPE_ROWS)]
    threads = max(1, cv2.getNumThreads())
    if threads == 1 or len(stripes) == 1 or height * width < MIN_PARALLEL_PIXELS:
        for rows in stripes:
            step(rows)
        return
    key = (os.getpid(), threads)
    pool = _pools.get(key)
    if pool is None:
        pool = _pools[key] = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="backdrop-stripes")
    for _ in pool.map(step, stripes):
        pass
