"""moe_align_block_size: routes grouped by expert, each expert's region padded to a multiple of block_size."""
from __future__ import annotations

import torch

from . import _checks, _launch
from ._pipeline import cdiv, launch_index, round_up


def max_padded_slots(num_routes: int, num_experts: int, block_size: int, pad_sorted_ids: bool) -> int:
    """Length of sorted_token_ids (SPEC 1.1): room for every expert's worst-case padding."""
    slots = num_routes + num_experts * (block_size - 1)
    if pad_sorted_ids:
        slots = round_up(slots, block_size)
    if num_routes < num_experts:
        capped = num_routes * block_size
        slots = min(slots, round_up(capped, block_size) if pad_sorted_ids else capped)
    return slots


def moe_align_block_size(topk_ids: torch.Tensor, block_size: int, num_experts: int,
                         expert_map: torch.Tensor | None = None, pad_sorted_ids: bool = False):
    """Returns (sorted_token_ids, expert_ids, num_tokens_post_padded), all int32.

    Routes (r = token * topk + j) are grouped by ascending global expert id, in ascending r inside an expert; each
    expert's count is rounded up to block_size; unused slots hold R = topk_ids.numel(). expert_ids names each block's
    expert, mapped through expert_map when given (-1 for non-local experts), and -1 past the last used block.
    Routes whose id is outside [0, num_experts) are left out (never used as an address). One launch.
    """
    _checks.check_topk_ids(topk_ids)
    _checks.check_positive_int(block_size, "block_size")
    _checks.check_positive_int(num_experts, "num_experts")
    if expert_map is not None:
        _checks.check_same_device(topk_ids=topk_ids, expert_map=expert_map)
        _checks.check_expert_map(expert_map, num_experts)
    _launch.require_runnable(topk_ids, "topk_ids")
    device = topk_ids.device
    R = topk_ids.numel()
    slots = max_padded_slots(R, num_experts, block_size, pad_sorted_ids)
    sorted_ids = torch.empty(slots, dtype=torch.int32, device=device)
    expert_ids = torch.empty(cdiv(slots, block_size), dtype=torch.int32, device=device)
    ntpp = torch.empty(1, dtype=torch.int32, device=device)
    launch_index(topk_ids.reshape(-1), expert_map, num_experts, num_experts, block_size, sorted_ids, R, ntpp,
                 expert_ids=expert_ids)
    return sorted_ids, expert_ids, ntpp
