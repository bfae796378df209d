"""Machine-wide locks: a file in the temp folder held with flock for the duration of a `with` block."""
from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def machine_lock(name: str):
    """Exclusive among every process of this machine that asks for the same `name`."""
    # Opened read-only (flock needs no write access): a lock file another user left behind still serves.
    fd = os.open(Path(tempfile.gettempdir()) / f"pytest-moeperf-{name}.lock", os.O_RDONLY | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
