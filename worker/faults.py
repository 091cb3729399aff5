"""Fault injection for the reliability tests; inert unless ``BACKDROP_FAULT_INJECTION=true``.

An uploaded image carrying the marker ``backdrop-fault:NAME[:SECONDS]`` anywhere in its bytes (a JPEG
comment, say) makes the worker misbehave the way real failures do:

- ``slow:S``  sleeps S seconds before decoding; the soft time limit interrupts it like any Python code;
- ``stuck:S`` sleeps with the soft-limit signal blocked, as native code stuck in a loop would: only the
  hard time limit (the process is killed) ends it;
- ``crash``   kills its own process with SIGKILL, as a decoder segfault or the OOM killer would.
"""

from __future__ import annotations

import os
import re
import signal
import time

_MARKER = re.compile(rb"backdrop-fault:(slow|stuck|crash)(?::(\d+(?:\.\d+)?))?")


def marker(name: str, seconds: float | None = None) -> bytes:
    return f"backdrop-fault:{name}".encode() + (f":{seconds:g}".encode() if seconds is not None else b"")


def inject(data: bytes) -> None:
    found = _MARKER.search(data)
    if found is None:
        return
    name, seconds = found.group(1).decode(), float(found.group(2) or 1)
    if name == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
    elif name == "slow":
        time.sleep(seconds)
    else:
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
        try:
            time.sleep(seconds)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
