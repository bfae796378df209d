"""The grouped expert GEMM of fused_experts: C[route] = A[row of route] @ B[expert of route]^T, one program per
BLOCK_M slots of moe_align_block_size's sorted routes x BLOCK_N output columns.

Every block of BLOCK_M sorted slots belongs to one expert (align pads each expert's region to BLOCK_M), so a program
loads one expert's weight tile once for BLOCK_M routes. Slots past the routes (padding, value R) are masked; blocks
of non-local experts (expert id -1 under expert parallelism) write zeros, so every local or non-local route's row of
C is defined. Scales (fp8_w8a8, int8_w8a16) are applied per K block (block quantization) or once after the K loop.
"""
import triton
import triton.language as tl

# Scale layouts (A_SCALE / B_SCALE; globals a kernel reads must be tl.constexpr, and launches pass `.value`).
NO_SCALE = tl.constexpr(0)
PER_TENSOR = tl.constexpr(1)  # A: one scalar; B: one scalar per expert
PER_ROW = tl.constexpr(2)  # A: one per row (token); B: one per output channel of each expert
PER_BLOCK = tl.constexpr(3)  # A: one per row and K group; B: one per (N group, K group) of each expert


@triton.jit
def rounded(x, dtype: tl.constexpr, EMULATE_RTNE: tl.constexpr):
    """fp32 x in dtype, rounded to nearest even. The Triton interpreter truncates fp32 -> bf16; EMULATE_RTNE adds
    the rounding bias to the bits first, so CPU runs round as the GPU does."""
    if EMULATE_RTNE and dtype == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        x = (bits + 0x7FFF + ((bits >> 16) & 1)).to(tl.float32, bitcast=True)
    return x.to(dtype)


@triton.jit(do_not_specialize=["R", "GROUP_M"])  # one kernel for every batch size and group order
def expert_gemm_kernel(a_ptr, b_ptr, c_ptr, a_scale_ptr, b_scale_ptr, w_ptr, sorted_ptr, expert_ids_ptr, ntpp_ptr,
                       R, N, K, stride_am, stride_be, stride_bn, stride_cm, stride_asm, stride_ask, stride_bse,
                       stride_bsn, stride_bsk, group_n, group_k, GROUP_M,
                       ROW_DIV: tl.constexpr, MUL_WEIGHT: tl.constexpr, A_SCALE: tl.constexpr,
                       B_SCALE: tl.constexpr, B_TO_A: tl.constexpr, UPCAST: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """A [rows, K] (row of route r = r // ROW_DIV), B [E, N, K] (K contiguous), C [R, N]; w = topk_weights (flat, R),
    multiplied in with MUL_WEIGHT. B_TO_A: B is int8 and is converted to A's dtype (int8_w8a16). UPCAST: multiply
    in fp32 and round the output as a GPU does (the Triton interpreter's dot is wrong for bf16). GROUP_M is a
    runtime argument: it only orders the programs, so a tuning sweep does not compile a kernel per value."""
    pid = tl.program_id(0)
    num_m = tl.cdiv(tl.load(ntpp_ptr), BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    # Grouped order: GROUP_M row blocks share each column block of B while it is in L2.
    per_group = GROUP_M * num_n
    first_m = (pid // per_group) * GROUP_M
    if first_m >= num_m:  # past the blocks that hold routes
        return
    rows_in_group = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % rows_in_group
    pid_n = (pid % per_group) // rows_in_group
    if pid_m >= num_m:
        return
    slots = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    route = tl.load(sorted_ptr + slots)
    valid = route < R
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    c_ptrs = c_ptr + route.to(tl.int64)[:, None] * stride_cm + cols[None, :]
    expert = tl.load(expert_ids_ptr + pid_m).to(tl.int64)
    if expert < 0:  # a non-local expert's block: its routes contribute nothing here
        tl.store(c_ptrs, tl.zeros([BLOCK_M, BLOCK_N], dtype=c_ptr.dtype.element_ty),
                 mask=valid[:, None] & col_ok[None, :])
        return
    a_rows = (route // ROW_DIV).to(tl.int64)
    ks = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + a_rows[:, None] * stride_am + ks[None, :]
    b_ptrs = b_ptr + expert * stride_be + cols.to(tl.int64)[None, :] * stride_bn + ks[:, None]
    if A_SCALE == PER_BLOCK:
        a_s_ptrs = a_scale_ptr + a_rows * stride_asm
        b_s_ptrs = b_scale_ptr + expert * stride_bse + (cols // group_n) * stride_bsn
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = ks < K - k0
        a = tl.load(a_ptrs, mask=valid[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        if UPCAST:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        elif B_TO_A:
            b = b.to(a.dtype)
        if A_SCALE == PER_BLOCK:
            a_s = tl.load(a_s_ptrs + (k0 // group_k) * stride_ask, mask=valid, other=0.0)
            b_s = tl.load(b_s_ptrs + (k0 // group_k) * stride_bsk, mask=col_ok, other=0.0)
            acc += tl.dot(a, b) * a_s[:, None] * b_s[None, :]
        else:
            acc += tl.dot(a, b)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K
    if A_SCALE == PER_TENSOR:
        acc *= tl.load(a_scale_ptr)
    elif A_SCALE == PER_ROW:
        acc *= tl.load(a_scale_ptr + a_rows * stride_asm, mask=valid, other=0.0)[:, None]
    if B_SCALE == PER_TENSOR:
        acc *= tl.load(b_scale_ptr + expert * stride_bse)
    elif B_SCALE == PER_ROW:
        acc *= tl.load(b_scale_ptr + expert * stride_bse + cols * stride_bsn, mask=col_ok, other=0.0)[None, :]
    if MUL_WEIGHT:
        acc *= tl.load(w_ptr + route, mask=valid, other=0.0).to(tl.float32)[:, None]
    tl.store(c_ptrs, rounded(acc, c_ptr.dtype.element_ty, UPCAST), mask=valid[:, None] & col_ok[None, :])


@triton.jit
def silu_and_mul_kernel(x_ptr, out_ptr, N, stride_x, stride_out, EMULATE_RTNE: tl.constexpr, BLOCK: tl.constexpr):
    """out[r] = silu(x[r, :N]) * x[r, N:2N] in fp32, one program per row and BLOCK columns."""
    r = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < N
    gate = tl.load(x_ptr + r * stride_x + cols, mask=ok, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + r * stride_x + N + cols, mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + r * stride_out + cols, rounded(gate / (1.0 + tl.exp(-gate)) * up, out_ptr.dtype.element_ty,
                                                      EMULATE_RTNE), mask=ok)
