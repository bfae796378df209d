"""Triton kernels that move hidden-state rows: the permute copy (fused with the index for small batches, after
count_kernel for large ones) and the weighted unpermute reduction.

The permute kernels are token-major: a program reads a tile of BLOCK_T tokens x BLOCK_H columns once and writes it
to the rows of each of the tokens' k routes. Row addresses are computed in 64 bits, so R*H >= 2**31 does not
overflow. They move raw bits (the caller passes integer views), so every dtype, float8 included, is copied exactly.
"""
import triton
import triton.language as tl

from ._index import (block_rank, bucket_counts, bucket_ranks, bucket_starts, chunk_rows, direct_index, fill_tail,
                     pair_offsets, pair_rows, pair_sizes, place_routes, route_bucket, route_totals, table_padding,
                     write_padding)


@triton.jit
def load_tokens(x_ptr, scale_ptr, t0, M, H, S, pid_h, stride_x, stride_s,
                HAS_SCALE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_S: tl.constexpr):
    """The tile of tokens [t0, t0+BLOCK_T) x columns of block pid_h, and their scales (program column 0 only)."""
    t = t0 + tl.arange(0, BLOCK_T)
    tm = t < M
    cols = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    v = tl.load(x_ptr + t.to(tl.int64)[:, None] * stride_x + cols[None, :], mask=tm[:, None] & (cols[None, :] < H))
    s = tl.arange(0, BLOCK_S)
    sv = tl.zeros([BLOCK_T, BLOCK_S], dtype=scale_ptr.dtype.element_ty)
    if HAS_SCALE:
        if pid_h == 0:
            sv = tl.load(scale_ptr + t.to(tl.int64)[:, None] * stride_s + s[None, :],
                         mask=tm[:, None] & (s[None, :] < S))
    return v, sv, tm


@triton.jit
def store_rows(out_ptr, out_scale_ptr, v, sv, row, ok, H, S, pid_h, stride_out, stride_os,
               HAS_SCALE: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_S: tl.constexpr):
    """Write the tile (and its scales, from program column 0) to rows `row` where `ok`."""
    row64 = row.to(tl.int64)
    cols = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    tl.store(out_ptr + row64[:, None] * stride_out + cols[None, :], v, mask=ok[:, None] & (cols[None, :] < H))
    if HAS_SCALE:
        if pid_h == 0:
            s = tl.arange(0, BLOCK_S)
            tl.store(out_scale_ptr + row64[:, None] * stride_os + s[None, :], sv,
                     mask=ok[:, None] & (s[None, :] < S))


@triton.jit
def store_tile_routes(out_ptr, out_scale_ptr, v, sv, tm, row, local, H, S, pid_h, stride_out, stride_os,
                      K: tl.constexpr, HAS_SCALE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr,
                      BLOCK_S: tl.constexpr):
    """Write the tile of tokens to the rows of their routes: `row` and `local` hold the tile's BLOCK_T * K routes in
    token-major order (padded to a power of 2); routes not `local` (dropped) are not copied."""
    dest = tl.where(local, row, -1)
    tk = tl.arange(0, BLOCK_T) * K
    for j in tl.static_range(K):
        row_j = tl.gather(dest, tk + j, 0)
        store_rows(out_ptr, out_scale_ptr, v, sv, row_j, tm & (row_j >= 0), H, S, pid_h, stride_out, stride_os,
                   HAS_SCALE, BLOCK_H, BLOCK_S)


