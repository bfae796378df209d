"""Whether Triton's interpreter (TRITON_INTERPRET=1, the CPU path) can run the built-in kernels here.

Triton 3.6's interpreter turns a loop bound passed to a kernel into an int with int() of a one-element NumPy array,
which NumPy 2.4 and newer refuse (triton-lang/triton#9171; Triton 3.9's squeezes the array first): every kernel with
a loop over a runtime bound then fails deep inside the interpreter. A GPU image with Triton 3.6 and NumPy 2.5 has
both. One tiny kernel tells, and the plugin says what to change instead of failing each test with that traceback.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl


@triton.jit
def _count_to(out_ptr, n):
    total = tl.zeros([1], dtype=tl.int32)
    for _ in range(0, n, 1):
        total += 1
    tl.store(out_ptr + tl.arange(0, 1), total)


@functools.cache
def problem() -> str | None:
    """None when a kernel with a loop over a runtime bound runs under the interpreter; else what to change."""
    out = torch.zeros(1, dtype=torch.int32)
    try:
        _count_to[(1,)](out, 3)
    except Exception as e:  # the interpreter wraps what failed in its own InterpreterError
        import numpy

        return (f"Triton {triton.__version__}'s interpreter (TRITON_INTERPRET=1, used without a GPU) cannot run "
                f"them with NumPy {numpy.__version__} (a loop up to a kernel argument raises {type(e).__name__}: "
                f"triton-lang/triton#9171); install numpy<2.4, or Triton 3.9")
    if int(out[0]) != 3:
        return f"Triton {triton.__version__}'s interpreter counted a loop of 3 as {int(out[0])}"
    return None
