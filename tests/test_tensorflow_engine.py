"""The TensorFlow engine against LiteRT on real photos, both models, with a batch dimension.

Skipped where TensorFlow is not installed (it is an optional extra), unless BACKDROP_REQUIRE_TENSORFLOW=1
(CI sets it, and installs it through `make install`).
"""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pytest

if os.environ.get("BACKDROP_REQUIRE_TENSORFLOW") != "1":
    pytest.importorskip("tensorflow")

from backdrop.engines import choose_engine, load_engine
from backdrop.models.fetch import resolve_model_file
from backdrop.models.registry import MODELS
from backdrop.params import JobParams
from backdrop.pipeline import Pipeline
from backdrop.pipeline.segment import model_input
from tests.conftest import encode_rgb

VARIANTS = [(spec, variant) for spec in MODELS.values() for variant in spec.variants]
# XNNPACK (LiteRT's CPU kernels) approximates the activations; the errors add up over the layers. The
# landscape selfie model (MEAN in its squeeze-excite blocks) drifts a little further than the others.
TOLERANCE = {"general": 1e-4, "257": 1e-4, "landscape": 2.5e-4}


@pytest.mark.parametrize(("spec", "variant"), VARIANTS, ids=[f"{s.name}-{v.name}" for s, v in VARIANTS])
def test_same_outputs_as_litert(settings, astronaut, chelsea, coffee, spec, variant):
    path = resolve_model_file(variant.file, settings)
    tensorflow = load_engine("tensorflow", path, threads=2)
    litert = load_engine("litert", path, threads=2)
    inputs = [model_input(np.ascontiguousarray(p[:, :, ::-1]), spec, variant) for p in (astronaut, chelsea, coffee)]
    for x in inputs:
        assert np.abs(tensorflow.run(x) - litert.run(x)).max() < TOLERANCE[variant.name]
    batch = np.concatenate(inputs)
    together = tensorflow.run(batch)
    assert together.shape[0] == 3
    for index, x in enumerate(inputs):
        assert np.abs(together[index] - tensorflow.run(x)[0]).max() < 1e-5


def test_pipeline_on_tensorflow_finds_the_same(settings, astronaut, chelsea):
    on_tf = Pipeline(replace(settings, engine="tensorflow"))
    on_litert = Pipeline(replace(settings, engine="litert"))
    for photo, targets in ((astronaut, "person"), (chelsea, "cat")):
        params = JobParams.parse({"targets": targets})
        a = on_tf.process(encode_rgb(photo), params).detected
        b = on_litert.process(encode_rgb(photo), params).detected
        assert abs(a[targets] - b[targets]) < 0.005


def test_auto_engine_is_litert_without_a_gpu():
    has_gpu = os.path.exists("/dev/nvidiactl") or os.path.exists("/dev/nvidia0")
    assert choose_engine("auto") == ("tensorflow" if has_gpu else "litert")
    assert choose_engine("litert") == "litert"
