"""Micro-batching: concurrent callers share forward passes, and get exactly their own outputs back."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import pytest

from backdrop.engines.batching import BatchingEngine
from backdrop.params import JobParams
from backdrop.pipeline import Pipeline
from tests.conftest import encode_rgb


class DoublingEngine:
    """A stand-in model: output = 2 x input; records the batch sizes it was called with."""

    name = "doubling"
    input_size = (4, 4)

    def __init__(self) -> None:
        self.calls: list[int] = []

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.calls.append(len(batch))
        time.sleep(0.01)
        return batch * 2


def test_concurrent_callers_are_batched_and_get_their_own_outputs():
    inner = DoublingEngine()
    seen: list[int] = []
    engine = BatchingEngine(inner, max_batch=4, max_wait_ms=50, on_batch=seen.append)
    inputs = [np.full((1, 4, 4, 3), i, np.float32) for i in range(12)]
    with ThreadPoolExecutor(12) as pool:
        outputs = list(pool.map(engine.run, inputs))
    for i, output in enumerate(outputs):
        assert output.shape == (1, 4, 4, 3) and np.all(output == 2 * i)
    assert max(inner.calls) == 4 and sum(inner.calls) == 12 and len(inner.calls) < 12
    assert seen == inner.calls


def test_a_lone_caller_waits_at_most_max_wait():
    engine = BatchingEngine(DoublingEngine(), max_batch=8, max_wait_ms=30)
    started = time.monotonic()
    engine.run(np.ones((1, 4, 4, 3), np.float32))
    assert time.monotonic() - started < 0.5


def test_errors_reach_every_caller_of_the_batch():
    class Broken(DoublingEngine):
        def run(self, batch):
            raise RuntimeError("device lost")

    engine = BatchingEngine(Broken(), max_batch=2, max_wait_ms=20)
    errors = []

    def call():
        try:
            engine.run(np.ones((1, 4, 4, 3), np.float32))
        except RuntimeError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=call) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert errors == ["device lost", "device lost"]


@pytest.mark.parametrize("targets", ["person", "cat"])
def test_batched_pipeline_gives_the_same_pixels(settings, astronaut, chelsea, targets):
    """Real models: jobs run concurrently through batched LiteRT invocations give the same results."""
    photos = [encode_rgb(astronaut), encode_rgb(chelsea)] * 3
    params = JobParams.parse({"targets": targets, "effect": "mask"})
    single = Pipeline(replace(settings, threads=1))
    expected = [single.process(p, params).data for p in photos]
    sizes: list[int] = []
    batched = Pipeline(replace(settings, threads=1, batch_size=4, batch_wait_ms=50), on_batch=sizes.append)
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda p: batched.process(p, params).data, photos))
    assert results == expected
    assert max(sizes) > 1
