"""Triton kernels of the vLLM fused-MoE permute API (SPEC section 1).

Installed as `moeperf_kernels` (the source folder is kernels/; the name `kernels` on PyPI is another project), so
its imports are relative. The legacy moe_permute signature is here; vLLM's current one is `moeperf_kernels.current`.
To run on the CPU, set TRITON_INTERPRET=1 before this import.
"""
from . import current
from ._launch import supported as moe_permute_unpermute_supported
from .align import moe_align_block_size
from .fused_moe import fused_experts
from .permute import _moe_permute, moe_permute
from .scratch import MoEPermuteScratch
from .unpermute import _moe_unpermute_and_reduce, moe_unpermute

__all__ = [
    "MoEPermuteScratch",
    "_moe_permute",
    "_moe_unpermute_and_reduce",
    "current",
    "fused_experts",
    "moe_align_block_size",
    "moe_permute",
    "moe_permute_unpermute_supported",
    "moe_unpermute",
]
