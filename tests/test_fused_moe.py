"""fused_experts (the MoE expert GEMMs) against the PyTorch oracle, every quantization mode, and its input errors."""
import dataclasses
import os
import re
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch

import moeperf_kernels as kernels
from pytest_moeperf.inputs import experts
from pytest_moeperf.oracle import reference_experts

MODE = {"none": None, "fp8": "fp8_w8a8", "int8": "int8_w8a16"}  # the dtype mode of each quantization here
TOLERANCE = reference_experts.TOLERANCE
relative_error = reference_experts.relative_error


@dataclasses.dataclass(frozen=True)
class GemmCase:
    M: int
    k: int
    E: int
    H: int
    N: int
    dtype: str = "bf16"
    quant: str = "none"  # none, fp8-tensor, fp8-token, fp8-static, fp8-block, int8
    ep: bool = False
    invalid: bool = False

    @property
    def id(self):
        return (f"M{self.M}-k{self.k}-E{self.E}-H{self.H}-N{self.N}-{self.dtype}-{self.quant}"
                + ("-ep" if self.ep else "") + ("-invalid" if self.invalid else ""))


CASES = [
    GemmCase(5, 2, 4, 64, 32),
    GemmCase(9, 2, 8, 96, 48, "fp16"),
    GemmCase(17, 3, 6, 64, 64, ep=True),
    GemmCase(7, 2, 4, 64, 32, invalid=True),
    GemmCase(6, 2, 4, 64, 64, quant="fp8-tensor"),
    GemmCase(7, 2, 4, 64, 64, quant="fp8-tensor", invalid=True),  # unwritten rows must not reach the scale
    GemmCase(6, 2, 4, 64, 64, quant="fp8-token", ep=True),
    GemmCase(6, 2, 4, 64, 64, quant="fp8-static"),
    GemmCase(11, 2, 4, 64, 64, quant="fp8-block"),
    GemmCase(6, 2, 4, 64, 32, quant="int8"),
]
BLOCK = [32, 32]  # block_shape of the fp8-block case (vLLM's models use [128, 128]; small shapes here)


def _quantize_weights(w: torch.Tensor, quant: str):
    """(quantized weights [E, n, k], scales [E, ...]) the way a checkpoint holds them, expert by expert."""
    scheme = {"int8": "int8", "fp8-block": "fp8-block", "fp8-token": "fp8-channel"}.get(quant, "fp8")
    q, s = zip(*(experts.quantize_expert(we, scheme, BLOCK) for we in w))
    return torch.stack(q), torch.stack(s).float()


def make_case(case: GemmCase, device):
    g = torch.Generator().manual_seed(zlib.crc32(case.id.encode()))  # the same inputs in every process
    dtype = torch.float16 if case.dtype == "fp16" else torch.bfloat16
    x = torch.randn(case.M, case.H, generator=g).to(dtype)
    n_global = 2 * case.E if case.ep else case.E
    ids = torch.stack([torch.randperm(n_global, generator=g)[:case.k] for _ in range(case.M)]).to(torch.int32)
    if case.invalid:
        ids[::3, 0] = n_global + 5
    weights = torch.softmax(torch.randn(case.M, case.k, generator=g), dim=1)
    w1 = torch.randn(case.E, 2 * case.N, case.H, generator=g) / case.H ** 0.5
    w2 = torch.randn(case.E, case.H, case.N, generator=g) / case.N ** 0.5
    kw = {}
    if case.ep:
        emap = torch.full((n_global,), -1, dtype=torch.int32)
        emap[torch.randperm(n_global, generator=g)[:case.E]] = torch.arange(case.E, dtype=torch.int32)
        kw.update(expert_map=emap.to(device), global_num_experts=n_global)
    if case.quant == "none":
        w1, w2 = w1.to(dtype), w2.to(dtype)
    else:
        (w1, s1), (w2, s2) = _quantize_weights(w1, case.quant), _quantize_weights(w2, case.quant)
        kw.update(w1_scale=s1.to(device), w2_scale=s2.to(device))
        if case.quant == "int8":
            kw.update(use_int8_w8a16=True)
        else:
            kw.update(use_fp8_w8a8=True, per_channel_quant=case.quant == "fp8-token")
        if case.quant == "fp8-block":
            kw.update(block_shape=BLOCK)
        if case.quant == "fp8-static":
            kw.update(a1_scale=torch.tensor([0.02], device=device), a2_scale=torch.tensor([0.01], device=device))
    tensors = [t.to(device) for t in (x, w1, w2, weights, ids)]
    return tensors, kw


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_fused_experts_matches_the_oracle(case, device):
    tensors, kw = make_case(case, device)
    got = kernels.fused_experts(*tensors, **kw)
    want = reference_experts.fused_experts(*tensors, **kw)
    assert got.shape == want.shape and got.dtype == tensors[0].dtype
    assert torch.isfinite(got).all()
    err = relative_error(got, want)
    assert err <= TOLERANCE[MODE[case.quant.split("-")[0]] or case.dtype], \
        f"relative error {err:.2e} against the oracle"


