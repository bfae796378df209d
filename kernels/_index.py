"""Triton kernels that place every route in its expert's region without a sort.

Every route r gets a bucket (its expert, or the extra bucket NB for dropped routes). Its row is the first row of its
bucket (bucket sizes rounded up to ROUND, prefix-summed; buckets >= NB start at V, the number of valid rows) plus
the routes of that bucket before r. Rows inside a bucket are therefore in ascending route order, and the result is
deterministic. Two ways to get there:

- small batches (permute_fused_kernel in _rows.py): a program that owns the routes [lo, hi) counts the buckets of
  ALL routes and of those before lo (bucket_counts: the topk ids are a few kilobytes, in L2 after the first program
  reads them), then ranks its own routes (place_routes). No other launch, no communication between programs; the
  redundant counting grows with R times the grid, so this is for R <= small_batch_routes(). moe_align_block_size,
  which moves no rows, gives each program an expert instead (align_bucket_kernel): one histogram, no ranking square.
- large batches (count_kernel): each program counts one chunk's routes a sub-block at a time, writing the counts
  before each sub-block and the chunk's histogram; the last program to finish (a ticket counter) turns the
  histograms into per-chunk bases and each bucket's first row. A route's row is then first[bucket] + base[chunk,
  bucket] + the routes of its bucket in the chunk's sub-blocks before its own + its rank in its sub-block
  (chunk_rows), which the placing kernel counts from the ids while count_kernel still runs (block_rank).

The slots no route owns: each bucket's padding is written by the route that ends the bucket (write_padding; after
count_kernel, by the placing kernel's programs a block of buckets each, table_padding), the tail [V, P) by fill_tail,
spread over the programs.

The per-bucket counts above are as wide as the number of experts (512 columns for 256 experts), and on a small batch
their histograms, prefix sum and gathers, not the rows, are most of a program's time. Two ways around them:
- without padding (moe_permute with no align_block_size) a row needs no bucket sizes: it is the number of routes in
  lower buckets or before it in its bucket, which every program of the one-launch permute counts straight from the
  routes for its own (direct_index), while _launch.direct_fits();
- with padding, batches of up to pair_routes() routes compare every route with every other (pair_sizes, pair_rows,
  pair_offsets).
Either way nothing is wider than the batch and the cost does not grow with the experts. Past those, while a program
compares few enough routes (_launch.rank_fits: fewer the narrower the counts, and narrow ones up to 512 routes), a
program keeps one histogram, of the real buckets only (route_totals; 256 columns for 256 experts where bucket_counts
takes 512, twice), and ranks its routes by comparing them with the routes before them (bucket_ranks) instead of
counting the routes before its own per bucket.
"""
import triton
import triton.language as tl


@triton.jit
def route_bucket(topk_ptr, map_ptr, r, valid, E, NB, HAS_MAP: tl.constexpr):
    """Bucket of each route r: its (local) expert in [0, NB), or NB when the route is dropped."""
    return bucket_of(tl.load(topk_ptr + r, mask=valid, other=-1), map_ptr, valid, E, NB, HAS_MAP)


@triton.jit
def bucket_of(raw, map_ptr, valid, E, NB, HAS_MAP: tl.constexpr):
    """Bucket of routes whose topk ids are `raw` (see route_bucket). Ids outside [0, E) are dropped and never used
    as an address; with an expert map, so are experts the map gives as < 0 or >= NB."""
    ok = valid & (raw >= 0) & (raw < E)  # in the ids' own width: an int64 id of 2**32 + 1 is no expert 1
    ids = raw.to(tl.int32)
    if HAS_MAP:
        local = tl.load(map_ptr + ids, mask=ok, other=-1).to(tl.int32)
    else:
        local = ids
    ok = ok & (local >= 0) & (local < NB)
    return tl.where(ok, local, NB)


@triton.jit
def bucket_counts(topk_ptr, map_ptr, R, E, NB, lo, HAS_MAP: tl.constexpr, W: tl.constexpr, CH: tl.constexpr):
    """(routes of each bucket among all R routes, among the routes r < lo). Each chunk of routes is counted once:
    counting every chunk for both sums cost a fused permute over 256 experts ~1 us more on an H100."""
    lo = tl.minimum(lo, R)
    before = tl.zeros([W], dtype=tl.int32)
    for c0 in range(0, lo, CH):
        r = c0 + tl.arange(0, CH)
        m = r < lo
        before = before + tl.histogram(route_bucket(topk_ptr, map_ptr, r, m, E, NB, HAS_MAP), W, mask=m)
    total = before + 0
    for c0 in range(lo, R, CH):
        r = c0 + tl.arange(0, CH)
        m = r < R
        total = total + tl.histogram(route_bucket(topk_ptr, map_ptr, r, m, E, NB, HAS_MAP), W, mask=m)
    return total, before


