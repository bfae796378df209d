"""GPU-only checks: large shapes, row addressing past 2**31 elements, and CUDA-graph capture with new inputs."""
import pytest
import torch

import moeperf_kernels as kernels
from pytest_moeperf.oracle import compare, reference
from tests.cases import Case, make_inputs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU (these shapes are too large for the Triton interpreter)")

LARGE = [
    Case(1024, 2, 8, 4096, "bf16"),
    Case(4096, 2, 8, 14336, "fp16", align=128, scale="token"),
    Case(16384, 2, 8, 4096, "bf16", routing="hot"),
    Case(4096, 6, 64, 2048, "bf16", ep=(4, 1), routing="zipf"),
    Case(16384, 8, 256, 7168, "fp8", align=128, ep=(8, 3), scale="block"),
    Case(16384, 8, 256, 7168, "bf16"),
    Case(16384, 4, 128, 2880, "fp32", align=16, routing="invalid"),
]


def check_permute_unpermute(case, device):
    hidden, scale, ids, weights, emap = make_inputs(case, device)
    got = kernels.moe_permute(hidden, scale, ids, case.E, case.n_local, emap, case.align, case.fill)
    want = reference.moe_permute(hidden, scale, ids, case.E, case.n_local, emap, case.align, case.fill)
    local = reference.local_expert_of_routes(ids, case.E, emap)
    compare.assert_permute_matches(got, want, hidden, scale, ids, local)
    del want
    expert_out = got[0] if case.dtype != "fp8" else got[0].to(torch.bfloat16)
    out = torch.empty(case.M, case.H, dtype=expert_out.dtype, device=device)
    kernels.moe_unpermute(out, expert_out, weights, got[3], got[2])
    ref_out = torch.empty_like(out)
    reference.moe_unpermute(ref_out, expert_out, weights, got[3], got[2])
    compare.assert_close("moe_unpermute", out, ref_out)


@pytest.mark.parametrize("case", LARGE, ids=lambda c: c.id)
def test_large_shapes(case, device):
    check_permute_unpermute(case, device)


def test_row_addressing_beyond_2_pow_31(device):
    case = Case(32800, 8, 256, 8192, "bf16")
    assert case.M * case.k * case.H > 2**31
    check_permute_unpermute(case, device)


def _graph_ops(device):
    """(name, build(inputs) -> callable returning outputs, reference(inputs) -> outputs, compare)."""
    case = Case(300, 8, 64, 512, "bf16", align=128, ep=(2, 1), scale="block")
    scratch = kernels.MoEPermuteScratch(case.M, case.k, case.E, case.n_local, device, hidden_size=case.H,
                                        hidden_dtype=torch.bfloat16, align_block_size=case.align)

    def permute(inp, **kw):
        h, s, i, w, m = inp
        return kernels.moe_permute(h, s, i, case.E, case.n_local, m, case.align, **kw)

    def check_permute(got, inp):
        h, s, i, w, m = inp
        want = reference.moe_permute(h, s, i, case.E, case.n_local, m, case.align)
        compare.assert_permute_matches(got, want, h, s, i, reference.local_expert_of_routes(i, case.E, m))

    def align(inp):
        return kernels.moe_align_block_size(inp[2], 16, case.E, inp[4], pad_sorted_ids=True)

    def check_align(got, inp):
        want = reference.moe_align_block_size(inp[2], 16, case.E, inp[4], pad_sorted_ids=True)
        compare.assert_align_matches(got, want, inp[2], 16, case.E)

    state = {}

    def unpermute(inp):
        h, s, i, w, m = inp
        perm, _, offs, inv, _ = permute(inp, scratch=scratch)
        out = state.setdefault("out", torch.empty(case.M, case.H, dtype=h.dtype, device=device))
        return kernels.moe_unpermute(out, perm, w, inv, offs), perm, inv, offs

    def check_unpermute(got, inp):
        out, perm, inv, offs = got
        want = torch.empty_like(out)
        reference.moe_unpermute(want, perm, inp[3], inv, offs)
        compare.assert_close("moe_unpermute in a graph", out, want)

    def standard(inp):
        h, s, i, w, m = inp
        perm, _, _, per_row, inv = kernels._moe_permute(h, s, i, case.E, m, 64)
        out = state.setdefault("std_out", torch.empty(case.M, case.H, dtype=h.dtype, device=device))
        kernels._moe_unpermute_and_reduce(out, perm, inv, w, False)
        return perm, per_row, inv, out

    def check_standard(got, inp):
        h, s, i, w, m = inp
        perm, per_row, inv, out = got
        want = reference._moe_permute(h, s, i, case.E, m, 64)
        compare.assert_equal("_moe_permute rows in a graph", perm, want[0])
        compare.assert_equal("expert_ids_per_row in a graph", per_row, want[3])
        compare.assert_equal("inv_perm in a graph", inv, want[4])
        ref_out = torch.empty_like(out)
        reference._moe_unpermute_and_reduce(ref_out, want[0], want[4], w, False)
        compare.assert_close("_moe_unpermute_and_reduce in a graph", out, ref_out)

    return case, [
        ("moe_align_block_size", align, check_align),
        ("moe_permute", permute, check_permute),
        ("moe_permute+scratch", lambda inp: permute(inp, scratch=scratch), check_permute),
        ("moe_unpermute", unpermute, check_unpermute),
        ("standard path", standard, check_standard),
    ]


