"""moe_align_block_size against the reference (SPEC 1.1)."""
import pytest

import moeperf_kernels as kernels
from moeperf_kernels import _launch
from pytest_moeperf.oracle import compare, reference
from tests.cases import Case, make_inputs

CASES = [  # (case, block_size, pad_sorted_ids)
    (Case(1, 1, 1, 1), 16, False),
    (Case(1, 8, 256, 1), 64, True),  # R < E: capacity capped at R * block_size
    (Case(3, 2, 8, 1), 16, True),
    (Case(33, 6, 60, 1, routing="zipf"), 16, False),
    (Case(33, 8, 8, 1, routing="duplicates"), 128, True),
    (Case(128, 8, 256, 1), 16, True),
    (Case(128, 8, 256, 1, ep=(4, 3)), 64, True),
    (Case(128, 6, 60, 1, routing="hot", ep=(2, 1)), 128, False),
    (Case(64, 2, 8, 1, routing="one_expert"), 16, True),
    (Case(40, 4, 16, 1, routing="invalid"), 16, True),
    (Case(300, 8, 256, 1, routing="sparse"), 16, True),  # count_kernel with many chunks
    (Case(50, 3, 7, 1), 5, False),  # block size not a power of two
    # The one-launch align (a program per expert, up to small_batch_routes() routes):
    (Case(7, 8, 16, 1, routing="invalid"), 16, True),
    (Case(6, 8, 256, 1, ep=(4, 1)), 128, False),
    (Case(16, 4, 8, 1, routing="one_expert"), 5, True),
    (Case(9, 6, 60, 1, routing="zipf"), 1, False),
]


@pytest.mark.parametrize("case,block_size,pad", CASES, ids=lambda v: getattr(v, "id", str(v)))
def test_align_matches_reference(case, block_size, pad, device):
    _, _, ids, _, emap = make_inputs(case, device)
    got = kernels.moe_align_block_size(ids, block_size, case.E, emap, pad_sorted_ids=pad)
    want = reference.moe_align_block_size(ids, block_size, case.E, emap, pad_sorted_ids=pad)
    compare.assert_align_matches(got, want, ids, block_size, case.E)
    again = kernels.moe_align_block_size(ids, block_size, case.E, emap, pad_sorted_ids=pad)
    for name, a, b in zip(("sorted_token_ids", "expert_ids", "num_tokens_post_padded"), again, got):
        compare.assert_equal(f"{name}, second run", a, b)


def test_align_int64_ids(device):
    case = Case(20, 4, 16, 1)
    _, _, ids, _, _ = make_inputs(case, device)
    got = kernels.moe_align_block_size(ids.long(), 16, case.E)
    want = reference.moe_align_block_size(ids, 16, case.E)
    compare.assert_align_matches(got, want, ids, 16, case.E)


def test_the_one_launch_align_loads_every_route_in_one_step():
    # align_bucket_kernel has no loop over chunks of routes: its chunk must hold every route of a batch it serves,
    # up to small_batch_routes() (1024 on a GPU, 64 under the interpreter), as a power of 2 (tl.arange).
    for routes in range(1, 1025):
        chunk = _launch.align_chunk(routes)
        assert chunk >= max(routes, 16) and chunk & (chunk - 1) == 0
    assert _launch.align_chunk(1024) == 1024 and _launch.align_chunk(513) == 1024
