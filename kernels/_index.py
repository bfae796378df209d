"""Triton kernels that build the route -> row index without a sort.

Every route r gets a bucket (its expert, or the extra bucket NB for dropped routes). The index is built in three
steps that both moe_align_block_size and moe_permute share:

1. count_kernel, one program per chunk of CHUNK routes: the chunk's histogram of buckets and each route's stable
   rank among the earlier routes of its chunk with the same bucket;
2. scan_kernel, one program: bucket totals, sizes rounded up to ROUND, bucket start rows, and for every chunk the
   row where its first route of each bucket lands (start + routes of that bucket in earlier chunks); it also writes
   the slots no route will own (padding inside a region and the tail);
3. a place kernel (align_place_kernel here, or the row mover in _rows.py): row = base[chunk, bucket] + rank.

Rows inside a bucket are therefore in ascending route order, and the result is deterministic.
"""
import triton
import triton.language as tl


@triton.jit
def route_bucket(topk_ptr, map_ptr, r, valid, E, NB, HAS_MAP: tl.constexpr):
    """Bucket of each route r: its (local) expert in [0, NB), or NB when the route is dropped.

    Ids outside [0, E) are dropped and never used as an address; with an expert map, so are experts the map gives
    as < 0 or >= NB.
    """
    ids = tl.load(topk_ptr + r, mask=valid, other=-1).to(tl.int32)
    ok = valid & (ids >= 0) & (ids < E)
    if HAS_MAP:
        local = tl.load(map_ptr + ids, mask=ok, other=-1).to(tl.int32)
    else:
        local = ids
    ok = ok & (local >= 0) & (local < NB)
    return tl.where(ok, local, NB)


@triton.jit
def route_row(base_ptr, rank_ptr, r, valid, bucket, W: tl.constexpr, CHUNK: tl.constexpr):
    """Row of each route once scan_kernel has written the per-chunk bases."""
    base = tl.load(base_ptr + (r // CHUNK) * W + bucket, mask=valid, other=0)
    return base + tl.load(rank_ptr + r, mask=valid, other=0)


@triton.jit
def count_kernel(topk_ptr, map_ptr, hist_ptr, rank_ptr, R, E, NB,
                 HAS_MAP: tl.constexpr, W: tl.constexpr, CHUNK: tl.constexpr):
    c = tl.program_id(0)
    i = tl.arange(0, CHUNK)
    r = c * CHUNK + i
    valid = r < R
    bucket = route_bucket(topk_ptr, map_ptr, r, valid, E, NB, HAS_MAP)
    earlier_same = (bucket[:, None] == bucket[None, :]) & (i[None, :] < i[:, None])
    rank = tl.sum(earlier_same.to(tl.int32), axis=1)
    tl.store(rank_ptr + r, rank, mask=valid)
    hist = tl.histogram(bucket, W, mask=valid)
    tl.store(hist_ptr + c * W + tl.arange(0, W), hist)


@triton.jit
def scan_kernel(hist_ptr, base_ptr, C, NB, ROUND, P,
                unrouted_ptr, unrouted_value,
                offsets_ptr, ntpp_ptr, expert_ids_ptr, num_blocks,
                IS_ALIGN: tl.constexpr, W: tl.constexpr, BLOCK_C: tl.constexpr,
                PAD_COLS: tl.constexpr, BLOCK_T: tl.constexpr):
    b = tl.arange(0, W)
    real = b < NB
    totals = tl.zeros([W], dtype=tl.int32)
    for c0 in range(0, C, BLOCK_C):
        cc = c0 + tl.arange(0, BLOCK_C)
        h = tl.load(hist_ptr + cc[:, None] * W + b[None, :], mask=cc[:, None] < C, other=0)
        totals += tl.sum(h, axis=0)
    sizes = tl.where(real, (totals + ROUND - 1) // ROUND * ROUND, 0)
    ends = tl.cumsum(sizes, axis=0)
    V = tl.sum(sizes, axis=0)
    starts = tl.where(real, ends - sizes, V)  # dropped routes take the rows from V on

    run = starts
    for c0 in range(0, C, BLOCK_C):
        cc = c0 + tl.arange(0, BLOCK_C)
        m = cc[:, None] < C
        h = tl.load(hist_ptr + cc[:, None] * W + b[None, :], mask=m, other=0)
        tl.store(base_ptr + cc[:, None] * W + b[None, :], run[None, :] + tl.cumsum(h, axis=0) - h, mask=m)
        run += tl.sum(h, axis=0)

    # Slots no route owns: the padding at the end of each bucket's region (the sentinel for align, the region's
    # expert for permute's m_indices), then the tail [V, P) (unrouted_value).
    pad = tl.where(real, sizes - totals, 0)
    first_pad = starts + totals
    if IS_ALIGN:
        pad_value = tl.zeros([W], tl.int32) + unrouted_value
    else:
        pad_value = b
    for j0 in range(0, ROUND, PAD_COLS):
        j = j0 + tl.arange(0, PAD_COLS)
        slots = first_pad[:, None] + j[None, :]
        tl.store(unrouted_ptr + slots, tl.zeros([W, PAD_COLS], tl.int32) + pad_value[:, None],
                 mask=j[None, :] < pad[:, None])
    fill = tl.zeros([BLOCK_T], tl.int32) + unrouted_value
    for t0 in range(V, P, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        tl.store(unrouted_ptr + t, fill, mask=t < P)

    if IS_ALIGN:
        tl.store(ntpp_ptr, V)
        none = tl.zeros([BLOCK_T], tl.int32) - 1
        for t0 in range(V // ROUND, num_blocks, BLOCK_T):
            t = t0 + tl.arange(0, BLOCK_T)
            tl.store(expert_ids_ptr + t, none, mask=t < num_blocks)
    else:
        tl.store(offsets_ptr + b, starts.to(tl.int64), mask=b <= NB)


@triton.jit
def align_place_kernel(topk_ptr, map_ptr, rank_ptr, base_ptr, sorted_ptr, expert_ids_ptr, R, E, BLOCK_SIZE,
                       HAS_MAP: tl.constexpr, W: tl.constexpr, CHUNK: tl.constexpr, BLOCK_R: tl.constexpr):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    valid = r < R
    bucket = route_bucket(topk_ptr, map_ptr, r, valid, E, E, False)
    keep = valid & (bucket < E)
    row = route_row(base_ptr, rank_ptr, r, keep, bucket, W, CHUNK)
    tl.store(sorted_ptr + row, r, mask=keep)
    # Each block of an expert's region starts with one of its routes: that route names the block's expert.
    first = keep & (row % BLOCK_SIZE == 0)
    if HAS_MAP:
        expert = tl.load(map_ptr + bucket, mask=first, other=-1).to(tl.int32)
    else:
        expert = bucket
    tl.store(expert_ids_ptr + row // BLOCK_SIZE, expert, mask=first)
