"""moe_permute (vLLM's customized path) and _moe_permute (vLLM's standard Python path)."""
from __future__ import annotations

import torch

from . import _checks, _launch, _rows, tuning
from ._bits import as_bits
from ._pipeline import cdiv, is_small, launch_index, round_up
from .align import moe_align_block_size


def permuted_rows(num_routes: int, num_experts: int, align_block_size: int | None) -> int:
    """P, the rows of moe_permute's outputs (SPEC 1.3)."""
    if align_block_size is None:
        return num_routes
    return round_up(num_routes + num_experts * (align_block_size - 1), align_block_size)


def _check_out_buffer(buf, rows: int, hidden_states: torch.Tensor) -> None:
    _checks.check_tensor(buf, "permuted_hidden_states")
    want = (rows, hidden_states.shape[1])
    if (tuple(buf.shape) != want or buf.dtype != hidden_states.dtype or buf.device != hidden_states.device
            or buf.stride(1) != 1):
        raise ValueError(f"permuted_hidden_states must be a row-contiguous {hidden_states.dtype} tensor of shape "
                         f"{want} on {hidden_states.device}, got {_checks.describe(buf)}")


def moe_permute(hidden_states: torch.Tensor, a1q_scale: torch.Tensor | None, topk_ids: torch.Tensor,
                n_expert: int, n_local_expert: int = -1, expert_map: torch.Tensor | None = None,
                align_block_size: int | None = None, fill_invalid_expert: int = -1,
                permuted_hidden_states: torch.Tensor | None = None, scratch=None):
    """Group each token's routes by local expert. Returns (permuted_hidden_states [P,H], a1q_scale,
    expert_first_token_offset int64 [L+1], inv_permuted_idx int32 [R], m_indices int32 [P]); see SPEC 1.3.

    No sort (see _index.py). One launch while R = M*topk <= _launch.small_batch_routes(), and without padding while
    _launch.direct_fits() (the route comparisons and loads few enough): each program builds the index of its own
    tokens' routes and copies their rows. Two above: count_kernel, then a token-major copy that ranks its routes and
    places them (on Hopper and later launched as count_kernel's dependent, _launch.pdl, it does so while count_kernel
    runs).
    Dropped routes (non-local, or ids outside [0, n_expert)) get rows >= V and are not copied. With `scratch` (a
    MoEPermuteScratch) nothing is allocated and the outputs alias the scratch.
    """
    M, H = _checks.check_hidden_states(hidden_states)
    _, k = _checks.check_topk_ids(topk_ids, M)
    A = _checks.check_align_block_size(align_block_size)
    if not isinstance(fill_invalid_expert, int):
        raise TypeError(f"fill_invalid_expert must be an int, got {fill_invalid_expert!r}")
    _checks.check_same_device(hidden_states=hidden_states, topk_ids=topk_ids, expert_map=expert_map,
                              a1q_scale=a1q_scale, permuted_hidden_states=permuted_hidden_states)
    L = _checks.check_expert_map(expert_map, n_expert, n_local_expert)
    S = _checks.check_scale(a1q_scale, M, H)
    _launch.require_runnable(hidden_states, "hidden_states")
    if hidden_states.stride(1) != 1:
        hidden_states = hidden_states.contiguous()
    R = M * k
    P = permuted_rows(R, n_expert, A)

    if scratch is not None:
        scratch.validate(hidden_states, topk_ids)
        out = scratch.outputs(R, P, hidden_states, a1q_scale, S, n_expert, L)
    else:
        device = hidden_states.device
        out = dict(
            inv=torch.empty(R, dtype=torch.int32, device=device),
            offsets=torch.empty(L + 1, dtype=torch.int64, device=device),
            m_indices=torch.empty(P, dtype=torch.int32, device=device),
            scale=torch.empty((P, S), dtype=a1q_scale.dtype, device=device) if S else None,
        )
        if permuted_hidden_states is None:
            out["permuted"] = torch.empty((P, H), dtype=hidden_states.dtype, device=device)
    if permuted_hidden_states is not None:
        _check_out_buffer(permuted_hidden_states, P, hidden_states)
        out["permuted"] = permuted_hidden_states

    topk_flat = topk_ids.reshape(-1)
    map_or_ids = topk_flat if expert_map is None else expert_map
    x_bits, out_bits = as_bits(hidden_states), as_bits(out["permuted"])
    scale_src, scale_dst = (as_bits(a1q_scale), as_bits(out["scale"])) if S else (out["inv"], out["inv"])
    config = tuning.launch_config("permute", M, H, k, hidden_states.dtype, hidden_states.device, E=n_expert)
    block_t, block_h = config["BLOCK_T"], config["BLOCK_H"]
    grid_h = max(1, cdiv(H, block_h))
    copy_args = (H, S, x_bits.stride(0), out_bits.stride(0), scale_src.stride(0) if S else 0,
                 scale_dst.stride(0) if S else 0)
    copy_meta = dict(HAS_SCALE=S > 0, BLOCK_T=block_t, BLOCK_H=block_h, BLOCK_S=_launch.next_pow2(max(S, 1)),
                     num_warps=config["num_warps"])
    index_meta = dict(K=k, MAP_BUCKETS=expert_map is not None, HAS_PAD=(A or 1) > 1,
                      PAD_COLS=_launch.pad_cols(A or 1))
    # Unpadded, rows counted straight from the routes (direct_meta) while that costs less than the other ways.
    direct = ((A or 1) == 1 and _launch.direct_fits(R, block_t * k, grid_h, config["num_warps"], L)
              and (L + 2) * R < 2**31)
    if direct or is_small(R):
        # Enough programs (past the last token's, some copy nothing) to share the tail.
        fillers = cdiv(_launch.fill_programs(P, hidden_states.device), grid_h)
        grid = (max(cdiv(M, block_t), fillers), grid_h)
        if direct:
            how = _launch.direct_meta(R, L, block_t * k, grid[0] * grid[1], config["num_warps"])
        else:
            how = _launch.small_index_meta(R, L, block_t * k, config["num_warps"])
        _rows.permute_fused_kernel[grid](
            topk_flat, map_or_ids, x_bits, out_bits, out["inv"], out["m_indices"], out["offsets"], scale_src,
            scale_dst, M, n_expert, L, A or 1, P, fill_invalid_expert, *copy_args,
            FILL_BLOCK=_launch.fill_block(), **how, **index_meta, **copy_meta)
    else:
        count, chunk = launch_index(topk_flat, expert_map, n_expert, L, A or 1, out["m_indices"],
                                    fill_invalid_expert, out["offsets"], count=out.get("count"))
        pdl = _launch.pdl(hidden_states.device)
        if M > 0:
            _rows.permute_rows_kernel[(cdiv(M, block_t), grid_h)](
                topk_flat, map_or_ids, count["base"], count["sub"], count["table"], x_bits, out_bits, out["inv"],
                out["m_indices"], scale_src, scale_dst, M, n_expert, L, A or 1, *copy_args, chunk,
                SUB=_launch.sub_block(), RT=_launch.next_pow2(block_t * k),
                RC=_launch.rank_block(block_t * k, config["num_warps"]), W=_launch.hist_width(L), PDL=pdl,
                launch_pdl=pdl, **index_meta, **copy_meta)
    scale_out = out["scale"] if S else a1q_scale
    return out["permuted"], scale_out, out["offsets"], out["inv"], out["m_indices"]


