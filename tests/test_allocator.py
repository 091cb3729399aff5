"""Freed image memory is reused instead of faulted in again for every image (glibc only)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from backdrop.pipeline.allocator import retain_freed_memory
from backdrop.settings import Settings

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt thresholds are glibc's")

# Sixteen 4 MB arrays alive at once, as a job's planes are, then freed; the page faults of 20 more rounds.
FAULTS_PER_ROUND = """
import resource, sys
import numpy as np
from backdrop.pipeline.allocator import retain_freed_memory
print(retain_freed_memory(int(sys.argv[1])))
def round_of_arrays():
    planes = [np.ones(1 << 20, np.float32) for _ in range(16)]
    return sum(float(p[0]) for p in planes)
round_of_arrays()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    round_of_arrays()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""


def faults_per_round(retain_mb: int) -> tuple[bool, float]:
    output = subprocess.run(
        [sys.executable, "-c", FAULTS_PER_ROUND, str(retain_mb)], capture_output=True, text=True, check=True
    ).stdout.split()
    return output[0] == "True", float(output[1])


def test_kept_memory_is_reused_without_page_faults() -> None:
    took, kept_faults = faults_per_round(256)
    untouched, default_faults = faults_per_round(0)
    assert took and not untouched
    # 64 MB of fresh pages is 16384 faults: glibc's defaults give much of it back after every round.
    assert default_faults > 4000  # a quarter of them
    assert kept_faults < 100


def test_the_setting_defaults_to_keeping_memory_and_zero_turns_it_off() -> None:
    assert Settings.from_env({}).retain_freed_memory_mb == 256
    assert Settings.from_env({"BACKDROP_RETAIN_FREED_MEMORY_MB": "0"}).retain_freed_memory_mb == 0
    assert retain_freed_memory(0) is False
