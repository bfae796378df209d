"""Where the Triton kernels can run and the launch parameters each backend gets.

`TRITON_INTERPRET=1` is read by `triton.jit` when a kernel is decorated, so it must be set before `kernels` is
imported; `INTERPRETED` records what actually happened.
"""
from __future__ import annotations

import functools

import torch
import triton

from . import _index

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


def sub_block() -> int:
    """Routes ranked together: by place_routes (a sub_block x sub_block comparison), and after count_kernel, which
    counts its chunks a sub-block at a time, by block_rank within a sub-block."""
    return 32 if INTERPRETED else 128


def count_block(num_routes: int) -> int:
    """Routes histogrammed per step by bucket_counts."""
    return max(16, min(next_pow2(num_routes), 64 if INTERPRETED else 1024))


def align_chunk(num_routes: int) -> int:
    """Routes one program of the one-launch align loads (_index.align_bucket_kernel): all of a small batch's
    (num_routes <= small_batch_routes()), in one step."""
    return max(16, next_pow2(num_routes))


def align_warps(num_routes: int, num_experts: int) -> int:
    """Warps of a program of the one-launch align: 8 where a few programs (16 experts or fewer) each count more than
    512 routes, else 4. H100 (benchmarks/results/2026-12-06-h100-align-bucket.md): Mixtral's 1024 routes 3.19 us with
    8 warps, 3.38-3.61 with 4; with 256 experts (two programs an SM) 8 warps ran 1.09-1.20 x slower at 8-1024 routes,
    with 8 experts 1.02-1.06 x at 2-128."""
    return 8 if num_experts <= 16 and num_routes > 512 else 4