def _moe_permute(hidden_states: torch.Tensor, a1q_scale: torch.Tensor | None, topk_ids: torch.Tensor,
                 global_num_experts: int, expert_map: torch.Tensor | None, block_m: int):
    """vLLM's standard path: align (Triton), then the gathers in PyTorch. Returns (permuted [P,H], a1q_scale,
    sorted_token_ids clamped to R-1, expert_ids_per_row [P], inv_perm [R]); see SPEC 1.2.

    Every id must lie in [0, global_num_experts), as in vLLM: align leaves other routes out, and inv_perm then has
    no row for them.
    """
    M, H = _checks.check_hidden_states(hidden_states)
    _, k = _checks.check_topk_ids(topk_ids, M)
    _checks.check_positive_int(block_m, "block_m")
    _checks.check_same_device(hidden_states=hidden_states, topk_ids=topk_ids, expert_map=expert_map,
                              a1q_scale=a1q_scale)
    S = _checks.check_scale(a1q_scale, M, H)
    R = M * k
    sorted_ids, expert_ids, _ = moe_align_block_size(topk_ids, block_m, global_num_experts, expert_map,
                                                     pad_sorted_ids=True)
    P = sorted_ids.numel()
    expert_ids_per_row = expert_ids.repeat_interleave(block_m)
    # inv_perm = argsort(sorted_ids)[:R], computed before the sentinel is clamped. Every route appears exactly once
    # and sentinels are >= R, so a scatter gives the same result; the sentinels all land in the dropped slot R.
    inv_perm = torch.empty(R + 1, dtype=torch.int32, device=hidden_states.device)
    inv_perm.scatter_(0, sorted_ids.clamp(max=R).long(),
                      torch.arange(P, dtype=torch.int32, device=hidden_states.device))
    inv_perm = inv_perm[:R]
    sorted_ids = sorted_ids.clamp(max=R - 1) if R > 0 else sorted_ids
    source = (sorted_ids // k).long()
    permuted = as_bits(hidden_states).index_select(0, source).view(hidden_states.dtype)
    if S:
        a1q_scale = a1q_scale.index_select(0, source)
    return permuted, a1q_scale, sorted_ids, expert_ids_per_row, inv_perm
