"""Native libraries' own stderr lines, routed into Python logging.

LiteRT's C++ core prints ``INFO: Created TensorFlow Lite XNNPACK delegate for CPU.`` straight to file
descriptor 2 whenever an interpreter allocates its tensors; a command-line user did not ask for that.
While a native call runs, descriptor 2 points at a temporary file; afterwards each line is logged
(``INFO:`` lines at DEBUG, anything else at WARNING, so nothing unexpected is lost).
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("backdrop.native")
# Descriptor 2 is process-wide: two captures at once would swap each other's targets.
_capture_lock = threading.Lock()


@contextmanager
def native_stderr_to_log() -> Iterator[None]:
    with _capture_lock, tempfile.TemporaryFile() as capture:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode(errors="replace")
    for line in text.splitlines():
        if line.strip():
            log.log(logging.DEBUG if line.startswith("INFO:") else logging.WARNING, "%s", line)