def most_chunks(width: int) -> int:
    """At most this many chunks in count_kernel: its last program scans chunks x width histogram entries alone.
    65536 entries: 128 chunks for 256 experts, with which an H100 ran DeepSeek-V3's permute of 16384 tokens 5% faster
    than with 64 (each chunk's ranking is shorter; its align 36% faster), where 256 chunks ran 4096 tokens 7% slower
    (benchmarks/results/2026-12-06-h100-count-path.md; measured while count_kernel still ranked the routes)."""
    return 8 if INTERPRETED else max(64, 65536 // width)


def scan_block(chunks: int, width: int) -> int:
    """Chunks whose histograms count_kernel's last program scans per step: all of them where the tile stays within
    4096 entries (64 under the interpreter, so that the CPU tests take several steps)."""
    return min(next_pow2(chunks), max(1, (64 if INTERPRETED else 4096) // width))


def count_chunk(num_routes: int, width: int) -> int:
    """Routes per program of count_kernel: one sub-block (sub_block) where that keeps the chunks few enough,
    else as many sub-blocks as it takes."""
    sub = sub_block()
    return sub * max(1, -(-(-(-num_routes // most_chunks(width))) // sub))


def rank_block(routes: int, warps: int) -> int:
    """Ids compared per step by block_rank for a placing program's `routes` routes: a [routes x RC] tile of at most
    32 entries a thread, no wider than the routes' sub-blocks (sub_block) need."""
    return max(16, min(next_pow2(sub_block() + routes), tile_width(routes, warps)))


def tile_width(rows: int, warps: int) -> int:
    """Columns of a [next_pow2(rows) x width] compare tile of 32 entries a thread (block_rank, direct_index)."""
    return 32 * 32 * warps // next_pow2(rows)


def pad_cols(round_to: int) -> int:
    """Padding slots one route writes per step (write_padding)."""
    return min(next_pow2(round_to), 64)


def fill_block() -> int:
    """Slots one program writes per step when it fills the unrouted slots."""
    return 64 if INTERPRETED else 1024


def small_batch_routes() -> int:
    """Largest R whose index every program builds on its own (permute_fused_kernel, align_bucket_kernel): one launch.
    The unpadded permute goes further, while direct_fits().

    Each of those programs counts all R routes, so the redundant work grows with R times the grid; above this
    count_kernel counts each chunk once and one program turns the chunk histograms into base rows.
    """
    return 64 if INTERPRETED else 1024


def pair_routes(num_buckets: int) -> int:
    """Largest R whose one-launch index compares the routes pairwise (_index.pair_sizes: an R x R square, whatever
    the number of experts) instead of counting them per expert; 0 where the per-expert count is narrow and cheap.
    Chosen from H100 runs of the fused permute at 8 and 256 experts (README, "Kernel speed"); 32 since the compared
    ranks (rank_fits) ran DeepSeek-V3's and Qwen3-235B's padded 64 routes 0.92 / 0.76 x the pairwise index, and 8-32
    routes 1.10-1.17 x (DeepSeek-V3) and 0.985-1.07 x (Qwen3-235B; below 1 at 8 routes only)
    (benchmarks/results/2026-12-06-h100-permute-ranks.md)."""
    if hist_width(num_buckets) < 128:
        return 0
    return 16 if INTERPRETED else 32


def direct_fits(num_routes: int, block_routes: int, grid_h: int, warps: int, num_buckets: int) -> bool:
    """Whether the unpadded one-launch permute counts rows straight from the routes (_index.direct_index) rather
    than after count_kernel, or, up to small_batch_routes(), after each program's own per-bucket count. Each program
    compares its SUB routes with all R and loads all R; the limits come from H100 and H200 A/Bs against the
    alternative (benchmarks/results/: 2026-12-06-h100-direct-index.md, 2026-12-06-h200.md, 2026-12-06-direct-rule.md):
    - the grid's comparisons, R * R * grid_h, at most 2**24 (Mixtral 2048 routes 0.68 x, 4096 routes at 2 column
      blocks 1.18 x);
    - the grid's route loads, R * R * grid_h / SUB, at most 2**22: with one route a token (Llama-4, M = 2048, 3
      column blocks, 6.3 M loads) count_kernel ran 0.79-0.90 x of it, at 1.6-2.1 M loads 1.05-1.23 x;
    - one program's comparisons over its 32 x warps threads, which no idle SM shortens: fewer than 128 a thread
      (count_kernel ran 0.41-0.81 x of the direct index at 192-384 a thread, 0.93-1.00 x at 128, 1.17-1.24 x at 96);
    - against the per-bucket count, fewer than 64 a thread where a program holds 16 routes or more and that count
      is narrower than 512 columns: at 16 routes and 64 a thread (1024 routes, 8 warps) the count ran 0.90-0.92 x
      with 64 experts and 0.96-0.97 x with 128, but 1.40 x with 256; at 8 routes and 64 a thread (128 experts, 4
      warps) 1.26 x; at 8 routes and 48 a thread (64 experts) 1.00-1.10 x."""
    sub = next_pow2(block_routes)
    per_thread = sub * num_routes // (32 * warps)
    grid = num_routes * num_routes * grid_h
    if INTERPRETED:
        return grid <= 4096 and per_thread < 128
    if num_routes <= small_batch_routes() and sub >= 16 and per_thread >= 64 and hist_width(num_buckets) < 512:
        return False
    return grid <= 1 << 24 and grid // sub <= 1 << 22 and per_thread < 128


def rank_fits(num_routes: int, num_buckets: int, block_routes: int, warps: int) -> bool:
    """Whether the one-launch permute, past pair_routes(), ranks each program's routes by comparing them with the
    routes before them (_index.bucket_ranks) rather than counting the routes of every bucket before the program's
    (a second histogram) and ranking its own in a square: while one program compares at most 64 routes a thread
    where the count is 512 columns wide (without the dropped routes' column 256 experts take 256), 48 where it is
    128-256 wide, and where it is narrower (and so cheap) 32, up to 512 routes. H100 A/B gates
    (benchmarks/results/2026-12-06-h100-permute-ranks.md): at 64 a thread 0.89-0.92 x with 512 columns (DeepSeek-V3),
    1.10-1.23 x with 128-256 (Qwen2-57B, Qwen3-235B at 1024 routes); at 8-48 a thread 0.62-1.00 x with 256-512; 32
    experts (DeepSeek-V3 over 8 ranks) 0.87-1.00 x at 8-512 routes, 1.02 x at 768 (24 a thread)."""
    width = hist_width(num_buckets)
    most = 64 if width >= 512 else 48 if width >= 128 else 32
    return next_pow2(block_routes) * num_routes <= most * 32 * warps and (num_routes <= 512 or width >= 128)


def small_index_meta(num_routes: int, num_buckets: int, block_routes: int, warps: int) -> dict:
    """How the one-launch permute builds the index of num_routes routes over num_buckets experts when it does not
    count rows straight from the routes: PAIRS (compare the routes pairwise; RP, the routes rounded up to a power
    of 2), else a histogram of W columns, CH routes a step, and with RANKS (rank_fits) the routes' ranks compared
    RC at a time (a [SUB x RC] tile of at most 32 entries a thread)."""
    sub = next_pow2(block_routes)
    if num_routes <= pair_routes(num_buckets):
        how = dict(PAIRS=True, RP=next_pow2(max(num_routes, 16)), CH=16, RANKS=False, RC=1)
    elif rank_fits(num_routes, num_buckets, block_routes, warps):
        how = dict(PAIRS=False, RP=1, CH=count_block(num_routes), RANKS=True,
                   RC=max(16, min(next_pow2(num_routes), tile_width(block_routes, warps))))
    else:
        how = dict(PAIRS=False, RP=1, CH=count_block(num_routes), RANKS=False, RC=1)
    return dict(how, DIRECT=False, EB=1, SUB=sub,
                W=next_pow2(num_buckets) if how["RANKS"] else hist_width(num_buckets))


def direct_meta(num_routes: int, num_buckets: int, block_routes: int, programs: int, warps: int) -> dict:
    """permute_fused_kernel's meta-parameters without padding (_index.direct_index): each of the `programs`
    programs counts the rows of its block_routes routes (SUB) and EB of the num_buckets + 1 offsets against CH
    routes at a time (a [SUB x CH] tile of at most 32 entries a thread). The offsets are a query of their own: asked
    in the routes' slack they would double SUB whenever block_routes is a power of 2 (an H100 ran Qwen3-235B's 1024
    routes 1.49 x slower so)."""
    sub = next_pow2(block_routes)
    ch = max(16, min(next_pow2(num_routes), tile_width(block_routes, warps)))
    return dict(DIRECT=True, EB=next_pow2(-(-(num_buckets + 1) // programs)), SUB=sub, PAIRS=False, RP=1, CH=ch,
                RANKS=False, RC=1, W=hist_width(num_buckets))


@functools.lru_cache(maxsize=None)
def pdl(device: torch.device) -> bool:
    """Whether a kernel that follows count_kernel is launched as its programmatic dependent (PDL: it starts while
    count_kernel runs and waits for it with gdc_wait): on Hopper and later, compiled (not the interpreter)."""
    return (not INTERPRETED and device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 9
            and hasattr(triton.language.extra.cuda, "gdc_wait"))


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _most_programs(device: torch.device) -> int:
    if device.type != "cuda":
        return 3
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def fill_programs(fill_slots: int, device: torch.device) -> int:
    """Programs that share the writing of `fill_slots` tail slots (at most one per SM)."""
    return max(1, min(_most_programs(device), -(-fill_slots // fill_block())))


def row_block(row_elems: int, num_rows: int, elem_bytes: int) -> tuple[int, int]:
    """(rows, columns) of one program of the row-moving kernels over num_rows rows: 8 KiB tiles, smaller for small
    batches so that the grid still has programs enough to keep many SMs loading."""
    if INTERPRETED:
        cols = min(next_pow2(row_elems), 8192)
        return max(1, min(16, 65536 // cols)), cols
    tile = 8192 // elem_bytes
    cols = min(next_pow2(row_elems), tile // 2)
    rows = max(1, tile // cols)
    while cols > 256 and -(-num_rows // rows) * -(-row_elems // cols) < 128:
        if rows > 1:
            rows //= 2
        else:
            cols //= 2
    return rows, cols


def reduce_block(row_elems: int, num_tokens: int, topk: int, elem_bytes: int) -> tuple[int, int, int] | None:
    """(tokens, columns, warps) of one unpermute program of a batch of 64 tokens or more, each with two routes or
    more: one token, 16 bytes of each route's row a thread, columns up to 8 KiB of the row (the widest power of 2
    that leaves under an eighth of the row's columns masked and keeps the k routes' tiles within 32 KiB, unless the
    batch's routes read 128 MiB or more, where the row's whole width is kept), halved down to 256 until the grid has
    128 programs; narrow rows: tokens up to a 256-element tile. None elsewhere (row_block's tile is kept), and under
    the interpreter, where the CPU tests keep row_block's tiles of many tokens (fewer programs to run).

    From H100 runs (benchmarks/results/2026-12-06-h100-unpermute-tile.md): in the A/B gate against row_block's tile
    (2 tokens x 2048 columns at H = 4096, 32 bytes a thread) 250 unpermutes of 64-4096 tokens over ten shapes ran
    at 0.79-1.06 x, median 0.974 (Qwen3-235B at 512 tokens 1.02-1.06 x, the only ones slower by over 1%); below 64
    tokens this tile (one or two warps) ran up to 10% slower, so those keep row_block's (four warps). Past 128 MiB
    the whole-row tile beat the narrower one by up to 2% (Qwen2-57B, DeepSeek-V3 at 4096 tokens), below it the
    narrower one beat the whole row by up to 13% (DBRX, 512 tokens). One route a token (Llama 4) ran up to 5%
    slower with this tile (22% with the whole row), and is left to row_block. The 32 KiB bound halves Qwen3-235B's
    tile (8 routes of 4096 columns) below 128 MiB: 16 unpermutes of 128-1024 tokens ran 0.93-1.01 x (median 0.988)
    in the A/B gate against the whole row (benchmarks/results/2026-12-06-h100-align-bucket.md)."""
    if INTERPRETED or topk < 2 or num_tokens < 64:
        return None
    cols = min(next_pow2(row_elems), 8192 // elem_bytes)
    if num_tokens * topk * row_elems * elem_bytes < 128 << 20:
        while cols > 256 and ((-(-row_elems // cols) * cols - row_elems) * 8 > row_elems
                              or topk * cols * elem_bytes > 32768):
            cols //= 2
    tokens = max(1, 256 // cols)
    while -(-num_tokens // tokens) * -(-row_elems // cols) < 128 and tokens * cols > 256:
        if tokens > 1:
            tokens //= 2
        else:
            cols //= 2
    return tokens, cols, max(1, min(16, tokens * cols * elem_bytes // 16 // 32))


def num_warps(tile_elems: int) -> int:
    return 4 if tile_elems <= 2048 else 8
