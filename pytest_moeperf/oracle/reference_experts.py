"""The PyTorch oracle of fused_experts (the MoE expert GEMMs): expert by expert, in fp32, with the weights
dequantized and the activations quantized by the contract's rule (kernels/fused_moe.py) and dequantized again.

Intermediates are rounded to the activation dtype where the contract stores them (the GEMM 1 output, the
silu-and-mul output, each route's GEMM 2 output), so the oracle and a kernel differ only in summation order.
"""
from __future__ import annotations

import torch

from pytest_moeperf.inputs.dtypes import FP8_MAX
from pytest_moeperf.inputs.routing import local_expert_of_routes

# Relative error ||out - oracle|| / ||oracle|| a kernel may show, per dtype mode: about twice the largest an H100
# showed (2026-11-23, Triton 3.6, the scenarios' shapes at M = 1 to 4096, docs/fused-experts.md): bf16 1.25e-3,
# fp16 2.6e-4, int8_w8a16 7.7e-4, fp8_w8a8 9.8e-3 (per-token activations, M = 16; block scales 5.6e-3). The oracle
# rounds where the kernel stores, so what is left is the tensor cores' summation order plus, with fp8, an
# intermediate value landing on the other side of an fp8 rounding step. Under the Triton interpreter, which
# multiplies in fp32 as the oracle does, tests/test_fused_moe.py's cases measure 0 to 2e-6.
TOLERANCE = {"bf16": 3e-3, "fp16": 6e-4, "fp8_w8a8": 2e-2, "int8_w8a16": 2e-3}


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    want = want.float().cpu()
    return ((got.float().cpu() - want).norm() / want.norm().clamp(min=1e-30)).item()


def _scaled(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x / scale rounded to float8_e4m3fn and back, in fp32."""
    return (x / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).float() * scale


def fp8_round_trip(x: torch.Tensor, per_token: bool, group: int | None, static_scale=None) -> torch.Tensor:
    """The fp8 value each activation becomes: scale = max |x| / 448 over the tensor, a row, or a row's group of
    `group` columns (1 where that maximum is 0), or the given per-tensor scale."""
    x = x.float()
    if static_scale is not None:
        return _scaled(x, static_scale.float().reshape(()))
    if group is not None:
        rows, cols = x.shape
        g = x.reshape(rows, cols // group, group)
        top = g.abs().max(dim=2, keepdim=True).values
        return _scaled(g, torch.where(top > 0, top / FP8_MAX, 1.0)).reshape(rows, cols)
    top = x.abs().max(dim=1, keepdim=True).values if per_token else x.abs().max()
    return _scaled(x, torch.where(top > 0, top / FP8_MAX, 1.0))


def dequantize(w: torch.Tensor, scale, block_shape=None) -> torch.Tensor:
    """Weights [n, k] of one expert as fp32: times its scale (a scalar), one per output channel ([n] or [n, 1]),
    or one per [bn, bk] block ([ceil(n/bn), ceil(k/bk)])."""
    wf = w.float()
    if scale is None:
        return wf
    s = scale.float()
    if block_shape is not None:
        bn, bk = block_shape
        return wf * s.repeat_interleave(bn, dim=0)[:w.shape[0]].repeat_interleave(bk, dim=1)[:, :w.shape[1]]
    return wf * s.reshape(-1, 1) if s.numel() > 1 else wf * s.reshape(())


def fused_experts(hidden_states, w1, w2, topk_weights, topk_ids, *, use_fp8_w8a8=False, use_int8_w8a16=False,
                  per_channel_quant=False, global_num_experts=-1, expert_map=None, w1_scale=None, w2_scale=None,
                  a1_scale=None, a2_scale=None, block_shape=None):
    """out [M, H] in hidden_states' dtype; see kernels/fused_moe.py for the contract. Expert by expert on the input's
    device (one expert's weights dequantized at a time), routes in ascending order."""
    dtype, device = hidden_states.dtype, hidden_states.device
    M, H = hidden_states.shape
    k = topk_ids.shape[1]
    N = w2.shape[2]
    n_global = global_num_experts if expert_map is not None and global_num_experts > 0 else (
        expert_map.numel() if expert_map is not None else w1.shape[0])
    local = local_expert_of_routes(topk_ids, n_global, expert_map).to(device)
    group = block_shape[1] if block_shape is not None else None

    def activations(x, static):
        return fp8_round_trip(x, per_channel_quant, group, static) if use_fp8_w8a8 else x.float()

    def scale_of(scales, e):
        return None if scales is None else scales[e]

    x = activations(hidden_states, a1_scale)
    routes = torch.nonzero(local >= 0).flatten()
    experts = local[routes]
    # GEMM 1 and silu-and-mul per route, each rounded to the activation dtype as the contract stores them; the
    # fp8 scale of the intermediate spans all routes, so both GEMMs of an expert cannot run in one pass.
    act = torch.zeros(len(routes), N, dtype=dtype, device=device)
    for e in torch.unique(experts).tolist():
        mine = torch.nonzero(experts == e).flatten()
        h = (x[routes[mine] // k] @ dequantize(w1[e], scale_of(w1_scale, e), block_shape).T).to(dtype).float()
        act[mine] = (torch.nn.functional.silu(h[:, :N]) * h[:, N:]).to(dtype)
    act = activations(act, a2_scale) if len(routes) else act.float()
    out = torch.zeros(M, H, device=device)
    weights = topk_weights.reshape(-1).float()
    for e in torch.unique(experts).tolist():
        mine = torch.nonzero(experts == e).flatten()
        y = act[mine] @ dequantize(w2[e], scale_of(w2_scale, e), block_shape).T * weights[routes[mine], None]
        out.index_add_(0, routes[mine] // k, y.to(dtype).float())
    return out.to(dtype)
