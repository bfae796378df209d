"""fused_experts: an MoE layer's expert GEMMs (vLLM's Triton fused-MoE contract), driven by moe_align_block_size.

out[t] = sum_j w[t,j] * (silu(x_t @ w1[e]_gate^T) * (x_t @ w1[e]_up^T)) @ w2[e]^T, e = topk_ids[t,j], fp32
accumulation; w1 [E, 2N, H] holds the gate half then the up half, w2 [E, H, N]. Routes of experts the expert_map
gives as -1 add nothing. Steps: align the routes into blocks of one expert, GEMM 1 (x rows -> [R, 2N]), silu-and-mul
([R, N]), GEMM 2 with the routing weight ([R, H]), sum over each token's k routes.

Quantized modes (the names of vLLM's arguments):
- use_fp8_w8a8: w1/w2 float8_e4m3fn. Activations are quantized here to fp8 (max |x| / 448 per tensor, per token with
  per_channel_quant, per token and 128-column group with block_shape), unless a static per-tensor a1_scale / a2_scale
  is given. Weight scales: one per expert ([E]), per output channel with per_channel_quant ([E, n] or [E, n, 1]),
  or per block_shape = [bn, bk] block ([E, ceil(n/bn), ceil(k/bk)]).
- use_int8_w8a16: w1/w2 int8 with per-output-channel scales [E, n]; activations stay 16-bit.
"""
from __future__ import annotations

import torch

from . import _checks, _gemm, _launch, tuning
from ._pipeline import cdiv
from .align import moe_align_block_size

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0


