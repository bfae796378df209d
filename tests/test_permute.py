"""Customized path: moe_permute and moe_unpermute against the reference (SPEC 1.3)."""
import dataclasses

import pytest
import torch

import moeperf_kernels as kernels
from moeperf_kernels import _launch, _pipeline
from pytest_moeperf.oracle import compare, reference
from tests.cases import Case, make_inputs

CASES = [
    Case(1, 1, 1, 64, "bf16"),
    Case(1, 8, 256, 2880, "bf16", ep=(4, 1)),
    Case(3, 2, 8, 2880, "fp16", align=16, scale="token"),
    Case(3, 6, 60, 131, "fp32", scale="tensor0d"),
    Case(33, 6, 60, 131, "fp32", ep=(2, 1), scale="tensor1d"),
    Case(33, 2, 8, 7168, "fp8", align=128, scale="block"),
    Case(33, 8, 8, 72, "bf16", align=16, routing="duplicates"),
    Case(33, 8, 256, 160, "fp16", ep=(2, 0), routing="sparse"),
    Case(64, 6, 60, 96, "bf16", align=16, routing="hot", fill=7),
    Case(17, 4, 16, 40, "fp32", align=16, ep=(2, 1), routing="invalid"),
    Case(17, 4, 16, 40, "bf16", routing="invalid"),
    Case(40, 2, 8, 33, "bf16", align=128, routing="one_expert", ep=(4, 3)),
    Case(128, 8, 256, 7168, "fp8", align=128, ep=(4, 3), scale="block"),
    Case(128, 8, 256, 256, "bf16", ep=(4, 2), routing="zipf", scale="token"),
    Case(128, 2, 8, 4095, "fp16", align=16, ep=(2, 1)),
]


def run_permute(case, hidden, scale, ids, emap, **kw):
    return kernels.moe_permute(hidden, scale, ids, case.E, case.n_local, emap, case.align, case.fill, **kw)


def unowned_rows(offsets, inv, local, rows):
    """Rows no local route owns (padding and dropped): unpermute must never read them."""
    owned = torch.zeros(rows, dtype=torch.bool, device=inv.device)
    owned[inv[local].long()] = True
    return ~owned


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_moe_permute_matches_reference(case, device):
    hidden, scale, ids, weights, emap = make_inputs(case, device)
    got = run_permute(case, hidden, scale, ids, emap)
    want = reference.moe_permute(hidden, scale, ids, case.E, case.n_local, emap, case.align, case.fill)
    local = reference.local_expert_of_routes(ids, case.E, emap)
    compare.assert_permute_matches(got, want, hidden, scale, ids, local)

    # Same call into a caller-given buffer poisoned with 0xFF bytes: bit-identical outputs.
    buf = torch.empty_like(got[0]).view(torch.uint8).fill_(0xFF).view(hidden.dtype)
    again = run_permute(case, hidden, scale, ids, emap, permuted_hidden_states=buf)
    assert again[0].data_ptr() == buf.data_ptr()
    owned = ~unowned_rows(got[2], got[3], (local >= 0).to(device), got[0].shape[0])
    compare.assert_equal("permuted rows, second run", again[0][owned], got[0][owned])
    for name, a, b in zip(("offsets", "inv", "m_indices"), again[2:], got[2:]):
        compare.assert_equal(f"{name}, second run", a, b)


def check_permute_and_align(case, device, salt, block):
    """moe_permute of the case, and moe_align_block_size of its ids to `block`, against the reference."""
    hidden, scale, ids, _, emap = make_inputs(case, device, salt=salt)
    want = reference.moe_permute(hidden, scale, ids, case.E, case.n_local, emap, case.align, case.fill)
    compare.assert_permute_matches(run_permute(case, hidden, scale, ids, emap), want, hidden, scale, ids,
                                   reference.local_expert_of_routes(ids, case.E, emap))
    compare.assert_align_matches(kernels.moe_align_block_size(ids, block, case.E, emap),
                                 reference.moe_align_block_size(ids, block, case.E, emap), ids, block, case.E)


