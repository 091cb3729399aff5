"""LiteRT (TensorFlow Lite runtime) engine for ``.tflite`` models on CPU."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from backdrop.engines.native_log import native_stderr_to_log


class LiteRTEngine:
    """One interpreter per model file per process; calls are serialised because interpreters are not
    thread-safe. A batch runs as one invocation: the input is resized to the batch when it changes."""

    name = "litert"

    def __init__(self, model_path: Path, *, threads: int) -> None:
        self._interpreter = Interpreter(model_path=str(model_path), num_threads=threads)
        with native_stderr_to_log():
            self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]
        self._outputs = self._interpreter.get_output_details()
        self._shape = [int(d) for d in self._input["shape"]]
        self._batch = self._shape[0]
        self._lock = threading.Lock()

    @property
    def input_size(self) -> tuple[int, int]:
        return self._shape[1], self._shape[2]

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.run_outputs(batch)[0]

    def run_outputs(self, batch: np.ndarray) -> list[np.ndarray]:
        """Every output of the model, in the model's order (detectors: boxes, scores; pose: five)."""
        with self._lock:
            if batch.shape[0] != self._batch:
                self._interpreter.resize_tensor_input(self._input["index"], [batch.shape[0], *self._shape[1:]])
                with native_stderr_to_log():
                    self._interpreter.allocate_tensors()
                self._batch = batch.shape[0]
            self._interpreter.set_tensor(self._input["index"], np.ascontiguousarray(batch, dtype=np.float32))
            self._interpreter.invoke()
            return [self._interpreter.get_tensor(output["index"]).copy() for output in self._outputs]
