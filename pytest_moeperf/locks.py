"""Machine-wide locks: a file in the temp folder held with flock for the duration of a `with` block."""
from __future__ import annotations

import contextlib
import fcntl
import tempfile
from pathlib import Path


@contextlib.contextmanager
def machine_lock(name: str):
    """Exclusive among every process of this machine that asks for the same `name`."""
    with open(Path(tempfile.gettempdir()) / f"pytest-moeperf-{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
