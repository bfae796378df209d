"""Compiles Triton kernels for an H100 (sm_90) without a GPU: fused_experts' in every operand and scale layout the
launcher uses, and the index kernels as launched on Hopper (as programmatic dependents of count_kernel, PDL). The
Triton interpreter runs kernels as Python and lets through code the GPU compiler rejects (a global read in a kernel,
a dot of mismatched types), and it has no dependent launch. Run by tests/test_fused_moe.py in a process of its own,
since TRITON_INTERPRET, set for the other tests, decides at import time what triton.jit makes.

    python tests/hopper_compile.py   # prints one line per kernel compiled; exit status 1 on the first failure
"""
import os
import sys
from pathlib import Path

assert os.environ.get("TRITON_INTERPRET", "0") in ("", "0"), "run without TRITON_INTERPRET"
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402

from moeperf_kernels import _gemm, _index, _rows  # noqa: E402

HOPPER = GPUTarget("cuda", 90, 32)
NOT_ALIGNED = {"R", "group_n", "group_k"}  # every other integer a launch passes is a multiple of 16 in the scenarios


def compile_for_hopper(kernel, pointer_types: dict, constexprs: dict, aligned: bool = True, **options):
    """Compile `kernel` for sm_90: pointer arguments typed by pointer_types (i32 if not named), other non-constexpr
    ones i32, said to be multiples of 16 where `aligned` (but NOT_ALIGNED)."""
    signature, attrs = {}, {}
    for i, p in enumerate(kernel.params):
        if p.is_constexpr:
            signature[p.name] = "constexpr"
            continue
        pointer = p.name.endswith("_ptr")
        signature[p.name] = f"*{pointer_types.get(p.name, 'i32')}" if pointer else "i32"
        if aligned and p.name not in NOT_ALIGNED:
            attrs[(i,)] = [["tt.divisibility", 16]]
    src = triton.compiler.ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=HOPPER, options=options)


# (A, B, C element types, A_SCALE, B_SCALE, B_TO_A): the modes fused_experts launches
MODES = {
    "bf16": ("bf16", "bf16", "bf16", _gemm.NO_SCALE, _gemm.NO_SCALE, False),
    "fp16": ("fp16", "fp16", "fp16", _gemm.NO_SCALE, _gemm.NO_SCALE, False),
    "int8_w8a16": ("bf16", "i8", "bf16", _gemm.NO_SCALE, _gemm.PER_ROW, True),
    "fp8 per tensor": ("fp8e4nv", "fp8e4nv", "bf16", _gemm.PER_TENSOR, _gemm.PER_TENSOR, False),
    "fp8 per token/channel": ("fp8e4nv", "fp8e4nv", "bf16", _gemm.PER_ROW, _gemm.PER_ROW, False),
    "fp8 block": ("fp8e4nv", "fp8e4nv", "bf16", _gemm.PER_BLOCK, _gemm.PER_BLOCK, False),
}


def main() -> int:
    for i, (mode, (a, b, c, a_scale, b_scale, b_to_a)) in enumerate(MODES.items()):
        pointers = dict(a_ptr=a, b_ptr=b, c_ptr=c, a_scale_ptr="fp32", b_scale_ptr="fp32", w_ptr="fp32",
                        sorted_ptr="i32", expert_ids_ptr="i32", ntpp_ptr="i32")
        constexprs = dict(ROW_DIV=2, MUL_WEIGHT=i % 2 == 1, A_SCALE=a_scale.value, B_SCALE=b_scale.value,
                          B_TO_A=b_to_a, UPCAST=False, BLOCK_M=64, BLOCK_N=128, BLOCK_K=64)
        k = compile_for_hopper(_gemm.expert_gemm_kernel, pointers, constexprs, num_warps=8, num_stages=3)
        print(f"expert_gemm_kernel {mode}: {k.metadata.shared} bytes of shared memory")
    for t in ("bf16", "fp16"):
        compile_for_hopper(_gemm.silu_and_mul_kernel, dict(x_ptr=t, out_ptr=t), dict(EMULATE_RTNE=False, BLOCK=1024))
        print(f"silu_and_mul_kernel {t}: compiled")
    index = dict(HAS_PAD=True, PAD_COLS=64, W=512, PDL=True)  # DeepSeek-V3's 256 experts, rows aligned to 128
    dependents = [
        (_index.count_kernel, dict(head_ptr="i64"), dict(index, IS_ALIGN=False, MAP_BUCKETS=False,
                                                         MAP_EXPERT_IDS=False, SUB=128, BLOCK_C=8, FILL_BLOCK=1024),
         "launch_dependents"),
        (_rows.permute_rows_kernel, dict(x_ptr="i8", out_ptr="i8", scale_ptr="fp32", out_scale_ptr="fp32"),
         dict(index, K=8, MAP_BUCKETS=False, HAS_SCALE=True, SUB=128, RT=16, RC=256, BLOCK_T=2, BLOCK_H=4096,
              BLOCK_S=64), "wait"),
        (_index.align_place_kernel, {}, dict(index, MAP_EXPERT_IDS=False, SUB=128, BLOCK=64, RC=64), "wait"),
    ]
    for kernel, pointers, constexprs, instruction in dependents:
        k = compile_for_hopper(kernel, pointers, constexprs, aligned=False, num_warps=4)
        found = f"griddepcontrol.{instruction}" in k.asm["ptx"]
        print(f"{kernel.fn.__name__} PDL: griddepcontrol.{instruction} {'emitted' if found else 'MISSING'}")
    # The one-launch permute in its four ways of building the index, fp8 rows with scales over 256 experts.
    fused = dict(K=8, MAP_BUCKETS=False, HAS_SCALE=True, PAD_COLS=64, SUB=8, BLOCK_T=1, BLOCK_H=2048,
                 BLOCK_S=64, FILL_BLOCK=1024, EB=1, RP=1, RANKS=False, RC=1, DIRECT=False, PAIRS=False, W=512)
    for how in (dict(DIRECT=True, EB=16, CH=512, HAS_PAD=False),
                dict(PAIRS=True, RP=64, CH=16, HAS_PAD=True),
                dict(CH=512, HAS_PAD=True),
                dict(RANKS=True, RC=512, W=256, CH=512, HAS_PAD=True)):
        how = {**fused, **how}
        k = compile_for_hopper(_rows.permute_fused_kernel, dict(x_ptr="i8", out_ptr="i8", scale_ptr="fp32",
                                                                out_scale_ptr="fp32", offsets_ptr="i64"),
                               how, aligned=False, num_warps=4)
        ways = ", ".join(f"{key}={how[key]}" for key in ("DIRECT", "PAIRS", "RANKS"))
        print(f"permute_fused_kernel {ways}: {len(k.asm['cubin'])} bytes")
    # The one-launch align: one expert (a one-column histogram) and 256 experts.
    for width in (1, 256):
        compile_for_hopper(_index.align_bucket_kernel, {}, dict(MAP_EXPERT_IDS=True, W=width, CH=1024, PAD_BLOCK=64,
                                                                FILL_BLOCK=1024), aligned=False, num_warps=4)
        print(f"align_bucket_kernel W={width}: compiled")
    return 0


if __name__ == "__main__":
    sys.exit(main())
