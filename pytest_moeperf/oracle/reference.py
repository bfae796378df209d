"""PyTorch reference of every operation of docs/contract.md section 1: the oracle implementations are checked against.

Written to be read, not to be fast: plain sorts, gathers and loops over experts, on the inputs' device. Same names
and argument order as vLLM's fused-MoE API.
"""
from __future__ import annotations

import torch

from pytest_moeperf.inputs.routing import local_expert_of_routes


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _round_up(a: int, b: int) -> int:
    return _cdiv(a, b) * b


def _raw(t):
    """float8 as bytes: CPU indexing does not take every float8 operation."""
    return t.view(torch.uint8) if t.element_size() == 1 else t


def _is_per_tensor(scale) -> bool:
    return scale is None or scale.dim() == 0 or (scale.dim() == 1 and scale.numel() == 1)


def moe_align_block_size(topk_ids, block_size, num_experts, expert_map=None, pad_sorted_ids=False):
    """(sorted_token_ids, expert_ids, num_tokens_post_padded), contract section 1.1. Ids outside [0, E) are left out."""
    device = topk_ids.device
    ids = topk_ids.reshape(-1).long().cpu()
    R = ids.numel()
    slots = R + num_experts * (block_size - 1)
    if pad_sorted_ids:
        slots = _round_up(slots, block_size)
    if R < num_experts:
        capped = R * block_size
        slots = min(slots, _round_up(capped, block_size) if pad_sorted_ids else capped)
    sorted_ids = torch.full((slots,), R, dtype=torch.int32)
    expert_ids = torch.full((_cdiv(slots, block_size),), -1, dtype=torch.int32)
    emap = None if expert_map is None else expert_map.long().cpu()
    pos = 0
    for e in range(num_experts):
        routes = torch.nonzero(ids == e).flatten()  # ascending r
        if routes.numel() == 0:
            continue
        sorted_ids[pos:pos + routes.numel()] = routes.int()
        blocks = _cdiv(routes.numel(), block_size)
        expert_ids[pos // block_size: pos // block_size + blocks] = e if emap is None else int(emap[e])
        pos += blocks * block_size
    ntpp = torch.tensor([pos], dtype=torch.int32)
    return sorted_ids.to(device), expert_ids.to(device), ntpp.to(device)


def num_local_experts(n_expert, n_local_expert=-1, expert_map=None) -> int:
    if n_local_expert != -1:
        return n_local_expert
    return n_expert if expert_map is None else int((expert_map >= 0).sum())


def moe_permute(hidden_states, a1q_scale, topk_ids, n_expert, n_local_expert=-1, expert_map=None,
                align_block_size=None, fill_invalid_expert=-1, permuted_hidden_states=None, scratch=None):
    """(permuted [P,H], a1q_scale, expert_first_token_offset [L+1], inv_permuted_idx [R], m_indices [P]): contract
    section 1.3.

    Computed on the input's device. Rows no local route owns are zero here; the contract leaves them unspecified.
    `permuted_hidden_states` and `scratch` are accepted for signature parity and ignored.
    """
    device = hidden_states.device
    M, H = hidden_states.shape
    k = topk_ids.shape[1]
    R = M * k
    E = n_expert
    L = num_local_experts(n_expert, n_local_expert, expert_map)
    A = align_block_size or 1
    P = R if align_block_size is None else _round_up(R + E * (A - 1), A)

    ids = topk_ids.reshape(-1).long()
    local = local_expert_of_routes(topk_ids, n_expert, expert_map)
    is_local = local >= 0
    # Sort key: the local expert; non-local ids after every local one (E + id), invalid ids last (2E).
    # A stable sort keeps ascending r inside a key.
    key = torch.where(is_local, local, torch.where((ids >= 0) & (ids < E), E + ids, 2 * E))
    order = torch.sort(key, stable=True).indices
    position = torch.empty_like(order)
    position[order] = torch.arange(R, device=device)  # each route's place in the sorted order

    counts = torch.bincount(local[is_local], minlength=L)[:L]
    sizes = (counts + A - 1) // A * A
    offsets = torch.zeros(L + 1, dtype=torch.int64, device=device)
    offsets[1:] = torch.cumsum(sizes, 0)
    V = offsets[L]
    first_in_sorted_order = torch.cumsum(counts, 0) - counts  # where each expert's routes start in that order
    e = local.clamp(min=0)
    num_local_routes = int(is_local.sum())
    # Local route: its expert's first row + its rank inside the expert. Dropped routes follow from row V, in the
    # sorted order.
    inv = torch.where(is_local, offsets[e] + position - first_in_sorted_order[e], V + position - num_local_routes)
    inv = inv.int()

    m_indices = torch.full((P,), fill_invalid_expert, dtype=torch.int32, device=device)
    m_indices[:int(V)] = torch.repeat_interleave(torch.arange(L, dtype=torch.int32, device=device), sizes)

    permuted = torch.zeros((P, H), dtype=hidden_states.dtype, device=device)
    rows = inv[is_local].long()
    tokens = torch.arange(R, device=device)[is_local] // k
    _raw(permuted)[rows] = _raw(hidden_states)[tokens]
    scale_out = a1q_scale
    if not _is_per_tensor(a1q_scale):
        scale_out = torch.zeros((P, a1q_scale.shape[1]), dtype=a1q_scale.dtype, device=device)
        scale_out[rows] = a1q_scale[tokens]
    return permuted, scale_out, offsets, inv, m_indices


def moe_unpermute(out, permuted_hidden_states, topk_weights, inv_permuted_idx, expert_first_token_offset=None):
    """out[t] = sum_j w[t,j] * permuted[inv[t*k+j]] in fp32, in place; rows >= offsets[-1] add 0 (contract 1.3)."""
    M = out.shape[0]
    inv = inv_permuted_idx.long().view(M, -1)
    keep = torch.ones_like(inv, dtype=torch.bool)
    if expert_first_token_offset is not None:
        keep = inv < int(expert_first_token_offset[-1])
    _weighted_sum_into(out, permuted_hidden_states, inv, topk_weights, keep)
    return out


def _weighted_sum_into(out, rows_src, inv, weights, keep):
    src = rows_src.float()
    acc = torch.zeros(out.shape, dtype=torch.float32, device=out.device)
    w = None if weights is None else weights.float()
    for j in range(inv.shape[1]):
        rows = torch.where(keep[:, j], inv[:, j], 0)
        term = src[rows] * keep[:, j, None]
        if w is not None:
            term = term * w[:, j, None]
        acc += term
    out.copy_(acc.to(out.dtype))


def _moe_permute(hidden_states, a1q_scale, topk_ids, global_num_experts, expert_map, block_m):
    """Standard path, contract section 1.2: (permuted, a1q_scale, sorted_token_ids, expert_ids_per_row, inv_perm)."""
    k = topk_ids.shape[1]
    R = topk_ids.numel()
    sorted_ids, expert_ids, _ = moe_align_block_size(topk_ids, block_m, global_num_experts, expert_map,
                                                     pad_sorted_ids=True)
    expert_ids_per_row = expert_ids.repeat_interleave(block_m)
    inv_perm = torch.argsort(sorted_ids, stable=True)[:R].int()  # before the clamp
    sorted_ids = sorted_ids.clamp(max=R - 1)
    src = (sorted_ids // k).long()
    permuted = _raw(hidden_states)[src].view(hidden_states.dtype)
    if not _is_per_tensor(a1q_scale):
        a1q_scale = a1q_scale[src]
    return permuted, a1q_scale, sorted_ids, expert_ids_per_row, inv_perm


def _moe_unpermute_and_reduce(out, curr_hidden, inv_perm, topk_weight, apply_router_weight_on_input):
    """Standard path, contract section 1.2: out[t] = sum_j w[t,j] * curr_hidden[inv_perm[t*k+j]], fp32, in place."""
    M = out.shape[0]
    inv = inv_perm.long().view(M, -1)
    _weighted_sum_into(out, curr_hidden, inv, None if apply_router_weight_on_input else topk_weight,
                       torch.ones_like(inv, dtype=torch.bool))
