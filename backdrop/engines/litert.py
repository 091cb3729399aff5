"""LiteRT (TensorFlow Lite runtime) engine for ``.tflite`` models on CPU."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter


class LiteRTEngine:
    """One interpreter per model file per process; calls are serialised because interpreters are not
    thread-safe."""

    name = "litert"

    def __init__(self, model_path: Path, *, threads: int) -> None:
        self._interpreter = Interpreter(model_path=str(model_path), num_threads=threads)
        self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        self._lock = threading.Lock()

    @property
    def input_size(self) -> tuple[int, int]:
        _, height, width, _ = (int(d) for d in self._input["shape"])
        return height, width

    def run(self, batch: np.ndarray) -> np.ndarray:
        # The models have a fixed batch of 1; a batch is run item by item.
        outputs = []
        with self._lock:
            for item in batch:
                self._interpreter.set_tensor(self._input["index"], item[None].astype(np.float32, copy=False))
                self._interpreter.invoke()
                outputs.append(self._interpreter.get_tensor(self._output["index"])[0].copy())
        return np.stack(outputs)
