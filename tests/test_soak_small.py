"""A small soak (the full one is `make soak`): concurrent clients, backpressure, a balanced ledger."""

from __future__ import annotations

import os

import pytest

from backdrop.service.localstack import LocalStack, free_port
from bench.soak import run_soak

pytestmark = pytest.mark.integration


def test_small_soak_ledger_balances(tmp_path):
    env = {**os.environ, "BACKDROP_THREADS": "1", "BACKDROP_MAX_QUEUE_DEPTH": "6"}
    stack = LocalStack(root=tmp_path, api_port=free_port(), workers=2)
    stack.start(env)
    try:
        report = run_soak(stack, clients=4, jobs=48, timeout_s=240)
    finally:
        stack.stop()
    print(report)
    assert report["accepted"] >= 30
    assert report["balanced"], report
    assert report["lost"] == report["stuck"] == report["duplicate_terminal_writes"] == 0, report
    assert report["failed_without_reason"] == report["wrong_result_objects"] == 0, report
    assert report["backpressure_retries"] > 0  # the queue limit was hit and honoured
    assert set(report["refused_4xx"]) <= {400, 415, 422}
