"""Triton kernels that move hidden-state rows: the permute gather and the weighted unpermute reduction.

Row addresses are computed in 64 bits, so R*H >= 2**31 does not overflow. The permute kernel moves raw bits
(the caller passes integer views), so every dtype, float8 included, is copied exactly.
"""
import triton
import triton.language as tl

from kernels._index import route_bucket, route_row


@triton.jit
def permute_rows_kernel(topk_ptr, map_ptr, rank_ptr, base_ptr, x_ptr, out_ptr, inv_ptr, m_idx_ptr,
                        scale_ptr, out_scale_ptr, R, E, L, K, H, S,
                        stride_x, stride_out, stride_s, stride_os,
                        HAS_MAP: tl.constexpr, HAS_SCALE: tl.constexpr, W: tl.constexpr, CHUNK: tl.constexpr,
                        BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_S: tl.constexpr):
    pid_h = tl.program_id(1)
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    valid = r < R
    bucket = route_bucket(topk_ptr, map_ptr, r, valid, E, L, HAS_MAP)
    row = route_row(base_ptr, rank_ptr, r, valid, bucket, W, CHUNK)
    local = valid & (bucket < L)
    token = (r // K).to(tl.int64)
    row64 = row.to(tl.int64)
    if pid_h == 0:
        tl.store(inv_ptr + r, row, mask=valid)
        tl.store(m_idx_ptr + row, bucket, mask=local)
        if HAS_SCALE:
            s = tl.arange(0, BLOCK_S)
            sm = local[:, None] & (s[None, :] < S)
            v = tl.load(scale_ptr + token[:, None] * stride_s + s[None, :], mask=sm)
            tl.store(out_scale_ptr + row64[:, None] * stride_os + s[None, :], v, mask=sm)
    cols = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    m = local[:, None] & (cols[None, :] < H)
    v = tl.load(x_ptr + token[:, None] * stride_x + cols[None, :], mask=m)
    tl.store(out_ptr + row64[:, None] * stride_out + cols[None, :], v, mask=m)


@triton.jit
def unpermute_kernel(x_ptr, inv_ptr, w_ptr, out_ptr, limit_ptr, M, K, H, stride_x, stride_out,
                     HAS_W: tl.constexpr, HAS_LIMIT: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr):
    """out[t] = sum_j w[t, j] * x[inv[t*K + j]] in fp32; rows >= *limit_ptr (dropped routes) add exactly 0."""
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    tm = t < M
    cm = cols < H
    if HAS_LIMIT:
        limit = tl.load(limit_ptr).to(tl.int32)
    acc = tl.zeros([BLOCK_T, BLOCK_H], dtype=tl.float32)
    for j in range(0, K):
        route = t * K + j
        row = tl.load(inv_ptr + route, mask=tm, other=0)
        ok = tm
        if HAS_LIMIT:
            ok = ok & (row < limit)
        v = tl.load(x_ptr + row.to(tl.int64)[:, None] * stride_x + cols[None, :],
                    mask=ok[:, None] & cm[None, :], other=0.0).to(tl.float32)
        if HAS_W:
            w = tl.load(w_ptr + route, mask=ok, other=0.0).to(tl.float32)
            v = v * w[:, None]
        acc += v
    out = out_ptr + t.to(tl.int64)[:, None] * stride_out + cols[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=tm[:, None] & cm[None, :])