@pytest.mark.parametrize("path", ["direct", "pairs", "buckets", "ranks", "count-kernel"])
@pytest.mark.parametrize("case", CASES[1:12:2] + CASES[13:14], ids=lambda c: c.id)
def test_every_index_path_matches_reference(case, path, device, monkeypatch):
    """Batch size and padding pick how the index is built (one launch counting each route's row straight from the
    routes when nothing is padded, comparing routes pairwise, counting them per expert and ranking them from the
    counts before the program's routes or by comparing them with the routes before them, or count_kernel first);
    force each way on the same inputs. Pairwise is only for batches of up to 64 routes; direct only unpadded. The
    ranks are compared 16 routes a step, so that they take several."""
    if path == "pairs":
        case = dataclasses.replace(case, M=max(1, min(case.M, 64 // case.k)))
    if path == "direct":
        case = dataclasses.replace(case, align=None)
    monkeypatch.setattr(_launch, "direct_fits", lambda *shape: path == "direct")
    monkeypatch.setattr(_launch, "small_batch_routes", lambda: 0 if path in ("count-kernel", "direct") else 1 << 30)
    monkeypatch.setattr(_launch, "pair_routes", lambda buckets: 64 if path == "pairs" else 0)
    monkeypatch.setattr(_launch, "rank_fits", lambda *shape: path == "ranks")
    monkeypatch.setattr(_launch, "tile_width", lambda rows, warps: 16)
    check_permute_and_align(case, device, path, case.align or 16)


@pytest.mark.parametrize("routes, buckets, block_routes, warps, ranks",
                         [(64, 256, 8, 8, True),  # DeepSeek-V3 fp8 M = 8 (past pair_routes' 32)
                          (1024, 256, 8, 4, True),  # DeepSeek-V3 fp8 M = 128 with 1 token, 4 warps: 64 a thread
                          (1024, 256, 16, 8, True),  # ... with 2 tokens, 8 warps (the H100 config): 64 a thread
                          (1024, 256, 32, 8, False),  # 4 tokens a program: 128 a thread
                          (768, 128, 8, 4, True),  # Qwen3-235B fp8 M = 96: 48 a thread, 256 columns
                          (1024, 128, 16, 8, False),  # Qwen3-235B bf16 M = 128: 64 a thread, 256 columns
                          (1024, 64, 16, 8, False),  # Qwen2-57B M = 128: 64 a thread, 128 columns
                          (512, 32, 8, 4, True),  # DeepSeek-V3 over 8 ranks (32 local experts, 64 columns), M = 64
                          (768, 32, 8, 8, False),  # ... M = 96: past 512 routes
                          (1024, 32, 16, 8, False)])  # ... M = 128: 64 a thread
def test_ranks_are_compared_while_few_for_the_width_of_the_count(routes, buckets, block_routes, warps, ranks,
                                                                  monkeypatch):
    """On a GPU the one-launch permute, past pair_routes (32), ranks its routes by comparing them with the routes
    before them while a program compares at most 64 routes a thread where the per-expert histogram is 512 columns,
    48 where it is 128-256, 32 and up to 512 routes where it is narrower (the H100 A/B gates named in rank_fits); the
    histogram it then builds has no column for dropped routes (256 experts: 256 columns, not 512)."""
    monkeypatch.setattr(_launch, "INTERPRETED", False)
    assert _launch.pair_routes(buckets) == (32 if buckets >= 64 else 0)
    assert _launch.rank_fits(routes, buckets, block_routes, warps) is ranks
    how = _launch.small_index_meta(routes, buckets, block_routes, warps)
    assert not how["PAIRS"] and how["RANKS"] is ranks
    assert how["W"] == (_launch.next_pow2(buckets) if ranks else _launch.hist_width(buckets))
    assert not ranks or how["SUB"] * how["RC"] <= 32 * 32 * warps


@pytest.mark.parametrize("routes, buckets, block_routes, programs, warps",
                         [(2, 8, 2, 16, 4), (64, 256, 8, 32, 8), (1024, 256, 16, 128, 8), (4096, 60, 8, 512, 8),
                          (512, 128, 8, 1, 1), (8192, 4096, 128, 3, 2)])
def test_direct_launch_covers_every_offset_and_route(routes, buckets, block_routes, programs, warps):
    """The direct index's launch: the programs' EB offsets each reach bucket `buckets` (the dropped routes' first
    row), SUB holds a program's routes, and the [SUB x CH] tile stays within 32 entries a thread."""
    how = _launch.direct_meta(routes, buckets, block_routes, programs, warps)
    assert how["EB"] * programs >= buckets + 1
    assert how["SUB"] >= block_routes
    assert how["CH"] == 16 or how["SUB"] * how["CH"] <= 32 * 32 * warps
    assert how["CH"] <= max(16, _launch.next_pow2(routes))


@pytest.mark.parametrize("routes, block_routes, grid_h, warps, buckets, fits",
                         [(2048, 4, 2, 8, 8, True),  # Mixtral bf16 M = 1024
                          (1536, 12, 1, 8, 64, True),  # DeepSeek-V2-Lite bf16 M = 256: 96 comparisons a thread
                          (2048, 16, 4, 8, 256, False),  # DeepSeek-V3 bf16 M = 256: 128 a thread
                          (4096, 4, 2, 8, 8, False),  # Mixtral bf16 M = 2048: the grid's 2**25
                          (3072, 24, 1, 8, 64, False),  # DeepSeek-V2-Lite fp8 M = 512: 384 a thread, grid's 2**23
                          (4096, 16, 1, 8, 128, False),  # Qwen3-30B bf16 M = 512: 256 a thread
                          (2048, 2, 3, 8, 16, False),  # Llama-4-Scout M = 2048: the grid's 6.3 M route loads
                          (2048, 8, 3, 8, 16, True),  # DBRX M = 512: 1.6 M
                          (1024, 16, 2, 8, 64, False),  # Qwen2-57B M = 128: 64 a thread, 65 histogram columns
                          (1024, 16, 4, 8, 256, True),  # DeepSeek-V3 M = 128: 64 a thread, 257 columns
                          (1024, 8, 1, 4, 128, True),  # Qwen3-30B M = 128: 64 a thread, 8 routes a program
                          (768, 8, 2, 4, 64, True)])  # Qwen2-57B M = 96: 48 a thread
def test_the_direct_index_stops_where_the_grid_or_one_program_would_compare_or_load_too_many_routes(
        routes, block_routes, grid_h, warps, buckets, fits, monkeypatch):
    """On a GPU the unpadded one-launch permute gives way to count_kernel (or, up to small_batch_routes, to each
    program's own per-bucket count) when all programs together, or any one of them, would compare or load too many
    routes (the H100 and H200 runs named in direct_fits)."""
    monkeypatch.setattr(_launch, "INTERPRETED", False)
    assert _launch.direct_fits(routes, block_routes, grid_h, warps, buckets) is fits


@pytest.mark.parametrize("case", [Case(6, 8, 256, 64, "bf16", align=16), Case(2, 8, 512, 64, "fp16", align=5)],
                         ids=lambda c: c.id)
def test_count_path_pads_every_bucket_from_few_programs(case, device, monkeypatch):
    """After count_kernel each placing program pads a block of buckets in turn (table_padding): with hundreds of
    experts and one or two programs, every block is reached. m_indices, sorted_token_ids and expert_ids must match."""
    monkeypatch.setattr(_launch, "small_batch_routes", lambda: 0)
    check_permute_and_align(case, device, "few-programs", case.align)


@pytest.mark.parametrize("case", [Case(200, 3, 7, 48, "bf16"),
                                  Case(100, 6, 60, 40, "fp16", align=16, ep=(2, 1), routing="invalid")],
                         ids=lambda c: c.id)
def test_count_path_ranks_across_sub_blocks_and_chunks(case, device, monkeypatch):
    """After count_kernel a placing program ranks each route in its sub-block from the ids and adds the counts of
    the chunk's sub-blocks before it. Chunks of several sub-blocks, and token blocks of topk 3 or 6 that straddle
    sub-blocks and chunks, must place every route as the reference does (permute and align)."""
    monkeypatch.setattr(_launch, "small_batch_routes", lambda: 0)
    monkeypatch.setattr(_launch, "direct_fits", lambda *shape: False)
    monkeypatch.setattr(_launch, "most_chunks", lambda width: 3)
    shape = _pipeline.CountShape(case.M * case.k, case.n_local)
    assert shape.C == 3 and shape.CHUNK >= 2 * _launch.sub_block()
    check_permute_and_align(case, device, "sub-blocks", case.align or 4)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_permute_then_unpermute(case, device):
    """moe_unpermute against the reference, with unowned rows poisoned, and end to end through an identity expert."""
    hidden, scale, ids, weights, emap = make_inputs(case, device, salt="unpermute")
    permuted, _, offsets, inv, _ = run_permute(case, hidden, scale, ids, emap)
    local = reference.local_expert_of_routes(ids, case.E, emap).to(device) >= 0
    expert_out = permuted if case.dtype != "fp8" else permuted.to(torch.bfloat16)
    expert_out = expert_out.clone()
    expert_out[unowned_rows(offsets, inv, local, expert_out.shape[0])] = float("nan")

    out = torch.empty(case.M, case.H, dtype=expert_out.dtype, device=device)
    kernels.moe_unpermute(out, expert_out, weights, inv, offsets)
    want = torch.empty_like(out)
    reference.moe_unpermute(want, expert_out, weights, inv, offsets)
    compare.assert_close("moe_unpermute", out, want)

    # Identity expert: sum over the token's local routes of w * x.
    x = hidden.to(expert_out.dtype).float()
    w = (weights * local.view(case.M, case.k)).float()
    expected = torch.zeros(case.M, case.H)
    for j in range(case.k):
        expected += w[:, j, None].cpu() * x.cpu()
    compare.assert_close("permute -> identity -> unpermute", out, expected.to(out.dtype))

    again = torch.empty_like(out)
    kernels.moe_unpermute(again, expert_out, weights, inv, offsets)
    compare.assert_equal("moe_unpermute, second run", again, out)


def test_unpermute_without_offsets_reads_every_route(device):
    case = Case(9, 3, 8, 48, "fp32", ep=(2, 0))
    hidden, scale, ids, weights, emap = make_inputs(case, device)
    permuted, _, offsets, inv, _ = run_permute(case, hidden, scale, ids, emap)
    permuted = permuted.clone()
    permuted[int(offsets[-1]):] = 1.0  # rows of dropped routes hold ones
    out = torch.empty(case.M, case.H, device=device)
    kernels.moe_unpermute(out, permuted, weights, inv)
    want = torch.empty_like(out)
    reference.moe_unpermute(want, permuted, weights, inv)
    compare.assert_close("moe_unpermute without offsets", out, want)


def test_any_hidden_size_and_noncontiguous_rows(device):
    """No 16-byte rule: odd sizes and a row-strided input (a column slice) work."""
    case = Case(7, 2, 8, 5, "bf16", align=16)
    hidden, scale, ids, weights, emap = make_inputs(case, device)
    wide = torch.randn(case.M, 13, device=device).to(torch.bfloat16)
    sliced = wide[:, 3:8]
    got = kernels.moe_permute(sliced, None, ids, case.E, align_block_size=16)
    want = reference.moe_permute(sliced, None, ids, case.E, align_block_size=16)
    compare.assert_permute_matches(got, want, sliced, None, ids, reference.local_expert_of_routes(ids, case.E))
