"""vLLM's current moe_permute (the MoEPermuteScratch era) on this project's kernels: no alignment and no
fill_invalid_expert; the 5th output is permuted_idx, the route r = t*k + j that owns each row (R for rows no route
owns), instead of the legacy m_indices. moe_unpermute is the same function in both vintages."""
from __future__ import annotations

import torch

from . import permute as _legacy
from .unpermute import moe_unpermute

__all__ = ["moe_permute", "moe_unpermute", "permuted_idx"]


def permuted_idx(inv_permuted_idx: torch.Tensor, expert_first_token_offset: torch.Tensor, rows: int) -> torch.Tensor:
    """[rows] int32: the local route that owns each row, R (the route count) elsewhere. No host sync (CUDA-graph
    safe): routes of other ranks' experts are scattered into a spare slot that is then cut off."""
    R = inv_permuted_idx.numel()
    owner = torch.full((rows + 1,), R, dtype=torch.int32, device=inv_permuted_idx.device)
    local = inv_permuted_idx < expert_first_token_offset[-1]
    slot = torch.where(local, inv_permuted_idx.long(), rows)
    owner.scatter_(0, slot, torch.arange(R, dtype=torch.int32, device=owner.device))
    return owner[:rows]


def moe_permute(hidden_states: torch.Tensor, a1q_scale: torch.Tensor | None, topk_ids: torch.Tensor, n_expert: int,
                n_local_expert: int = -1, expert_map: torch.Tensor | None = None,
                permuted_hidden_states: torch.Tensor | None = None, scratch=None):
    """(permuted_hidden_states, a1q_scale, expert_first_token_offset, inv_permuted_idx, permuted_idx), as vLLM's
    current moe_permute returns them; rows, offsets and inv as the legacy moe_permute without alignment."""
    perm, scale, offsets, inv, _ = _legacy.moe_permute(hidden_states, a1q_scale, topk_ids, n_expert, n_local_expert,
                                                       expert_map, None, -1, permuted_hidden_states, scratch)
    return perm, scale, offsets, inv, permuted_idx(inv, offsets, perm.shape[0])
