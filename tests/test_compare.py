"""The comparison helpers catch what they promise to catch: each mutation of a correct output fails."""
import pytest
import torch

import moeperf_kernels as kernels
from pytest_moeperf.oracle import compare, reference
from tests.cases import Case, make_inputs

CASE = Case(12, 3, 8, 20, "bf16", align=4, ep=(2, 1), scale="token")


def correct(device):
    hidden, scale, ids, _, emap = make_inputs(CASE, device)
    got = [t.clone() for t in kernels.moe_permute(hidden, scale, ids, CASE.E, CASE.n_local, emap, CASE.align)]
    want = reference.moe_permute(hidden, scale, ids, CASE.E, CASE.n_local, emap, CASE.align)
    local = reference.local_expert_of_routes(ids, CASE.E, emap)
    return got, want, hidden, scale, ids, local


def test_correct_output_passes(device):
    got, want, hidden, scale, ids, local = correct(device)
    compare.assert_permute_matches(got, want, hidden, scale, ids, local)


def _swap_local_inv(got, local):
    r = torch.nonzero(local >= 0).flatten()[:2].tolist()
    got[3][r[0]], got[3][r[1]] = got[3][r[1]].clone(), got[3][r[0]].clone()


def _dropped_below_v(got, local):
    got[3][torch.nonzero(local < 0).flatten()[0]] = 0


def _dropped_twice(got, local):
    d = torch.nonzero(local < 0).flatten()[:2].tolist()
    got[3][d[1]] = got[3][d[0]]


def _flip_row_bit(got, local):
    row = got[3][torch.nonzero(local >= 0).flatten()[-1]]
    got[0].view(torch.int16)[row, 5] ^= 1


def _scale_row(got, local):
    got[1][got[3][torch.nonzero(local >= 0).flatten()[0]]] += 1


def _offsets(got, local):
    got[2][1] += 1


def _m_indices(got, local):
    got[4][0] = 99


@pytest.mark.parametrize("mutation,match", [
    (_swap_local_inv, "inv_permuted_idx of local routes"),
    (_dropped_below_v, "dropped routes must lie in"),
    (_dropped_twice, "same row"),
    (_flip_row_bit, "permuted_hidden_states rows"),
    (_scale_row, "a1q_scale rows"),
    (_offsets, "expert_first_token_offset"),
    (_m_indices, "m_indices"),
])
def test_mutated_permute_output_fails(mutation, match, device):
    got, want, hidden, scale, ids, local = correct(device)
    mutation(got, local)
    with pytest.raises(AssertionError, match=match):
        compare.assert_permute_matches(got, want, hidden, scale, ids, local)


def test_align_any_order_accepts_reordering_inside_an_expert_only(device):
    _, _, ids, _, _ = make_inputs(Case(30, 2, 4, 1), device)
    want = reference.moe_align_block_size(ids, 8, 4)
    got = [t.clone() for t in want]
    first = int(torch.bincount(ids.reshape(-1).long().cpu(), minlength=4)[0])
    got[0][:first] = torch.flip(got[0][:first], [0])  # reorder expert 0's routes
    compare.assert_align_matches(got, want, ids, 8, 4, any_order=True)
    with pytest.raises(AssertionError, match="sorted_token_ids"):
        compare.assert_align_matches(got, want, ids, 8, 4)
    start1 = -(-first // 8) * 8
    got[0][0], got[0][start1] = got[0][start1].clone(), got[0][0].clone()  # a route moves to another expert
    with pytest.raises(AssertionError, match="expert 0"):
        compare.assert_align_matches(got, want, ids, 8, 4, any_order=True)


def test_assert_close_catches_one_ulp_too_many_and_nan():
    want = torch.ones(4, dtype=torch.bfloat16)
    compare.assert_close("same", want.clone(), want)
    with pytest.raises(AssertionError, match="outside"):
        compare.assert_close("off", want + 0.05, want)
    with pytest.raises(AssertionError, match="non-finite"):
        compare.assert_close("nan", torch.full((4,), float("nan"), dtype=torch.bfloat16), want)
