"""Seeded routing generators (docs/contract.md section 2, `routing`) and the expert-parallel expert map.

Each returns (topk_ids int32 [M, k], topk_weights fp32 [M, k]) with k distinct experts per token; the weights are
a softmax over the chosen logits, as vLLM's router computes them.
"""
from __future__ import annotations

import torch

from pytest_moeperf.spec.scenario import ROUTINGS


def _weights(chosen_logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(chosen_logits.float(), dim=-1)


def make_routing(num_tokens: int, topk: int, num_experts: int, kind: str = "uniform", seed: int = 0, *,
                 alpha: float = 1.2, p: float = 0.5, experts_used: int | None = None):
    if topk > num_experts:
        raise ValueError(f"topk={topk} exceeds num_experts={num_experts}")
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_tokens, num_experts, generator=g)
    if kind == "uniform":
        chosen = torch.topk(logits, topk, dim=-1)
        ids = chosen.indices
    elif kind == "zipf":
        popularity = 1.0 / torch.arange(1, num_experts + 1, dtype=torch.float64) ** alpha
        ids = torch.multinomial(popularity.expand(num_tokens, -1), topk, replacement=False, generator=g)
    elif kind == "hot":
        # With probability p a token's first choice is expert 0; its other choices are uniform.
        ids = torch.topk(logits, topk, dim=-1).indices
        hot = torch.rand(num_tokens, generator=g) < p
        has_zero = (ids == 0).any(dim=-1)
        ids[hot & ~has_zero, 0] = 0
    elif kind == "sparse":
        used = experts_used if experts_used is not None else max(topk, num_experts // 8)
        if not topk <= used <= num_experts:
            raise ValueError(f"experts_used={used} must lie in [topk={topk}, num_experts={num_experts}]")
        logits[:, used:] = float("-inf")
        ids = torch.topk(logits, topk, dim=-1).indices
    else:
        raise ValueError(f"unknown routing {kind!r}; expected one of {', '.join(ROUTINGS)}")
    weights = _weights(torch.gather(logits.nan_to_num(neginf=-1e4), 1, ids))
    return ids.to(torch.int32), weights


def expert_map_for(num_experts: int, ep_size: int = 1, ep_rank: int = 0) -> torch.Tensor | None:
    """Linear EP map: rank r owns global experts r*L .. r*L+L-1 (L = E / ep_size); None when ep_size == 1."""
    if ep_size == 1:
        return None
    if num_experts % ep_size:
        raise ValueError(f"num_experts={num_experts} is not divisible by ep_size={ep_size}")
    if not 0 <= ep_rank < ep_size:
        raise ValueError(f"ep_rank={ep_rank} outside [0, ep_size={ep_size})")
    L = num_experts // ep_size
    emap = torch.full((num_experts,), -1, dtype=torch.int32)
    emap[ep_rank * L:(ep_rank + 1) * L] = torch.arange(L, dtype=torch.int32)
    return emap


def local_expert_of_routes(topk_ids, n_expert, expert_map=None):
    """Local expert of every route (flat, token-major), -1 for dropped routes (non-local or id outside [0, E))."""
    ids = topk_ids.reshape(-1).long()
    valid = (ids >= 0) & (ids < n_expert)
    safe = torch.where(valid, ids, 0)
    local = safe if expert_map is None else expert_map.to(ids.device).long()[safe]
    return torch.where(valid, local, -1)
