"""Pipeline speed: per-stage milliseconds for a blur job at 0.3, 2 and 12 MP, against the floor.

The floor is what any pipeline pays to decode the JPEG and encode the result. The naive pipeline is
what the seed project did: a full-resolution Gaussian with a large sigma and a float composite.

    make bench            # or: .venv/bin/python bench/pipeline.py [--runs N] [--skip-naive]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import cv2
import numpy as np
from skimage import data as samples

from backdrop.params import JobParams
from backdrop.pipeline import STAGES, Pipeline
from backdrop.pipeline.allocator import retain_freed_memory
from backdrop.pipeline.effects import blur_radius
from backdrop.settings import Settings

SIZES = {"0.3 MP": (640, 480), "2 MP": (1632, 1224), "12 MP": (4000, 3000)}


def photo_jpeg(width: int, height: int) -> bytes:
    """The astronaut, enlarged to the size, with sensor-like noise so the JPEG is as heavy as a real one."""
    rgb = samples.astronaut()
    bgr = cv2.resize(rgb[:, :, ::-1], (width, height), interpolation=cv2.INTER_CUBIC)
    noise = np.random.default_rng(0).normal(0, 4, bgr.shape)
    bgr = np.clip(bgr + noise, 0, 255).astype(np.uint8)
    return cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def median_ms(fn, runs: int) -> float:
    samples_ms = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples_ms.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples_ms)


def stage_medians(pipeline: Pipeline, jpeg: bytes, params: JobParams, runs: int) -> dict[str, float]:
    pipeline.process(jpeg, params)  # warm-up
    timings = [pipeline.process(jpeg, params).timings_ms for _ in range(runs)]
    return {stage: statistics.median(t[stage] for t in timings) for stage in STAGES}


def naive_job(pipeline: Pipeline, jpeg: bytes, strength: int) -> None:
    """Seed-style: decode, segment, upsample the mask, blur the whole photo at full resolution, float blend."""
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    height, width = image.shape[:2]
    from backdrop.models.registry import get_model
    from backdrop.pipeline.segment import segment

    spec = get_model("selfie")
    variant = spec.variant_for(width, height)
    mask = segment(pipeline.models.engine_for(variant, spec), image, spec, variant, ("person",)).probability
    alpha = cv2.resize(mask, (width, height))[..., None]
    sigma = blur_radius(strength, width, height) / 2
    blurred = cv2.GaussianBlur(image, (0, 0), sigma)
    out = (image.astype(np.float32) * alpha + blurred.astype(np.float32) * (1 - alpha)).astype(np.uint8)
    cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, 90])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--skip-naive", action="store_true")
    args = parser.parse_args()

    settings = Settings.from_env()
    retain_freed_memory(settings.retain_freed_memory_mb)  # as the worker and the CLI do
    pipeline = Pipeline(settings)
    pipeline.preload(["selfie", "deeplab"])
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {settings.threads} threads, cv2 {cv2.__version__}")
    print("job: effect=blur strength=50 bokeh=gaussian targets=person (selfie + deeplab confirmation), JPEG q90\n")

    params = JobParams.parse({"strength": "50", "quality": "90"})
    header = f"{'size':>7} " + " ".join(f"{s:>8}" for s in STAGES) + f" {'total':>8} {'floor':>8} {'x floor':>8}"
    print(header)
    jpegs = {}
    for label, (width, height) in SIZES.items():
        jpegs[label] = jpeg = photo_jpeg(width, height)
        stages = stage_medians(pipeline, jpeg, params, args.runs)
        total = sum(stages.values())
        floor = stages["decode"] + stages["encode"]
        cells = " ".join(f"{stages[s]:8.1f}" for s in STAGES)
        print(f"{label:>7} {cells} {total:8.1f} {floor:8.1f} {total / floor:8.2f}")

    big = jpegs["12 MP"]
    image = cv2.imdecode(np.frombuffer(big, np.uint8), cv2.IMREAD_COLOR)
    raw_decode = median_ms(lambda: cv2.imdecode(np.frombuffer(big, np.uint8), cv2.IMREAD_COLOR), args.runs)
    raw_encode = median_ms(lambda: cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90]), args.runs)
    print(f"\nbare OpenCV on the 12 MP JPEG: decode {raw_decode:.1f} ms, encode {raw_encode:.1f} ms")

    print("\nblur cost (effect stage, ms) by strength at 12 MP:")
    print(f"{'bokeh':>9} " + " ".join(f"{'s=' + str(s):>8}" for s in (1, 25, 50, 75, 100)))
    for bokeh in ("gaussian", "lens"):
        row = []
        for strength in (1, 25, 50, 75, 100):
            job = JobParams.parse({"strength": str(strength), "bokeh": bokeh})
            row.append(stage_medians(pipeline, big, job, max(3, args.runs // 2))["effect"])
        print(f"{bokeh:>9} " + " ".join(f"{v:8.1f}" for v in row))

    if not args.skip_naive:
        ours = sum(stage_medians(pipeline, big, params, 3).values())
        naive = median_ms(lambda: naive_job(pipeline, big, 50), 2)
        print(f"\nnaive 12 MP blur job (full-res Gaussian + float composite): {naive:.0f} ms")
        print(f"Backdrop 12 MP blur job: {ours:.0f} ms  -> speed-up {naive / ours:.1f}x")


if __name__ == "__main__":
    main()