@triton.jit
def permute_rows_kernel(topk_ptr, map_ptr, base_ptr, sub_ptr, table_ptr, x_ptr, out_ptr, inv_ptr, m_idx_ptr,
                        scale_ptr, out_scale_ptr, M, E, L, ROUND, H, S, stride_x, stride_out, stride_s, stride_os,
                        CHUNK, K: tl.constexpr, MAP_BUCKETS: tl.constexpr, HAS_SCALE: tl.constexpr,
                        HAS_PAD: tl.constexpr, PAD_COLS: tl.constexpr, W: tl.constexpr, SUB: tl.constexpr,
                        RT: tl.constexpr, RC: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr,
                        BLOCK_S: tl.constexpr, PDL: tl.constexpr):
    """After count_kernel (sub-blocks of SUB routes): the rows of the tile's BLOCK_T * K routes (RT, a power of
    2) at once (chunk_rows), each ranked in its sub-block from the ids (block_rank, RC ids a step); program column 0
    writes inv, m_indices and a share of the buckets' padding (table_padding), every program copies its tile to the
    rows of its tokens' local routes. PDL: launched as count_kernel's dependent, the tile is loaded and the routes
    ranked (count_kernel writes neither the input nor the ids) while count_kernel still runs."""
    pid_h = tl.program_id(1)
    t0 = tl.program_id(0) * BLOCK_T
    v, sv, tm = load_tokens(x_ptr, scale_ptr, t0, M, H, S, pid_h, stride_x, stride_s,
                            HAS_SCALE, BLOCK_T, BLOCK_H, BLOCK_S)
    i = tl.arange(0, RT)
    r = t0 * K + i
    valid = (i < BLOCK_T * K) & (r < M * K)
    bucket = route_bucket(topk_ptr, map_ptr, r, valid, E, L, MAP_BUCKETS)
    rank = block_rank(topk_ptr, map_ptr, bucket, r, t0 * K, tl.minimum(t0 + BLOCK_T, M) * K, E, L, MAP_BUCKETS,
                      SUB, RC)
    if PDL:
        tl.extra.cuda.gdc_wait()
    row = chunk_rows(base_ptr, sub_ptr, table_ptr, bucket, r, rank, valid, CHUNK, W, SUB)
    local = valid & (bucket < L)
    if pid_h == 0:
        tl.store(inv_ptr + r, row, mask=valid)
        tl.store(m_idx_ptr + row, bucket, mask=local)
    store_tile_routes(out_ptr, out_scale_ptr, v, sv, tm, row, local, H, S, pid_h, stride_out, stride_os,
                      K, HAS_SCALE, BLOCK_T, BLOCK_H, BLOCK_S)
    if HAS_PAD:
        if pid_h == 0:
            table_padding(m_idx_ptr, table_ptr, L, ROUND, 0, tl.program_id(0), tl.num_programs(0), False, PAD_COLS, W)


