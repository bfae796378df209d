"""Triton kernels of the vLLM fused-MoE permute API (SPEC section 1).

Imported from the repository root (it is not installed: `kernels` on PyPI is another project). To run on the CPU,
set TRITON_INTERPRET=1 before this import.
"""
from kernels._launch import supported as moe_permute_unpermute_supported
from kernels.align import moe_align_block_size
from kernels.fused_moe import fused_experts
from kernels.permute import _moe_permute, moe_permute
from kernels.scratch import MoEPermuteScratch
from kernels.unpermute import _moe_unpermute_and_reduce, moe_unpermute

__all__ = [
    "MoEPermuteScratch",
    "_moe_permute",
    "_moe_unpermute_and_reduce",
    "fused_experts",
    "moe_align_block_size",
    "moe_permute",
    "moe_permute_unpermute_supported",
    "moe_unpermute",
]
