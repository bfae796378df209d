"""MoEPermuteScratch (SPEC 1.4): identical results, no allocation, aliasing outputs, nothing stale."""
import pytest
import torch

import moeperf_kernels as kernels
from pytest_moeperf.oracle import compare, reference
from tests.cases import DTYPES, Case, make_inputs


def build(case, max_tokens, device, **kw):
    return kernels.MoEPermuteScratch(max_tokens, case.k, case.E, case.n_local, device, **kw)


def poison(scratch):
    """Fill every output and intermediate buffer with garbage before a call."""
    for name, buf in scratch._buffers.items():
        if name in ("token_expert_indices", "ticket"):  # a constant table; count_kernel's counter, kept at 0
            continue
        if buf.dtype.is_floating_point:
            buf.view(torch.uint8).fill_(0xFF)
        else:
            buf.fill_(-12345)


@pytest.mark.parametrize("case", [
    Case(64, 8, 256, 7168, "fp8", align=128, ep=(4, 3), scale="block"),
    Case(40, 6, 60, 96, "bf16", align=16, scale="token"),
    Case(40, 2, 8, 130, "fp16", ep=(2, 1), routing="invalid"),
], ids=lambda c: c.id)
def test_scratch_reuse_large_then_small(case, device):
    scratch = build(case, case.M, device, hidden_size=case.H, hidden_dtype=DTYPES[case.dtype],
                    align_block_size=case.align)
    ptrs = None
    for M, salt in ((case.M, "big"), (1, "one"), (case.M // 3, "small"), (case.M, "big-again")):
        sub = Case(M, case.k, case.E, case.H, case.dtype, case.align, case.ep, case.scale, case.routing, case.fill)
        hidden, scale, ids, _, emap = make_inputs(sub, device, salt=salt)
        poison(scratch)
        got = kernels.moe_permute(hidden, scale, ids, sub.E, sub.n_local, emap, sub.align, sub.fill, scratch=scratch)
        plain = kernels.moe_permute(hidden, scale, ids, sub.E, sub.n_local, emap, sub.align, sub.fill)
        want = reference.moe_permute(hidden, scale, ids, sub.E, sub.n_local, emap, sub.align, sub.fill)
        local = reference.local_expert_of_routes(ids, sub.E, emap)
        compare.assert_permute_matches(got, want, hidden, scale, ids, local)
        for name, a, b in zip(("offsets", "inv", "m_indices"), got[2:], plain[2:]):
            compare.assert_equal(f"{name} with scratch vs without", a, b)
        now = [t.data_ptr() for t in (got[0], got[2], got[3], got[4])]
        if ptrs is not None:
            assert now == ptrs, "outputs must alias the scratch buffers on every call"
        ptrs = now


def test_scratch_allocates_nothing_and_prepares_ids(device):
    case = Case(16, 2, 8, 64, "bf16", scale="token")
    hidden, scale, ids, _, _ = make_inputs(case, device)
    scratch = build(case, 32, device, hidden_size=64, hidden_dtype=torch.bfloat16)
    ids32 = scratch.prepare_topk_ids(ids.long())
    assert ids32.dtype == torch.int32 and ids32.shape == ids.shape and torch.equal(ids32, ids)
    assert ids32.data_ptr() == scratch.prepare_topk_ids(ids).data_ptr()
    tei = scratch.token_expert_indices_view(5)
    assert tei.shape == (5, 2) and torch.equal(tei.reshape(-1).cpu(), torch.arange(10, dtype=torch.int32))
    kernels.moe_permute(hidden, scale, ids32, case.E, scratch=scratch)  # compile and warm up
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_stats()["allocation.all.allocated"]
        kernels.moe_permute(hidden, scale, ids32, case.E, scratch=scratch)
        torch.cuda.synchronize()
        assert torch.cuda.memory_stats()["allocation.all.allocated"] == before
    buffers = {id(b) for b in scratch._buffers.values()}
    kernels.moe_permute(hidden, scale, ids32, case.E, scratch=scratch)
    assert {id(b) for b in scratch._buffers.values()} == buffers, "the scratch grew a buffer during a call"


def test_scratch_without_hidden_size_adopts_the_first_call(device):
    case = Case(8, 2, 8, 24, "fp16")
    hidden, _, ids, _, _ = make_inputs(case, device)
    scratch = build(case, 8, device)
    first = kernels.moe_permute(hidden, None, ids, case.E, scratch=scratch)
    second = kernels.moe_permute(hidden, None, ids, case.E, scratch=scratch)
    assert first[0].data_ptr() == second[0].data_ptr()
    with pytest.raises(ValueError, match="hidden size 32, scratch was built for 24"):
        kernels.moe_permute(torch.ones(8, 32, dtype=torch.float16, device=device), None, ids, case.E, scratch=scratch)


@pytest.mark.parametrize("change,match", [
    ("tokens", "9 tokens exceed max_num_tokens=8"),
    ("topk", "topk=3, scratch was built for topk=2"),
    ("dtype", "dtype torch.float16, scratch was built for torch.bfloat16"),
    ("hidden", "hidden size 40, scratch was built for 24"),
    ("align", "needs .* permuted rows, the scratch holds"),
    ("experts", "does not fit a MoEPermuteScratch built for 8 experts"),
])
def test_scratch_rejects_calls_that_do_not_fit(change, match, device):
    scratch = kernels.MoEPermuteScratch(8, 2, 8, 8, device, hidden_size=24, hidden_dtype=torch.bfloat16)
    M, k, H, dtype, E, align = 8, 2, 24, torch.bfloat16, 8, None
    if change == "tokens":
        M = 9
    elif change == "topk":
        k = 3
    elif change == "dtype":
        dtype = torch.float16
    elif change == "hidden":
        H = 40
    elif change == "align":
        align = 16
    else:
        E = 16
    hidden = torch.ones(M, H, dtype=dtype, device=device)
    ids = torch.zeros(M, k, dtype=torch.int32, device=device)
    with pytest.raises(ValueError, match=match):
        kernels.moe_permute(hidden, None, ids, E, align_block_size=align, scratch=scratch)


def test_scratch_on_unsupported_device_constructs():
    scratch = kernels.MoEPermuteScratch(8, 2, 8, 8, "meta", hidden_size=16, hidden_dtype=torch.bfloat16)
    assert scratch.supported is False
    with pytest.raises(RuntimeError, match="cannot run here"):
        scratch.prepare_topk_ids(torch.zeros(2, 2, dtype=torch.int32))
