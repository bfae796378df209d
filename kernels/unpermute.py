"""moe_unpermute (customized path) and _moe_unpermute_and_reduce (standard path): one launch each."""
from __future__ import annotations

import torch

from . import _checks, _launch, _rows, tuning
from ._pipeline import cdiv


def _reduce(out, permuted, inv, weights, limit, op: str) -> None:
    """One launch of unpermute_kernel, with the launch config tuned for `op` (each caller compiles its own variant
    and reads its own data layout: a config tuned for one is not shown faster for the other)."""
    M, H = out.shape
    k = inv.numel() // max(M, 1)
    if M == 0 or H == 0:
        return
    config = tuning.launch_config(op, M, H, k, out.dtype, out.device)
    block_t, block_h = config["BLOCK_T"], config["BLOCK_H"]
    dummy = inv
    _rows.unpermute_kernel[(cdiv(M, block_t), cdiv(H, block_h))](
        permuted, inv, dummy if weights is None else weights, out, dummy if limit is None else limit,
        M, H, permuted.shape[0], permuted.stride(0), out.stride(0), K=k,
        HAS_W=weights is not None, HAS_LIMIT=limit is not None, BLOCK_T=block_t, BLOCK_H=block_h,
        num_warps=config["num_warps"])


def _check_reduce_args(out, permuted, inv, inv_name: str, weights, weights_name: str, permuted_name: str) -> int:
    M, H = _checks.check_hidden_states(out, "out", _checks.REDUCE_DTYPES)
    _, H2 = _checks.check_hidden_states(permuted, permuted_name, _checks.REDUCE_DTYPES)
    if H2 != H or permuted.dtype != out.dtype:
        raise ValueError(f"{permuted_name} ({_checks.describe(permuted)}) must have out's hidden size {H} and "
                         f"dtype {out.dtype} (out: {_checks.describe(out)})")
    _checks.check_tensor(inv, inv_name)
    # int32 from this project's and vLLM's custom permute, int64 from vLLM's Python path (torch.argsort)
    if inv.dtype not in (torch.int32, torch.int64) or inv.dim() != 1 or (inv.numel() % M if M else inv.numel()):
        raise ValueError(f"{inv_name} must be 1-D int32 or int64 with num_tokens*topk entries ({M} tokens), "
                         f"got {_checks.describe(inv)}")
    # no tokens (M = 0): topk is the weights' width, as moe_permute's outputs of an empty batch leave it nowhere else
    k = inv.numel() // M if M else (weights.shape[-1] if weights is not None and weights.dim() == 2 else 0)
    if weights is not None:
        _checks.check_weights(weights, (M, k), weights_name)
    for name, t in (("out", out), (permuted_name, permuted)):
        if t.stride(1) != 1:
            raise ValueError(f"{name} must be row-contiguous (stride 1 along the hidden size), got strides "
                             f"{tuple(t.stride())}")
    _launch.require_runnable(out, "out")
    return k


def moe_unpermute(out: torch.Tensor, permuted_hidden_states: torch.Tensor, topk_weights: torch.Tensor,
                  inv_permuted_idx: torch.Tensor, expert_first_token_offset: torch.Tensor | None = None):
    """out[t] = sum_j topk_weights[t, j] * permuted[inv[t*k + j]], accumulated in fp32, written in place.

    A route whose inv entry lies outside [0, permuted rows) is read as no row (it adds 0): an index is never used
    as an address unchecked. Checking it on the host would cost a device sync, so the kernel masks it.

    With expert_first_token_offset, routes whose row is >= its last entry (dropped by expert parallelism) add
    exactly 0, whatever those rows hold.
    """
    _checks.check_same_device(out=out, permuted_hidden_states=permuted_hidden_states, topk_weights=topk_weights,
                              inv_permuted_idx=inv_permuted_idx, expert_first_token_offset=expert_first_token_offset)
    _check_reduce_args(out, permuted_hidden_states, inv_permuted_idx, "inv_permuted_idx", topk_weights,
                       "topk_weights", "permuted_hidden_states")
    limit = None
    if expert_first_token_offset is not None:
        offs = expert_first_token_offset
        if offs.dtype != torch.int64 or offs.dim() != 1 or offs.numel() < 1:
            raise ValueError(f"expert_first_token_offset must be 1-D int64 [L+1], got {_checks.describe(offs)}")
        limit = offs[-1:]
    _reduce(out, permuted_hidden_states, inv_permuted_idx, topk_weights.contiguous(), limit, "unpermute")
    return out


def _moe_unpermute_and_reduce(out: torch.Tensor, curr_hidden: torch.Tensor, inv_perm: torch.Tensor,
                              topk_weight: torch.Tensor, apply_router_weight_on_input: bool) -> None:
    """Standard path: out[t] = sum_j w[t, j] * curr_hidden[inv_perm[t*k + j]] (no weights when they were applied
    on the input), fp32 accumulation, in place."""
    _checks.check_same_device(out=out, curr_hidden=curr_hidden, inv_perm=inv_perm, topk_weight=topk_weight)
    _check_reduce_args(out, curr_hidden, inv_perm, "inv_perm", topk_weight, "topk_weight", "curr_hidden")
    weights = None if apply_router_weight_on_input else topk_weight.contiguous()
    _reduce(out, curr_hidden, inv_perm, weights, None, "unpermute_and_reduce")