def quantize_fp8(x: torch.Tensor, per_token: bool, group: int | None):
    """(x as float8_e4m3fn, scales): scale = max |x| / 448 per tensor ([1]), per row ([rows, 1]) or per row and
    column group ([rows, cols / group]); x_q = x / scale rounded to fp8. A zero block gets scale 1."""
    xf = x.float()
    if group is not None:
        g = xf.view(xf.shape[0], -1, group)
        scale = g.abs().amax(dim=2) / FP8_MAX
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        return (g / scale[:, :, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8).view_as(x), scale
    amax = xf.abs().amax(dim=1, keepdim=True) if per_token else xf.abs().amax().reshape(1)
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    return (xf / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


def _weight_scale_layout(scale: torch.Tensor | None, name: str, E: int, n: int, k: int, fp8: bool,
                         per_channel: bool, block_shape) -> tuple[int, tuple[int, int, int]]:
    """(B_SCALE layout, (stride per expert, per N, per K)) of a weight scale, checked against its weight."""
    if scale is None:
        raise ValueError(f"{name} is required with quantized weights")
    _checks.check_tensor(scale, name)
    if scale.dtype != torch.float32:
        raise ValueError(f"{name} must be float32, got {_checks.describe(scale)}")
    if block_shape is not None:
        allowed = [(E, cdiv(n, block_shape[0]), cdiv(k, block_shape[1]))]
        layout = _gemm.PER_BLOCK
    elif per_channel or not fp8:
        allowed = [(E, n), (E, n, 1)]
        layout = _gemm.PER_ROW
    else:
        allowed = [(E,), (E, 1, 1)]
        layout = _gemm.PER_TENSOR
    if tuple(scale.shape) not in allowed:
        raise ValueError(f"{name} must have shape {' or '.join(map(str, allowed))} for this quantization, got "
                         f"{_checks.describe(scale)}")
    strides = (scale.stride(0), scale.stride(1) if scale.dim() > 1 else 0, scale.stride(2) if scale.dim() > 2 else 0)
    return layout, strides


def _check_weights(w1, w2, H: int, use_fp8_w8a8: bool, use_int8_w8a16: bool):
    for name, w in (("w1", w1), ("w2", w2)):
        _checks.check_tensor(w, name)
        if w.dim() != 3 or w.stride(2) != 1:
            raise ValueError(f"{name} must be a 3-D tensor [E, n, k] with k contiguous, got {_checks.describe(w)}")
    E, two_n, k1 = w1.shape
    if k1 != H or two_n % 2 or tuple(w2.shape) != (E, H, two_n // 2):
        raise ValueError(f"w1 must be [E, 2N, H] and w2 [E, H, N] with H = {H}, got w1 {_checks.describe(w1)} and "
                         f"w2 {_checks.describe(w2)}")
    want = FP8 if use_fp8_w8a8 else torch.int8 if use_int8_w8a16 else None
    for name, w in (("w1", w1), ("w2", w2)):
        if want is not None and w.dtype != want:
            raise ValueError(f"{name} must be {want} in this mode, got {_checks.describe(w)}")
    return E, two_n // 2


def _gemm_call(a, a_scale, a_layout, b, b_scale, b_layout, b_strides, c, sorted_ids, expert_ids, ntpp, R, row_div,
               weights, cfg, block_shape, b_to_a):
    N, K = b.shape[1], b.shape[2]
    bm, bn = cfg["BLOCK_SIZE_M"], cfg["BLOCK_SIZE_N"]
    # Room for every block align may fill; programs past the filled ones return at once. The interpreter runs
    # programs one by one, so there the grid is cut to the filled blocks (reading the count syncs, which is free).
    slots = int(ntpp.item()) if _launch.INTERPRETED else sorted_ids.numel()
    grid = (cdiv(slots, bm) * cdiv(N, bn),)
    a_strides = (a_scale.stride(0) if a_scale is not None and a_scale.dim() > 0 else 0,
                 a_scale.stride(1) if a_scale is not None and a_scale.dim() > 1 else 0)
    gn, gk = block_shape if block_shape is not None else (1, 1)
    dummy = c
    _gemm.expert_gemm_kernel[grid](
        a, b, c, a_scale if a_scale is not None else dummy, b_scale if b_scale is not None else dummy,
        weights if weights is not None else dummy, sorted_ids, expert_ids, ntpp, R, N, K, a.stride(0), b.stride(0),
        b.stride(1), c.stride(0), *a_strides, *b_strides, gn, gk, cfg["GROUP_SIZE_M"], ROW_DIV=row_div,
        MUL_WEIGHT=weights is not None, A_SCALE=a_layout.value, B_SCALE=b_layout.value, B_TO_A=b_to_a,
        UPCAST=_launch.INTERPRETED, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=cfg["BLOCK_SIZE_K"], num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"])


def _activation(x: torch.Tensor, use_fp8_w8a8: bool, static_scale, per_token: bool, block_shape):
    """(A operand, its scale, A_SCALE layout) of one GEMM."""
    if not use_fp8_w8a8:
        return x, None, _gemm.NO_SCALE
    if static_scale is not None:
        if block_shape is not None or per_token or static_scale.numel() != 1:
            raise ValueError("a static a1_scale / a2_scale is one per-tensor float32 scalar, and only without "
                             "block_shape or per_channel_quant")
        scale = static_scale.reshape(1).float()
        return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale, _gemm.PER_TENSOR
    if block_shape is not None:
        q, scale = quantize_fp8(x, False, block_shape[1])
        return q, scale, _gemm.PER_BLOCK
    q, scale = quantize_fp8(x, per_token, None)
    return q, scale, _gemm.PER_ROW if per_token else _gemm.PER_TENSOR


def fused_experts(hidden_states: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
                  topk_ids: torch.Tensor, *, use_fp8_w8a8: bool = False, use_int8_w8a16: bool = False,
                  per_channel_quant: bool = False, global_num_experts: int = -1,
                  expert_map: torch.Tensor | None = None, w1_scale: torch.Tensor | None = None,
                  w2_scale: torch.Tensor | None = None, a1_scale: torch.Tensor | None = None,
                  a2_scale: torch.Tensor | None = None, block_shape: list[int] | None = None,
                  config: dict | None = None) -> torch.Tensor:
    """The MoE layer's expert computation for hidden_states [M, H] (bf16 / fp16); returns [M, H] in its dtype.
    w1/w2 hold the local experts (E = w1.shape[0]); with expert_map (global id -> local id or -1),
    global_num_experts is the length of the map. `config` overrides the launch config (the keys of vLLM's files);
    without it the tuned file of this shape, mode and GPU is read (kernels/tuning.py), else the defaults."""
    M, H = _checks.check_hidden_states(hidden_states)
    if hidden_states.dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"hidden_states must be bfloat16 or float16, got {_checks.describe(hidden_states)}")
    _, k = _checks.check_topk_ids(topk_ids, M)
    if use_fp8_w8a8 and use_int8_w8a16:
        raise ValueError("use_fp8_w8a8 and use_int8_w8a16 exclude each other")
    if block_shape is not None and (not use_fp8_w8a8 or len(block_shape) != 2):
        raise ValueError(f"block_shape [block_n, block_k] goes with use_fp8_w8a8, got {block_shape!r}")
    E, N = _check_weights(w1, w2, H, use_fp8_w8a8, use_int8_w8a16)
    if block_shape is not None and (H % block_shape[1] or N % block_shape[1]):
        raise ValueError(f"block_shape {block_shape}: the hidden size {H} and the intermediate size {N} must be "
                         f"multiples of block_k = {block_shape[1]} (activations are quantized in groups of it)")
    if tuple(topk_weights.shape) != (M, k) or topk_weights.dtype != torch.float32:
        raise ValueError(f"topk_weights must be float32 of shape {(M, k)}, got {_checks.describe(topk_weights)}")
    _checks.check_same_device(hidden_states=hidden_states, w1=w1, w2=w2, topk_weights=topk_weights,
                              topk_ids=topk_ids, expert_map=expert_map)
    num_experts = E
    if expert_map is not None:
        num_experts = global_num_experts if global_num_experts > 0 else expert_map.numel()
        _checks.check_expert_map(expert_map, num_experts, E)
    quantized = use_fp8_w8a8 or use_int8_w8a16
    if quantized:
        l1, s1 = _weight_scale_layout(w1_scale, "w1_scale", E, 2 * N, H, use_fp8_w8a8, per_channel_quant,
                                      block_shape)
        l2, s2 = _weight_scale_layout(w2_scale, "w2_scale", E, H, N, use_fp8_w8a8, per_channel_quant, block_shape)
    else:
        l1 = l2 = _gemm.NO_SCALE
        s1 = s2 = (0, 0, 0)
    _launch.require_runnable(hidden_states, "hidden_states")
    x = hidden_states if hidden_states.stride(1) == 1 else hidden_states.contiguous()
    mode = "fp8_w8a8" if use_fp8_w8a8 else "int8_w8a16" if use_int8_w8a16 else None
    cfg = config or tuning.gemm_launch_config(M, k, E, N, w1.dtype, mode, block_shape, hidden_states.device)
    R = M * k
    sorted_ids, expert_ids, ntpp = moe_align_block_size(topk_ids, cfg["BLOCK_SIZE_M"], num_experts, expert_map)
    weights = topk_weights.reshape(-1)
    dtype, device = hidden_states.dtype, hidden_states.device

    a, a_s, a_l = _activation(x, use_fp8_w8a8, a1_scale, per_channel_quant, block_shape)
    # A route that no block holds (id outside [0, E)) gets no row from GEMM 1 and is never read by GEMM 2; its row
    # of `down` is zeroed, so it adds nothing. Its gate_up row is zeroed only where a per-tensor fp8 scale of the
    # intermediate reads every row (at Mixtral's M = 4096 the fill would write 470 MB).
    scale_reads_all_rows = use_fp8_w8a8 and a2_scale is None and block_shape is None and not per_channel_quant
    gate_up = (torch.zeros if scale_reads_all_rows else torch.empty)((R, 2 * N), dtype=dtype, device=device)
    _gemm_call(a, a_s, a_l, w1, w1_scale, l1, s1, gate_up, sorted_ids, expert_ids, ntpp, R, k, None, cfg,
               block_shape, use_int8_w8a16)
    act = torch.empty((R, N), dtype=dtype, device=device)
    block = min(_launch.next_pow2(N), 1024)
    _gemm.silu_and_mul_kernel[(R, cdiv(N, block))](gate_up, act, N, gate_up.stride(0), act.stride(0),
                                                    EMULATE_RTNE=_launch.INTERPRETED, BLOCK=block)
    a, a_s, a_l = _activation(act, use_fp8_w8a8, a2_scale, per_channel_quant, block_shape)
    down = torch.zeros((R, H), dtype=dtype, device=device)
    _gemm_call(a, a_s, a_l, w2, w2_scale, l2, s2, down, sorted_ids, expert_ids, ntpp, R, 1, weights, cfg,
               block_shape, use_int8_w8a16)
    return down.view(M, k, H).sum(dim=1, dtype=torch.float32).to(dtype)
