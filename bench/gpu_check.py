"""What TensorFlow sees and where Backdrop's stages run, and model throughput batched vs unbatched, TF vs LiteRT.

    .venv/bin/python bench/gpu_check.py [--seconds 3]

Run it on a GPU worker to check the device is used; on a CPU-only machine it reports the CPU.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

from backdrop.engines import load_engine
from backdrop.models.fetch import resolve_model_file
from backdrop.models.registry import get_model
from backdrop.pipeline.pixels_tf import TensorFlowPixels
from backdrop.settings import Settings


def stage_devices() -> dict[str, str]:
    """Run each TensorFlow stage's core op once and report the device its result lives on."""
    image = tf.random.uniform([1, 64, 64, 3])
    kernel = tf.ones([5, 5, 3, 1]) / 25
    probes = {
        "model forward (conv)": lambda: tf.nn.conv2d(image, tf.ones([3, 3, 3, 8]), 1, "SAME"),
        "resize": lambda: tf.image.resize(image, (128, 128)),
        "blur (depthwise conv)": lambda: tf.nn.depthwise_conv2d(image, kernel, [1, 1, 1, 1], "SAME"),
        "matte (multiply-add)": lambda: image[..., 0] * 2.0 + 1.0,
        "composite": lambda: image * 0.5 + image * 0.5,
    }
    return {name: probe().device for name, probe in probes.items()}


def images_per_second(engine, batch: np.ndarray, seconds: float) -> float:
    engine.run(batch)  # warm-up (TF traces the function on first use)
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        engine.run(batch)
        count += len(batch)
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    settings = Settings.from_env()

    print(f"TensorFlow {tf.__version__}; built with CUDA: {tf.test.is_built_with_cuda()}")
    for device in tf.config.list_physical_devices():
        print(f"  device: {device.device_type} {device.name}")
    print("\nwhere the TensorFlow stages run:")
    for stage, device in stage_devices().items():
        print(f"  {stage:<24} {device}")
    TensorFlowPixels()  # importable and usable: the per-pixel backend for GPU workers

    print(f"\nmodel throughput, images/s ({settings.threads} CPU threads):")
    print(f"  {'model':<18} {'engine':<11} {'batch 1':>9} {'batch 8':>9}")
    for name in ("selfie", "deeplab"):
        spec = get_model(name)
        variant = spec.variants[0]
        path = resolve_model_file(variant.file, settings)
        single = np.random.default_rng(0).random((1, variant.input_height, variant.input_width, 3), np.float32)
        batch = np.repeat(single, 8, axis=0)
        for engine_name in ("litert", "tensorflow"):
            engine = load_engine(engine_name, path, threads=settings.threads)
            one = images_per_second(engine, single, args.seconds)
            eight = images_per_second(engine, batch, args.seconds)
            print(f"  {name + '/' + variant.name:<18} {engine_name:<11} {one:9.1f} {eight:9.1f}")


if __name__ == "__main__":
    main()