@triton.jit
def route_totals(topk_ptr, map_ptr, R, E, NB, HAS_MAP: tl.constexpr, W: tl.constexpr, CH: tl.constexpr):
    """Routes of each real bucket among all R routes: one histogram of W >= NB columns, CH routes a step (dropped
    routes have no column)."""
    total = tl.zeros([W], dtype=tl.int32)
    for c0 in range(0, R, CH):
        r = c0 + tl.arange(0, CH)
        total += real_counts(route_bucket(topk_ptr, map_ptr, r, r < R, E, NB, HAS_MAP), NB, W)
    return total


@triton.jit
def real_counts(bucket, NB, W: tl.constexpr):
    """Histogram of the routes of the real buckets (< NB) over W >= NB columns; dropped routes have no column."""
    return tl.histogram(tl.where(bucket < NB, bucket, 0), W, mask=bucket < NB)


@triton.jit
def bucket_ranks(topk_ptr, map_ptr, bucket, r, hi, E, NB, HAS_MAP: tl.constexpr, CH: tl.constexpr):
    """Rank of each route r < hi in its bucket (dropped routes too, among themselves): the routes j < r of the same
    bucket, compared CH at a time. Nothing as wide as the buckets; the cost grows with the routes ranked times hi."""
    rank = tl.zeros_like(r)
    for c0 in range(0, hi, CH):
        j = c0 + tl.arange(0, CH)
        bj = route_bucket(topk_ptr, map_ptr, j, j < hi, E, NB, HAS_MAP)
        rank += tl.sum(((bj[None, :] == bucket[:, None]) & (j[None, :] < r[:, None])).to(tl.int32), axis=1)
    return rank


