"""Cutting a clip into time ranges that workers render in parallel.

Ranges are half-open [start, end) in seconds of presentation time, so a frame belongs to exactly one of
them: none is lost or doubled at a join. The last range is open-ended, so frames past a container's
declared duration still land somewhere. Each range but the first is rendered after a short warm-up on
the frames before it (not written out), so the temporal smoothing carries over the join.
"""

from __future__ import annotations

import math

# Frames before a range rendered only to warm up its temporal state.
WARMUP_S = 0.5


def plan_chunks(duration_s: float, chunk_s: float) -> list[tuple[float, float]]:
    """Equal [start, end) ranges of at most ``chunk_s`` seconds covering a clip of ``duration_s`` (equal,
    so that workers rendering them in parallel finish together)."""
    count = max(1, math.ceil(duration_s / chunk_s - 1e-9)) if duration_s > 0 else 1
    length = duration_s / count
    starts = [index * length for index in range(count)]
    return [(start, starts[index + 1] if index + 1 < count else math.inf) for index, start in enumerate(starts)]
