"""A user's kernels, as they would sit in their own repository (tests/test_wheel.py copies this folder outside the
checkout and gates it with the installed wheel): one implementation per contract."""
import torch

import moeperf_kernels
from moeperf_kernels import current


def vllm_current():
    """vLLM's current API (moe_permute without alignment, permuted_idx as 5th output); contract read from the
    signature."""
    return {"permute": current.moe_permute, "unpermute": current.moe_unpermute}


def vllm_legacy():
    """vLLM's legacy API (align_block_size, fill_invalid_expert, m_indices), with its align kernel."""
    return {"permute": moeperf_kernels.moe_permute, "unpermute": moeperf_kernels.moe_unpermute,
            "align": moeperf_kernels.moe_align_block_size}


def sort_permute(hidden_states, a1q_scale, topk_ids, n_expert, n_local_expert=-1, expert_map=None,
                 permuted_hidden_states=None, scratch=None):
    """The current signature in plain PyTorch, grouping routes by expert with their order inside an expert reversed
    (as an atomics-based counting sort may leave it). Without an expert map: every expert is local."""
    if expert_map is not None:
        raise NotImplementedError("this example has no expert parallelism")
    M, k = topk_ids.shape
    R = M * k
    ids = topk_ids.flatten().long()
    routes = torch.arange(R, device=ids.device)
    order = torch.argsort(ids * R + (R - 1 - routes))  # by expert; inside one, the later route first
    inv = torch.empty(R, dtype=torch.int32, device=ids.device)
    inv[order] = torch.arange(R, dtype=torch.int32, device=ids.device)
    offsets = torch.zeros(n_expert + 1, dtype=torch.int64, device=ids.device)
    offsets[1:] = torch.cumsum(torch.bincount(ids, minlength=n_expert), 0)
    scale = a1q_scale[order // k] if a1q_scale is not None and a1q_scale.dim() == 2 and a1q_scale.shape[0] == M \
        else a1q_scale
    return hidden_states[order // k], scale, offsets, inv, order.to(torch.int32)


def any_order():
    return {"permute": sort_permute, "unpermute": current.moe_unpermute}
