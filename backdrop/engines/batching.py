"""Micro-batching: concurrent callers' images are gathered into one forward pass.

A worker that runs several jobs at once in one process (threads; the way a GPU worker runs, one process
per device) wraps its engines in :class:`BatchingEngine`: the first waiting image opens a batch, which
closes when ``max_batch`` images wait or ``max_wait_ms`` has passed, then runs as one invocation.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from backdrop.engines import Engine


@dataclass
class _Request:
    batch: np.ndarray
    done: threading.Event = field(default_factory=threading.Event)
    result: np.ndarray | None = None
    error: BaseException | None = None


class BatchingEngine:
    def __init__(
        self,
        inner: Engine,
        *,
        max_batch: int,
        max_wait_ms: float,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.name = f"{inner.name}+batching"
        self._inner = inner
        self._max_batch = max_batch
        self._max_wait_s = max_wait_ms / 1e3
        self._on_batch = on_batch
        self._pending: list[_Request] = []
        self._condition = threading.Condition()
        self._runner = threading.Thread(target=self._serve, name="backdrop-batching", daemon=True)
        self._runner.start()

    @property
    def input_size(self) -> tuple[int, int]:
        return self._inner.input_size

    def run(self, batch: np.ndarray) -> np.ndarray:
        request = _Request(batch)
        with self._condition:
            self._pending.append(request)
            self._condition.notify_all()
        request.done.wait()
        if request.error is not None:
            raise request.error
        assert request.result is not None
        return request.result

    def _take_batch(self) -> list[_Request]:
        with self._condition:
            while not self._pending:
                self._condition.wait()
            deadline = time.monotonic() + self._max_wait_s
            while sum(r.batch.shape[0] for r in self._pending) < self._max_batch:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._condition.wait(remaining)
            taken, size = [], 0
            while self._pending and (not taken or size + self._pending[0].batch.shape[0] <= self._max_batch):
                request = self._pending.pop(0)
                taken.append(request)
                size += request.batch.shape[0]
            return taken

    def _serve(self) -> None:
        while True:
            requests = self._take_batch()
            try:
                outputs = self._inner.run(np.concatenate([r.batch for r in requests]))
                if self._on_batch is not None:
                    self._on_batch(len(outputs))
                offset = 0
                for request in requests:
                    count = request.batch.shape[0]
                    request.result = outputs[offset : offset + count]
                    offset += count
            except BaseException as exc:  # hand the failure to every caller of this batch
                for request in requests:
                    request.error = exc
            for request in requests:
                request.done.set()
