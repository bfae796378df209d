"""Argument checks shared by the kernels' Python entry points.

Each failure is a ValueError or TypeError that names the argument, what it was (shape, dtype, device) and what was
expected, so that a wrong call never reaches a kernel.
"""
from __future__ import annotations

import weakref

import torch

HIDDEN_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn)
REDUCE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INDEX_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def describe(t: torch.Tensor) -> str:
    return f"shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device}"


def check_tensor(t, name: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def check_hidden_states(hidden_states, name: str = "hidden_states", dtypes=HIDDEN_DTYPES) -> tuple[int, int]:
    check_tensor(hidden_states, name)
    if hidden_states.dim() != 2:
        raise ValueError(f"{name} must be 2-D [num_tokens, hidden_size], got {describe(hidden_states)}")
    if hidden_states.dtype not in dtypes:
        raise TypeError(f"{name} has dtype {hidden_states.dtype} ({describe(hidden_states)}); "
                        f"expected one of {', '.join(str(d) for d in dtypes)}")
    return hidden_states.shape[0], hidden_states.shape[1]


def check_topk_ids(topk_ids, num_tokens: int | None = None, name: str = "topk_ids") -> tuple[int, int]:
    check_tensor(topk_ids, name)
    if topk_ids.dtype not in INDEX_DTYPES:
        raise TypeError(f"{name} must hold integer expert ids, got {describe(topk_ids)}")
    if topk_ids.dim() != 2:
        raise ValueError(f"{name} must be 2-D [num_tokens, topk], got {describe(topk_ids)}")
    if num_tokens is not None and topk_ids.shape[0] != num_tokens:
        raise ValueError(f"{name} must have one row per token ({num_tokens} tokens in hidden_states), "
                         f"got {describe(topk_ids)}")
    if topk_ids.shape[1] < 1:
        raise ValueError(f"{name} must have at least one column (topk >= 1), got {describe(topk_ids)}")
    return topk_ids.shape[0], topk_ids.shape[1]


def check_weights(weights, shape: tuple[int, int], name: str) -> None:
    check_tensor(weights, name)
    if not weights.dtype.is_floating_point or weights.dtype == torch.float8_e4m3fn:
        raise TypeError(f"{name} must be a float tensor (fp32 preferred), got {describe(weights)}")
    if tuple(weights.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} [num_tokens, topk], got {describe(weights)}")


def check_same_device(**tensors) -> torch.device:
    present = {k: v for k, v in tensors.items() if isinstance(v, torch.Tensor)}
    devices = {k: v.device for k, v in present.items()}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{k} on {d}" for k, d in devices.items())
        raise ValueError(f"all tensors must be on one device, got {listing}")
    return next(iter(devices.values()))


def check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


def check_scale(a1q_scale, num_tokens: int, hidden_size: int) -> int:
    """Columns to gather per row: 0 for no scale or a per-tensor scale, else the 2-D scale's width."""
    if a1q_scale is None:
        return 0
    check_tensor(a1q_scale, "a1q_scale")
    if a1q_scale.dim() == 0 or (a1q_scale.dim() == 1 and a1q_scale.numel() == 1):
        return 0
    blocks = -(-hidden_size // 128)
    if a1q_scale.dim() != 2 or a1q_scale.shape[0] != num_tokens or a1q_scale.shape[1] not in (1, blocks):
        raise ValueError(
            f"a1q_scale must be per-tensor (0-D or one element), per-token [{num_tokens}, 1] or 1x128 blocks "
            f"[{num_tokens}, {blocks}], got {describe(a1q_scale)}")
    if a1q_scale.element_size() != 4:
        raise TypeError(f"a1q_scale must be a 32-bit float tensor, got {describe(a1q_scale)}")
    return a1q_scale.shape[1]


_map_cache: dict[tuple, tuple[weakref.ref, tuple[int, int, int]]] = {}


def _map_facts(expert_map: torch.Tensor) -> tuple[int, int, int]:
    """(entries >= 0, smallest entry, largest entry): one host sync per map tensor and version.

    The cache holds a weak reference, so a new map that reuses a freed map's memory is never taken for it.
    """
    key = (expert_map.data_ptr(), expert_map._version, expert_map.numel(), str(expert_map.device))
    hit = _map_cache.get(key)
    if hit is not None and hit[0]() is expert_map:
        return hit[1]
    if expert_map.is_cuda and torch.cuda.is_current_stream_capturing():
        return (-1, -1, -1)
    facts = (int((expert_map >= 0).sum()), int(expert_map.min()), int(expert_map.max()))
    if len(_map_cache) > 64:
        _map_cache.clear()
    _map_cache[key] = (weakref.ref(expert_map), facts)
    return facts


def check_expert_map(expert_map, num_experts: int, n_local_expert: int = -1) -> int:
    """Number of local experts L. Without a map every expert is local, so L = num_experts."""
    check_positive_int(num_experts, "n_expert")
    if expert_map is None:
        if n_local_expert not in (-1, num_experts):
            raise ValueError(f"n_local_expert={n_local_expert} without an expert_map: every expert is local, so it "
                             f"must be -1 or n_expert={num_experts}")
        return num_experts
    check_tensor(expert_map, "expert_map")
    if expert_map.dtype not in INDEX_DTYPES or expert_map.dim() != 1 or expert_map.shape[0] != num_experts:
        raise ValueError(f"expert_map must be a 1-D integer tensor with one entry per global expert "
                         f"[{num_experts}], got {describe(expert_map)}")
    local, lo, hi = _map_facts(expert_map)
    if local == -1:  # inside CUDA-graph capture with a map never seen before: no sync allowed
        if n_local_expert == -1:
            raise ValueError("pass n_local_expert explicitly when capturing a CUDA graph with a new expert_map")
        return n_local_expert
    if n_local_expert != -1 and n_local_expert != local:
        raise ValueError(f"expert_map has {local} local experts (entries >= 0) but n_local_expert={n_local_expert}")
    if lo < -1 or hi >= max(local, 1):
        raise ValueError(f"expert_map entries must be -1 (not local) or a local id in [0, {local}), "
                         f"got values in [{lo}, {hi}]")
    return local


def check_align_block_size(align_block_size) -> int | None:
    if align_block_size is None:
        return None
    return check_positive_int(align_block_size, "align_block_size")