def test_routes_of_other_ranks_and_bad_ids_add_nothing(device):
    """Tokens whose routes are all non-local (expert parallelism) or out of range come out exactly zero."""
    case = GemmCase(6, 2, 4, 64, 32, ep=True)
    (x, w1, w2, weights, ids), kw = make_case(case, device)
    emap = kw["expert_map"].cpu()
    remote = torch.nonzero(emap < 0).flatten()[:2].to(torch.int32)
    ids[0] = remote.to(device)
    ids[1] = torch.tensor([-1, 1000], dtype=torch.int32, device=device)
    got = kernels.fused_experts(x, w1, w2, weights, ids, **kw)
    assert (got[:2] == 0).all()
    assert relative_error(got, reference_experts.fused_experts(x, w1, w2, weights, ids, **kw)) <= TOLERANCE["bf16"]


def test_oracle_is_the_formula_for_one_route():
    """The oracle itself, bf16 without quantization, against the contract's formula written out for M = 1, k = 1."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 16, generator=g).to(torch.bfloat16)
    w1 = (torch.randn(2, 8, 16, generator=g) / 4).to(torch.bfloat16)
    w2 = (torch.randn(2, 16, 4, generator=g) / 2).to(torch.bfloat16)
    out = reference_experts.fused_experts(x, w1, w2, torch.tensor([[0.75]]), torch.tensor([[1]]))
    h = x.float() @ w1[1].float().T
    want = 0.75 * ((torch.nn.functional.silu(h[:, :4]) * h[:, 4:]) @ w2[1].float().T)
    assert torch.allclose(out.float(), want, rtol=2e-2, atol=1e-2)


@pytest.mark.parametrize("change, message", [
    (lambda a: a.update(w2=a["w2"][:, :, :16]), "w1 must be [E, 2N, H] and w2 [E, H, N]"),
    (lambda a: a.update(topk_weights=a["topk_weights"].double()), "topk_weights must be float32"),
    (lambda a: a.update(hidden_states=a["hidden_states"].float()), "bfloat16 or float16"),
    (lambda a: a.update(use_fp8_w8a8=True), "w1 must be torch.float8_e4m3fn"),
    (lambda a: a.update(block_shape=[128, 128]), "block_shape"),
    (lambda a: a.update(w1=a["w1"].transpose(1, 2).contiguous().transpose(1, 2)), "k contiguous"),
])
def test_bad_input_is_a_clear_error(change, message, device):
    (x, w1, w2, weights, ids), _ = make_case(CASES[0], device)
    args = dict(hidden_states=x, w1=w1, w2=w2, topk_weights=weights, topk_ids=ids)
    change(args)
    with pytest.raises(ValueError, match=re.escape(message)):
        kernels.fused_experts(**args)


def test_weight_scales_must_match_the_mode(device):
    case = GemmCase(4, 2, 4, 64, 64, quant="fp8-tensor")
    tensors, kw = make_case(case, device)
    with pytest.raises(ValueError, match=re.escape("w1_scale must have shape (4, 128) or (4, 128, 1)")):
        kernels.fused_experts(*tensors, **dict(kw, per_channel_quant=True))
    with pytest.raises(ValueError, match="w2_scale is required"):
        kernels.fused_experts(*tensors, **dict(kw, w2_scale=None))


def test_kernels_compile_for_an_h100():
    """The GPU compiler's view of the kernels, without a GPU: tests/hopper_compile.py builds fused_experts' for sm_90
    in every mode and the index kernels as dependent launches (their grid-dependency instructions are in the PTX), in
    a process without TRITON_INTERPRET (the interpreter accepts code that compiler rejects, and skips PDL)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("hopper_compile.py"))], env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.count("expert_gemm_kernel") == 6 and done.stdout.count("silu_and_mul_kernel") == 2, done.stdout
    for kernel, instruction in (("count_kernel", "launch_dependents"), ("permute_rows_kernel", "wait"),
                                ("align_place_kernel", "wait")):
        assert f"{kernel} PDL: griddepcontrol.{instruction} emitted" in done.stdout, done.stdout