@triton.jit
def permute_fused_kernel(topk_ptr, map_ptr, x_ptr, out_ptr, inv_ptr, m_idx_ptr, offsets_ptr, scale_ptr, out_scale_ptr,
                         M, E, L, ROUND, P, fill_value, H, S, stride_x, stride_out, stride_s, stride_os,
                         K: tl.constexpr, MAP_BUCKETS: tl.constexpr, HAS_SCALE: tl.constexpr,
                         HAS_PAD: tl.constexpr, PAD_COLS: tl.constexpr, W: tl.constexpr, CH: tl.constexpr,
                         SUB: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_S: tl.constexpr,
                         FILL_BLOCK: tl.constexpr, PAIRS: tl.constexpr, RP: tl.constexpr, DIRECT: tl.constexpr,
                         EB: tl.constexpr, RANKS: tl.constexpr, RC: tl.constexpr):
    """moe_permute in one launch: every program builds the index of its own tokens' routes (see _index.py; DIRECT:
    no padding, rows counted straight from the routes; PAIRS: R <= RP, by pairwise comparisons; else the buckets'
    sizes from a histogram of W columns, and each route's rank in its bucket either compared with the routes
    before it, RC a step (RANKS: W needs no column for dropped routes), or from the buckets' counts before the
    program's routes and a square of its own), writes it from program column 0, and copies its tile; all programs
    share the tail and the offsets (DIRECT: EB offsets each), and programs past the last token only do that."""
    pid_t = tl.program_id(0)
    pid_h = tl.program_id(1)
    pid = pid_t * tl.num_programs(1) + pid_h
    nprog = tl.num_programs(0) * tl.num_programs(1)
    R = M * K
    t0 = pid_t * BLOCK_T
    lo = t0 * K
    # The tile's loads go out first and are in flight while the index is built.
    v, sv, tm = load_tokens(x_ptr, scale_ptr, t0, M, H, S, pid_h, stride_x, stride_s,
                            HAS_SCALE, BLOCK_T, BLOCK_H, BLOCK_S)
    i = tl.arange(0, SUB)
    r = lo + i
    valid = (i < BLOCK_T * K) & (r < R)
    bucket = route_bucket(topk_ptr, map_ptr, r, valid, E, L, MAP_BUCKETS)
    local = valid & (bucket < L)
    if DIRECT:
        e = pid * EB + tl.arange(0, EB)
        row, first = direct_index(topk_ptr, map_ptr, bucket, r, e, R, E, L, MAP_BUCKETS, CH)
        tl.store(offsets_ptr + e, first.to(tl.int64), mask=e <= L)
    elif PAIRS:
        bj, size, V = pair_sizes(topk_ptr, map_ptr, R, E, L, ROUND, MAP_BUCKETS, RP)
        row, end, pad = pair_rows(bj, size, bucket, r, ROUND, RP)
    else:
        if RANKS:
            column = tl.minimum(bucket, W - 1)  # W may have no column for dropped routes (their rows start at V)
            total = route_totals(topk_ptr, map_ptr, R, E, L, MAP_BUCKETS, W, CH)
            starts, sizes, V = bucket_starts(total, L, ROUND, W)
            rank = bucket_ranks(topk_ptr, map_ptr, bucket, r, tl.minimum(lo + BLOCK_T * K, R), E, L, MAP_BUCKETS, RC)
            row = tl.where(local, tl.gather(starts, column, 0), V) + rank
        else:
            total, before = bucket_counts(topk_ptr, map_ptr, R, E, L, lo, MAP_BUCKETS, W, CH)
            starts, sizes, V = bucket_starts(total, L, ROUND, W)
            row, _ = place_routes(bucket, valid, starts + before, W, SUB)
            column = bucket
    if pid_h == 0:
        tl.store(inv_ptr + r, row, mask=valid)
        if DIRECT:
            # Without padding the slots past the real rows are the dropped routes' own: each writes its fill.
            tl.store(m_idx_ptr + row, tl.where(local, bucket, fill_value), mask=valid)
        else:
            tl.store(m_idx_ptr + row, bucket, mask=local)
            if HAS_PAD:
                if not PAIRS:
                    end = tl.gather(starts + total, column, 0)
                    pad = tl.gather(sizes - total, column, 0)
                write_padding(m_idx_ptr, bucket, row, local, end, pad, ROUND, 0, False, PAD_COLS)
    store_tile_routes(out_ptr, out_scale_ptr, v, sv, tm, row, local, H, S, pid_h, stride_out, stride_os,
                      K, HAS_SCALE, BLOCK_T, BLOCK_H, BLOCK_S)
    if not DIRECT:
        fill_tail(m_idx_ptr, V, P, fill_value, pid, nprog, FILL_BLOCK)
        if PAIRS:
            pair_offsets(offsets_ptr, bj, size, L, pid, nprog, 32)
        elif pid == 0:
            b = tl.arange(0, W)
            tl.store(offsets_ptr + b, starts.to(tl.int64), mask=b <= L)
            if RANKS:
                tl.store(offsets_ptr + L, V.to(tl.int64))  # W may have no column L


@triton.jit
def unpermute_kernel(x_ptr, inv_ptr, w_ptr, out_ptr, limit_ptr, M, H, P, stride_x, stride_out, K: tl.constexpr,
                     HAS_W: tl.constexpr, HAS_LIMIT: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr):
    """out[t] = sum_j w[t, j] * x[inv[t*K + j]] in fp32; rows >= *limit_ptr (dropped routes) and rows outside
    [0, P) (x has P rows: a bad index) add exactly 0."""
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    tm = t < M
    cm = cols < H
    if HAS_LIMIT:
        limit = tl.load(limit_ptr).to(tl.int32)
    acc = tl.zeros([BLOCK_T, BLOCK_H], dtype=tl.float32)
    for j in tl.static_range(K):  # unrolled: the k row loads are in flight together
        route = t * K + j
        row = tl.load(inv_ptr + route, mask=tm, other=0)
        ok = tm & (row >= 0) & (row < P)
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