@triton.jit
def bucket_starts(total, NB, ROUND, W: tl.constexpr):
    """(first row of each bucket, its size rounded up to ROUND, V = rows of the real buckets)."""
    b = tl.arange(0, W)
    real = b < NB
    sizes = tl.where(real, (total + ROUND - 1) // ROUND * ROUND, 0)
    ends = tl.cumsum(sizes, axis=0)
    V = tl.sum(sizes, axis=0)
    return tl.where(real, ends - sizes, V), sizes, V


@triton.jit
def place_routes(bucket, valid, run, W: tl.constexpr, SUB: tl.constexpr):
    """Rows of one sub-block of consecutive routes, and `run` (the next free row of each bucket) moved past them."""
    i = tl.arange(0, SUB)
    earlier_same = (bucket[:, None] == bucket[None, :]) & (i[None, :] < i[:, None])
    rank = tl.sum(earlier_same.to(tl.int32), axis=1)
    row = tl.gather(run, bucket, 0) + rank
    return row, run + tl.histogram(bucket, W, mask=valid)


@triton.jit
def pair_sizes(topk_ptr, map_ptr, R, E, NB, ROUND, HAS_MAP: tl.constexpr, RP: tl.constexpr):
    """For a batch of R <= RP routes: (bucket of each route j < RP, the rounded size of that bucket if j is its
    first route else 0, V = rows of the real buckets). Slots j >= R count as dropped. One RP x RP square, no loop."""
    j = tl.arange(0, RP)
    bj = route_bucket(topk_ptr, map_ptr, j, j < R, E, NB, HAS_MAP)
    same = route_bucket(topk_ptr, map_ptr, j, j < R, E, NB, HAS_MAP)[:, None] == bj[None, :]
    count = tl.sum(same.to(tl.int32), axis=0)
    earlier = tl.sum((same & (j[:, None] < j[None, :])).to(tl.int32), axis=0)
    size = tl.where((earlier == 0) & (bj < NB), (count + ROUND - 1) // ROUND * ROUND, 0)
    return bj, size, tl.sum(size, axis=0)


@triton.jit
def pair_rows(bj, size, bucket, r, ROUND, RP: tl.constexpr):
    """(row, end of the bucket's routes, its padding slots) of routes r in `bucket`, from pair_sizes: the sizes of
    the buckets below plus the routes of the same bucket before r. Dropped routes (bucket NB) start at V."""
    j = tl.arange(0, RP)
    mine = bj[None, :] == bucket[:, None]
    start = tl.sum(tl.where(bj[None, :] < bucket[:, None], size[None, :], 0), axis=1)
    count = tl.sum(mine.to(tl.int32), axis=1)
    rank = tl.sum((mine & (j[None, :] < r[:, None])).to(tl.int32), axis=1)
    return start + rank, start + count, (count + ROUND - 1) // ROUND * ROUND - count


@triton.jit
def pair_offsets(offsets_ptr, bj, size, NB, pid, nprog, EB: tl.constexpr):
    """expert_first_token_offset[0..NB] (int64) from pair_sizes, blocks of EB entries spread over the programs."""
    for e0 in range(pid * EB, NB + 1, nprog * EB):
        e = e0 + tl.arange(0, EB)
        first = tl.sum(tl.where(bj[None, :] < e[:, None], size[None, :], 0), axis=1)
        tl.store(offsets_ptr + e, first.to(tl.int64), mask=e <= NB)


@triton.jit
def direct_index(topk_ptr, map_ptr, bucket, r, e, R, E, NB, HAS_MAP: tl.constexpr, CH: tl.constexpr):
    """Without padding (ROUND = 1): (rows of routes r in `bucket`, first rows of buckets e), counted over all R
    routes CH at a time. A route's row is the number of routes whose key (bucket * R + route) is smaller than its
    own (the routes in lower buckets or before it in its bucket); a bucket's first row the number in lower buckets.
    Nothing as wide as the buckets (no histogram, prefix sum or gather): the cost grows with the rows asked for
    times R, whatever the experts. Dropped routes (bucket NB) come after every real one; slots past R count as no
    route. Keys must fit in int32: (NB + 2) * R < 2**31."""
    key = bucket * R + r
    row = tl.zeros_like(r)
    first = tl.zeros_like(e)
    j = tl.arange(0, CH)
    raw = tl.load(topk_ptr + j, mask=j < R, other=-1)
    for c0 in range(0, R, CH):
        j = c0 + tl.arange(0, CH)
        # The next chunk's ids are in flight while this one is counted.
        ahead = tl.load(topk_ptr + j + CH, mask=j + CH < R, other=-1)
        bj = tl.where(j < R, bucket_of(raw, map_ptr, j < R, E, NB, HAS_MAP), NB + 1)
        row += tl.sum(((bj * R + j)[None, :] < key[:, None]).to(tl.int32), axis=1)
        first += tl.sum((bj[None, :] < e[:, None]).to(tl.int32), axis=1)
        raw = ahead
    return row, first


@triton.jit
def write_padding(out_ptr, bucket, row, keep, end, pad, ROUND, value,
                  PAD_IS_VALUE: tl.constexpr, PAD_COLS: tl.constexpr):
    """The route in the last row of its bucket's routes (row == end - 1) writes the bucket's padding slots
    [end, end + pad): `value` with PAD_IS_VALUE, else the bucket (the region's expert, for m_indices)."""
    last = keep & (row == end - 1)
    if PAD_IS_VALUE:
        v = tl.zeros_like(bucket) + value
    else:
        v = bucket
    for j0 in range(0, ROUND, PAD_COLS):
        j = j0 + tl.arange(0, PAD_COLS)
        tl.store(out_ptr + end[:, None] + j[None, :], v[:, None] + tl.zeros([1, PAD_COLS], dtype=tl.int32),
                 mask=last[:, None] & (j[None, :] < pad[:, None]))


@triton.jit
def fill_tail(out_ptr, V, P, value, pid, nprog, BLOCK: tl.constexpr):
    """out[V:P] = value, the slots past the last region, spread over the programs pid of nprog."""
    fill = tl.zeros([BLOCK], dtype=tl.int32) + value
    for t0 in range(V + pid * BLOCK, P, nprog * BLOCK):
        t = t0 + tl.arange(0, BLOCK)
        tl.store(out_ptr + t, fill, mask=t < P)


@triton.jit
def store_align_routes(sorted_ptr, expert_ids_ptr, map_ptr, r, bucket, row, keep, ROUND,
                       MAP_EXPERT_IDS: tl.constexpr):
    """moe_align_block_size's writes for placed routes: sorted_token_ids, and the expert of each block (each block
    of an expert's region starts with one of its routes, which names it)."""
    tl.store(sorted_ptr + row, r, mask=keep)
    first = keep & (row % ROUND == 0)
    if MAP_EXPERT_IDS:
        expert = tl.load(map_ptr + bucket, mask=first, other=-1).to(tl.int32)
    else:
        expert = bucket
    tl.store(expert_ids_ptr + row // ROUND, expert, mask=first)


@triton.jit
def finish_align(expert_ids_ptr, ntpp_ptr, V, ROUND, num_blocks, pid, nprog, BLOCK: tl.constexpr):
    """expert_ids past the last used block = -1; num_tokens_post_padded = V (program 0)."""
    none = tl.zeros([BLOCK], dtype=tl.int32) - 1
    for t0 in range(V // ROUND + pid * BLOCK, num_blocks, nprog * BLOCK):
        t = t0 + tl.arange(0, BLOCK)
        tl.store(expert_ids_ptr + t, none, mask=t < num_blocks)
    if pid == 0:
        tl.store(ntpp_ptr, V)


@triton.jit
def align_bucket_kernel(topk_ptr, map_ptr, sorted_ptr, expert_ids_ptr, ntpp_ptr, R, E, ROUND, P, num_blocks,
                        MAP_EXPERT_IDS: tl.constexpr, W: tl.constexpr, CH: tl.constexpr, PAD_BLOCK: tl.constexpr,
                        FILL_BLOCK: tl.constexpr):
    """moe_align_block_size of a small batch (R <= CH) in one launch, program b for expert b: it loads the R routes
    once and counts the routes of every expert (one histogram of W >= E columns; dropped routes are never placed, so
    they have no column), starts its expert's region after the rounded sizes of the experts below, stores the
    expert's routes in ascending route order (their ranks a cumulative sum over the routes), its padding and its
    blocks' expert ids (mapped through map_ptr with MAP_EXPERT_IDS). Every program writes a share of the tail: R
    past the last region, -1 past the last used block."""
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    r = tl.arange(0, CH)
    bucket = route_bucket(topk_ptr, map_ptr, r, r < R, E, E, False)
    counts = real_counts(bucket, E, W)
    b = tl.arange(0, W)
    sizes = tl.where(b < E, (counts + ROUND - 1) // ROUND * ROUND, 0)
    V = tl.sum(sizes, axis=0)
    count = tl.sum(tl.where(b == pid, counts, 0), axis=0)
    if count > 0:
        start = tl.sum(tl.where(b < pid, sizes, 0), axis=0)
        mine = (bucket == pid).to(tl.int32)
        tl.store(sorted_ptr + start + tl.cumsum(mine, axis=0) - 1, r, mask=mine > 0)
        end = start + (count + ROUND - 1) // ROUND * ROUND
        for j0 in range(start + count, end, PAD_BLOCK):
            j = j0 + tl.arange(0, PAD_BLOCK)
            tl.store(sorted_ptr + j, tl.zeros([PAD_BLOCK], dtype=tl.int32) + R, mask=j < end)
        if MAP_EXPERT_IDS:
            expert = tl.load(map_ptr + pid).to(tl.int32)
        else:
            expert = pid
        for k0 in range(start // ROUND, end // ROUND, PAD_BLOCK):
            k = k0 + tl.arange(0, PAD_BLOCK)
            tl.store(expert_ids_ptr + k, tl.zeros([PAD_BLOCK], dtype=tl.int32) + expert, mask=k < end // ROUND)
    fill_tail(sorted_ptr, V, P, R, pid, nprog, FILL_BLOCK)
    finish_align(expert_ids_ptr, ntpp_ptr, V, ROUND, num_blocks, pid, nprog, FILL_BLOCK)


@triton.jit
def block_rank(topk_ptr, map_ptr, bucket, r, lo, hi, E, NB, HAS_MAP: tl.constexpr, SUB: tl.constexpr,
               RC: tl.constexpr):
    """Rank of each route r (in [lo, hi), its bucket `bucket`) in its sub-block of SUB routes (count_kernel's
    step): the routes of the sub-block before r in the same bucket, counted from the ids of [start of lo's
    sub-block, hi), RC at a time, the next RC in flight while these are compared. It reads only inputs, so a placing
    kernel runs it before count_kernel ends."""
    first = r // SUB * SUB
    rank = tl.zeros_like(r)
    j0 = lo // SUB * SUB
    j = j0 + tl.arange(0, RC)
    raw = tl.load(topk_ptr + j, mask=j < hi, other=-1)
    for c0 in range(j0, hi, RC):
        j = c0 + tl.arange(0, RC)
        ahead = tl.load(topk_ptr + j + RC, mask=j + RC < hi, other=-1)
        bj = bucket_of(raw, map_ptr, j < hi, E, NB, HAS_MAP)
        before = (j[None, :] >= first[:, None]) & (j[None, :] < r[:, None]) & (bj[None, :] == bucket[:, None])
        rank += tl.sum(before.to(tl.int32), axis=1)
        raw = ahead
    return rank


@triton.jit
def chunk_rows(base_ptr, sub_ptr, table_ptr, bucket, r, rank, valid, CHUNK, W: tl.constexpr, SUB: tl.constexpr):
    """Rows of routes r in `bucket` once count_kernel has run: the bucket's first row (table row 2) + the routes of
    the bucket in the chunks before r's (base[chunk of r, bucket]) + those in the sub-blocks of its chunk before its
    own (sub[sub-block of r, bucket]) + its rank in its sub-block (block_rank). The three loads are independent."""
    start = tl.load(table_ptr + 2 * W + bucket, mask=valid, other=0)
    base = tl.load(base_ptr + (r // CHUNK) * W + bucket, mask=valid, other=0)
    return start + base + tl.load(sub_ptr + (r // SUB) * W + bucket, mask=valid, other=0) + rank


@triton.jit
def table_padding(out_ptr, table_ptr, NB, ROUND, value, pid, nprog, PAD_IS_VALUE: tl.constexpr,
                  PAD_COLS: tl.constexpr, W: tl.constexpr):
    """Every bucket's padding slots, from the table count_kernel's last program wrote (each bucket's end and
    padding), spread over the programs pid of nprog a block of buckets at a time: `value` with PAD_IS_VALUE, else
    the bucket (m_indices)."""
    BB: tl.constexpr = 2048 // PAD_COLS
    j = tl.arange(0, PAD_COLS)
    for b0 in range(pid * BB, NB, nprog * BB):
        bb = b0 + tl.arange(0, BB)
        mine = bb < NB
        end = tl.load(table_ptr + bb, mask=mine, other=0)
        pad = tl.load(table_ptr + W + bb, mask=mine, other=0)
        if PAD_IS_VALUE:
            v = tl.zeros([BB, PAD_COLS], dtype=tl.int32) + value
        else:
            v = bb[:, None] + tl.zeros([BB, PAD_COLS], dtype=tl.int32)
        for j0 in range(0, ROUND, PAD_COLS):
            tl.store(out_ptr + end[:, None] + j0 + j[None, :], v, mask=mine[:, None] & (j0 + j[None, :] < pad[:, None]))


@triton.jit
def align_place_kernel(topk_ptr, map_ptr, base_ptr, sub_ptr, table_ptr, sorted_ptr, expert_ids_ptr, R, E, ROUND,
                       CHUNK, MAP_EXPERT_IDS: tl.constexpr, HAS_PAD: tl.constexpr, PAD_COLS: tl.constexpr,
                       W: tl.constexpr, SUB: tl.constexpr, BLOCK: tl.constexpr, RC: tl.constexpr,
                       PDL: tl.constexpr):
    """moe_align_block_size's routes after count_kernel (large batches), BLOCK routes per program; their buckets
    and ranks come from the ids alone, before count_kernel's results are waited for."""
    pid = tl.program_id(0)
    lo = pid * BLOCK
    r = lo + tl.arange(0, BLOCK)
    valid = r < R
    bucket = route_bucket(topk_ptr, map_ptr, r, valid, E, E, False)
    rank = block_rank(topk_ptr, map_ptr, bucket, r, lo, tl.minimum(lo + BLOCK, R), E, E, False, SUB, RC)
    if PDL:
        tl.extra.cuda.gdc_wait()
    row = chunk_rows(base_ptr, sub_ptr, table_ptr, bucket, r, rank, valid, CHUNK, W, SUB)
    keep = valid & (bucket < E)
    store_align_routes(sorted_ptr, expert_ids_ptr, map_ptr, r, bucket, row, keep, ROUND, MAP_EXPERT_IDS)
    if HAS_PAD:
        table_padding(sorted_ptr, table_ptr, E, ROUND, R, pid, tl.num_programs(0), True, PAD_COLS, W)


@triton.jit
def count_kernel(topk_ptr, map_ptr, hist_ptr, base_ptr, sub_ptr, table_ptr, ticket_ptr, slot_ptr, expert_ids_ptr,
                 head_ptr, R, E, NB, ROUND, P, fill_value, num_blocks, CHUNK, IS_ALIGN: tl.constexpr,
                 MAP_BUCKETS: tl.constexpr, MAP_EXPERT_IDS: tl.constexpr, HAS_PAD: tl.constexpr,
                 PAD_COLS: tl.constexpr, W: tl.constexpr, SUB: tl.constexpr,
                 BLOCK_C: tl.constexpr, FILL_BLOCK: tl.constexpr, PDL: tl.constexpr):
    """The index of a large batch: program c counts chunk c's routes a sub-block of SUB at a time (the next SUB in
    flight), writes for each sub-block the routes of each bucket in the chunk's sub-blocks before it (sub), and the
    chunk's histogram; the program that finishes last (a ticket counter, reset to 0 when it is done) turns the
    histograms into per-chunk bases (the routes of each bucket in the chunks before) and a table of each bucket's
    end, padding and first row, and writes the tail and the offsets (permute) or num_tokens_post_padded (IS_ALIGN).
    A second launch places the routes (block_rank, chunk_rows): moe_permute's copy kernel, or align_place_kernel. It
    ranks each route in its sub-block itself, from the ids, before it waits for this kernel: no route is ranked on
    this kernel's critical path. BLOCK_C chunks' histograms are scanned per step.

    moe_align_block_size (IS_ALIGN): slot_ptr = sorted_token_ids (padding and tail R), expert_ids_ptr, head_ptr =
    num_tokens_post_padded; the buckets are the global experts. moe_permute: slot_ptr = m_indices (fill_value in the
    tail), head_ptr = expert_first_token_offset (int64, NB+1 entries), buckets mapped with MAP_BUCKETS.
    """
    if PDL:  # the placing kernel may start now, all of this grid being resident (one wave); it waits for us
        tl.extra.cuda.gdc_launch_dependents()
    c = tl.program_id(0)
    C = tl.num_programs(0)
    run = tl.zeros([W], dtype=tl.int32)
    i = tl.arange(0, SUB)
    end = tl.minimum((c + 1) * CHUNK, R)
    raw = tl.load(topk_ptr + c * CHUNK + i, mask=c * CHUNK + i < end, other=-1)
    b = tl.arange(0, W)
    for s0 in range(c * CHUNK, end, SUB):
        r = s0 + i
        ahead = tl.load(topk_ptr + r + SUB, mask=r + SUB < end, other=-1)
        tl.store(sub_ptr + (s0 // SUB) * W + b, run)
        valid = r < end
        run += tl.histogram(bucket_of(raw, map_ptr, valid, E, NB, MAP_BUCKETS), W, mask=valid)
        raw = ahead
    tl.store(hist_ptr + c * W + b, run)
    tl.debug_barrier()  # every thread's stores are issued before the ticket is taken (release below)
    ticket = tl.atomic_add(ticket_ptr, 1, sem="acq_rel")
    if ticket == C - 1:
        # One pass over the histograms, the next block's loads in flight while this one is scanned.
        run = tl.zeros([W], dtype=tl.int32)
        cc = tl.arange(0, BLOCK_C)
        h = tl.load(hist_ptr + cc[:, None] * W + b[None, :], mask=cc[:, None] < C, other=0, cache_modifier=".cg")
        for c0 in range(0, C, BLOCK_C):
            cc = c0 + tl.arange(0, BLOCK_C)
            nc = cc + BLOCK_C
            h_ahead = tl.load(hist_ptr + nc[:, None] * W + b[None, :], mask=nc[:, None] < C, other=0,
                              cache_modifier=".cg")
            tl.store(base_ptr + cc[:, None] * W + b[None, :], run[None, :] + tl.cumsum(h, axis=0) - h,
                     mask=cc[:, None] < C)
            run += tl.sum(h, axis=0)
            h = h_ahead
        starts, sizes, V = bucket_starts(run, NB, ROUND, W)
        tl.store(table_ptr + b, starts + run)
        tl.store(table_ptr + W + b, sizes - run)
        tl.store(table_ptr + 2 * W + b, starts)
        fill_tail(slot_ptr, V, P, fill_value, 0, 1, FILL_BLOCK)
        if IS_ALIGN:
            finish_align(expert_ids_ptr, head_ptr, V, ROUND, num_blocks, 0, 1, FILL_BLOCK)
        else:
            tl.store(head_ptr + b, starts.to(tl.int64), mask=b <= NB)
        tl.atomic_xchg(ticket_ptr, 0)
