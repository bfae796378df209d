"""Where the Triton kernels can run and the launch parameters each backend gets.

`TRITON_INTERPRET=1` is read by `triton.jit` when a kernel is decorated, so it must be set before `kernels` is
imported; `INTERPRETED` records what actually happened.
"""
from __future__ import annotations

import triton
import torch

from kernels import _index

INTERPRETED = not isinstance(_index.count_kernel, triton.runtime.JITFunction)


def next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def supported() -> bool:
    """True where these kernels can run: a CUDA device, or the Triton interpreter on the CPU."""
    return INTERPRETED or torch.cuda.is_available()


def require_runnable(t: torch.Tensor, name: str) -> None:
    if t.is_cuda:
        return
    if t.device.type == "cpu" and INTERPRETED:
        return
    hint = (" Set TRITON_INTERPRET=1 before importing kernels to run them on the CPU under the Triton interpreter."
            if t.device.type == "cpu" else "")
    raise ValueError(f"{name} is on device {t.device}, where the Triton kernels cannot run.{hint}")


def hist_width(num_buckets: int) -> int:
    """Columns of the per-chunk histogram: the real buckets plus one for dropped routes, rounded to a power of 2."""
    return next_pow2(num_buckets + 1)


def chunk_size(width: int) -> int:
    """Routes ranked by one program of the count kernel (its pairwise rank tile is chunk x chunk)."""
    if INTERPRETED:
        return 256
    return 128 if width <= 256 else 64


def row_block(row_elems: int) -> tuple[int, int]:
    """(rows, columns) of one program of the row-moving kernels."""
    if INTERPRETED:
        cols = min(next_pow2(row_elems), 8192)
        return max(1, 65536 // cols), cols
    cols = min(next_pow2(row_elems), 2048)
    return max(1, 4096 // cols), cols


def num_warps(tile_elems: int) -> int:
    return 4 if tile_elems <= 2048 else 8
