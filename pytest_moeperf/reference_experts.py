"""The PyTorch oracle of fused_experts (the MoE expert GEMMs): expert by expert, in fp32, with the weights
dequantized and the activations quantized by the contract's rule (kernels/fused_moe.py) and dequantized again.

Intermediates are rounded to the activation dtype where the contract stores them (the GEMM 1 output, the
silu-and-mul output, each route's GEMM 2 output), so the oracle and a kernel differ only in summation order.
"""
from __future__ import annotations

import torch

from pytest_moeperf.reference import local_expert_of_routes

FP8_MAX = 448.0
# Relative error ||out - oracle|| / ||oracle|| a kernel may show, per dtype mode. The oracle rounds where the kernel
# stores, so what is left is summation order plus, with fp8, an activation landing on the other side of an fp8
# rounding boundary. Under the Triton interpreter the kernels sum in fp32 as the oracle does and measure 0; these
# bounds are for the GPU, whose tensor cores sum in another order (to be measured there).
TOLERANCE = {"bf16": 1e-2, "fp16": 2e-3, "fp8_w8a8": 3e-2, "int8_w8a16": 1e-2}


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
    """Weights [E, n, k] as fp32: times one scale per expert, per output channel, or per [bn, bk] block."""
    wf = w.float()
    if scale is None:
        return wf
    s = scale.float()
    if block_shape is not None:
        bn, bk = block_shape
        s = s.repeat_interleave(bn, dim=1)[:, :w.shape[1]].repeat_interleave(bk, dim=2)[:, :, :w.shape[2]]
        return wf * s
    return wf * s.reshape(w.shape[0], -1, 1)


def fused_experts(hidden_states, w1, w2, topk_weights, topk_ids, *, use_fp8_w8a8=False, use_int8_w8a16=False,
                  per_channel_quant=False, global_num_experts=-1, expert_map=None, w1_scale=None, w2_scale=None,
                  a1_scale=None, a2_scale=None, block_shape=None):
    """out [M, H] in hidden_states' dtype; see kernels/fused_moe.py for the contract."""
    dtype = hidden_states.dtype
    M, H = hidden_states.shape
    k = topk_ids.shape[1]
    N = w2.shape[2]
    n_global = global_num_experts if expert_map is not None and global_num_experts > 0 else (
        expert_map.numel() if expert_map is not None else w1.shape[0])
    local = local_expert_of_routes(topk_ids, n_global, expert_map).cpu()
    group = block_shape[1] if block_shape is not None else None

    def activations(x, static):
        if not use_fp8_w8a8:
            return x.float()
        return fp8_round_trip(x, per_channel_quant, group, static)

    w1f = dequantize(w1, w1_scale, block_shape).cpu()
    w2f = dequantize(w2, w2_scale, block_shape).cpu()
    x = activations(hidden_states.cpu(), a1_scale)
    routes = torch.nonzero(local >= 0).flatten()
    tokens, experts = routes // k, local[routes]
    # GEMM 1 and silu-and-mul per route, each rounded to the activation dtype as the contract stores them.
    gate_up = torch.stack([x[t] @ w1f[e].T for t, e in zip(tokens.tolist(), experts.tolist())]) if len(routes) else \
        torch.zeros(0, 2 * N)
    gate_up = gate_up.to(dtype).float()
    act = (torch.nn.functional.silu(gate_up[:, :N]) * gate_up[:, N:]).to(dtype)
    act = activations(act, a2_scale) if len(routes) else act.float()
    out = torch.zeros(M, H)
    weights = topk_weights.reshape(-1).float().cpu()
    for i, (r, t, e) in enumerate(zip(routes.tolist(), tokens.tolist(), experts.tolist())):
        out[t] += ((act[i] @ w2f[e].T) * weights[r]).to(dtype).float()
    return out.to(dtype).to(hidden_states.device)