def test_cuda_graph_capture_and_replay_with_new_inputs(device):
    case, ops = _graph_ops(device)
    static = make_inputs(case, device, salt="graph-0")
    for name, fn, check in ops:
        fn(static)  # compile and warm up eagerly
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs = fn(static)
        for trial in range(1, 3):
            fresh = make_inputs(case, device, salt=f"graph-{name}-{trial}")
            for dst, src in zip(static, fresh):
                if dst is not None:
                    dst.copy_(src)
            graph.replay()
            torch.cuda.synchronize()
            check(outputs, static)


def test_the_dependent_launch_gives_what_the_plain_launch_gives(device, monkeypatch):
    """On Hopper and later the kernels after count_kernel are launched as its programmatic dependents: they start,
    and permute_rows_kernel loads its tiles, before count_kernel ends. Their outputs must be the plain launch's, bit
    for bit, eagerly and replayed from a CUDA graph: every index output whole, and the rows of the permuted states
    and scales that routes were copied to (the padding rows are left unwritten, as vLLM's kernel leaves them)."""
    from moeperf_kernels import _launch

    if not _launch.pdl(torch.device(device)):
        pytest.skip("no programmatic dependent launch on this GPU (before Hopper)")
    case = Case(4096, 8, 256, 7168, "fp8", align=128, ep=(2, 1), scale="block")
    hidden, scale, ids, _, emap = make_inputs(case, device)

    def both():
        return [*kernels.moe_permute(hidden, scale, ids, case.E, case.n_local, emap, case.align, case.fill),
                *kernels.moe_align_block_size(ids, case.align, case.E, emap, pad_sorted_ids=True)]

    def written(outputs):
        permuted, scales, offsets, inv, *indices = outputs
        copied = inv[inv < offsets[-1]].long()  # the rows of the local routes
        return [permuted.view(torch.uint8)[copied], scales.view(torch.int32)[copied], offsets, inv, *indices]

    dependent = written(both())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = both()
    graph.replay()
    captured = written(outputs)
    monkeypatch.setattr(_launch, "pdl", lambda _device: False)
    plain = written(both())
    assert 0 < len(plain[0]) < ids.numel()  # ep=(2, 1): some routes are local, not all
    for name, a, b, c in zip(("permuted", "scale", "offsets", "inv", "m_indices", "sorted_ids", "expert_ids",
                              "num_tokens_post_padded"), dependent, captured, plain):
        assert torch.equal(a, c) and torch.equal(b, c), name
