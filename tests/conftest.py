import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# The kernels run under the Triton interpreter on a machine without a GPU. triton.jit reads the variable when it
# decorates a kernel, so it is set here, before any test module imports `kernels`.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def device():
    return DEVICE


@pytest.fixture(autouse=True)
def poison_new_buffers():
    """Every torch.empty the kernels make is filled with NaN / the largest integer, so unwritten outputs show."""
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    old_fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(old_det, warn_only=old_warn)
    torch.utils.deterministic.fill_uninitialized_memory = old_fill

pytest_plugins = ["pytester"]


@pytest.fixture
def env(pytester, monkeypatch):
    """pytester whose runs import this checkout (in-process and in subprocesses) and interpret the kernels on a CPU."""
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if not torch.cuda.is_available():  # subprocess runs must interpret the kernels too
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv("FAKE_FACTOR", raising=False)
    return pytester
