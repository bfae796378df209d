"""Standard path: _moe_permute and _moe_unpermute_and_reduce against the reference (SPEC 1.2)."""
import pytest
import torch

import moeperf_kernels as kernels
from pytest_moeperf.oracle import compare, reference
from tests.cases import Case, make_inputs

CASES = [  # (case, block_m)
    (Case(1, 1, 1, 64), 16),
    (Case(3, 2, 8, 2880, "fp16", scale="token"), 16),
    (Case(33, 6, 60, 131, "fp32", ep=(2, 1)), 64),
    (Case(33, 8, 8, 72, "bf16", routing="duplicates", scale="tensor0d"), 16),
    (Case(64, 8, 256, 7168, "fp8", ep=(4, 3), scale="block"), 128),
    (Case(128, 6, 60, 96, "bf16", routing="hot"), 16),
]


@pytest.mark.parametrize("case,block_m", CASES, ids=lambda v: getattr(v, "id", str(v)))
def test_standard_permute_matches_reference(case, block_m, device):
    hidden, scale, ids, _, emap = make_inputs(case, device)
    got = kernels._moe_permute(hidden, scale, ids, case.E, emap, block_m)
    want = reference._moe_permute(hidden, scale, ids, case.E, emap, block_m)
    names = ("permuted", "a1q_scale", "sorted_token_ids", "expert_ids_per_row", "inv_perm")
    for name, g, w in zip(names, got, want):
        if name == "a1q_scale" and (scale is None or scale.dim() < 2):
            assert g is scale, "a per-tensor a1q_scale is returned unchanged"
        else:
            compare.assert_equal(name, g, w)
    # inv_perm was computed before the clamp: every route's row holds that route's token and expert.
    inv = got[4].long()
    flat = ids.reshape(-1).long()
    assert torch.equal(got[2][inv].long() // case.k, torch.arange(ids.numel(), device=device) // case.k)
    mapped = flat if emap is None else emap.long()[flat]
    assert torch.equal(got[3][inv].long(), mapped)


@pytest.mark.parametrize("case,block_m", CASES[:4] + CASES[5:], ids=lambda v: getattr(v, "id", str(v)))
@pytest.mark.parametrize("weights_on_input", [False, True])
def test_standard_unpermute_and_reduce(case, block_m, weights_on_input, device):
    hidden, scale, ids, weights, emap = make_inputs(case, device, salt="reduce")
    permuted, _, _, expert_per_row, inv = kernels._moe_permute(hidden, scale, ids, case.E, emap, block_m)
    # Identity expert that, like vLLM's, outputs zeros for blocks of non-local experts.
    expert_out = torch.where((expert_per_row >= 0)[:, None], permuted, torch.zeros_like(permuted))
    out = torch.full((case.M, case.H), float("nan"), dtype=hidden.dtype, device=device)
    kernels._moe_unpermute_and_reduce(out, expert_out, inv, weights, weights_on_input)
    want = torch.empty_like(out)
    reference._moe_unpermute_and_reduce(want, expert_out, inv, weights, weights_on_input)
    compare.assert_close("_moe_unpermute_and_reduce", out, want)

    local = (reference.local_expert_of_routes(ids, case.E, emap) >= 0).view(case.M, case.k).float()
    w = local if weights_on_input else local * weights
    expected = w.sum(dim=1, keepdim=True) * hidden.float()
    compare.assert_close("standard round trip", out, expected.to(out.dtype))
