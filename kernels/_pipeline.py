"""Host side of the index build (see _index.py): which kernel builds the index of a batch, its buffers and grid."""
from __future__ import annotations

import torch

from . import _index, _launch


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def round_up(a: int, b: int) -> int:
    return cdiv(a, b) * b


def is_small(num_routes: int) -> bool:
    """Small batches build their index in every program (one launch); large ones go through count_kernel."""
    return num_routes <= _launch.small_batch_routes()


class CountShape:
    """count_kernel for R routes over NB buckets: its chunk size, and its buffers (per-chunk histograms and bases,
    per-sub-block counts within the chunk, each bucket's end, padding and first row)."""

    def __init__(self, num_routes: int, num_buckets: int):
        self.R = num_routes
        self.W = _launch.hist_width(num_buckets)
        self.CHUNK = _launch.count_chunk(num_routes, self.W)
        self.C = max(1, cdiv(num_routes, self.CHUNK))

    @staticmethod
    def allocate(max_routes: int, num_buckets: int, device) -> dict[str, torch.Tensor]:
        """Buffers for any call of up to max_routes routes."""
        W = _launch.hist_width(num_buckets)
        chunks = max(1, min(_launch.most_chunks(W), cdiv(max_routes, _launch.sub_block())))
        return {
            "hist": torch.empty((chunks, W), dtype=torch.int32, device=device),
            "base": torch.empty((chunks, W), dtype=torch.int32, device=device),
            "sub": torch.empty((max(1, cdiv(max_routes, _launch.sub_block())), W), dtype=torch.int32, device=device),
            "table": torch.empty((3, W), dtype=torch.int32, device=device),
        }


_tickets: dict[torch.device, torch.Tensor] = {}


def ticket_counter(device: torch.device) -> torch.Tensor:
    """count_kernel's ticket counter for calls without a scratch: one zeroed int32 per device, which every launch
    leaves at 0 again. Launches that share it must not overlap, so concurrent calls on two streams of one device
    need a MoEPermuteScratch each (it has its own counter)."""
    if device.type != "cuda":
        return torch.zeros(1, dtype=torch.int32, device=device)
    if device not in _tickets:
        _tickets[device] = torch.zeros(1, dtype=torch.int32, device=device)
    return _tickets[device]


def index_args(num_buckets: int, round_to: int, has_map: bool, is_align: bool) -> dict:
    """count_kernel's meta-parameters (the other index kernels take some of them)."""
    return dict(IS_ALIGN=is_align, MAP_BUCKETS=has_map and not is_align, MAP_EXPERT_IDS=has_map and is_align,
                HAS_PAD=round_to > 1, PAD_COLS=_launch.pad_cols(round_to), W=_launch.hist_width(num_buckets),
                FILL_BLOCK=_launch.fill_block())


def launch_index(topk_flat: torch.Tensor, expert_map: torch.Tensor | None, num_experts: int, num_buckets: int,
                 round_to: int, slots: torch.Tensor, fill_value: int, head: torch.Tensor, *,
                 expert_ids: torch.Tensor | None = None, count: dict | None = None):
    """With `expert_ids`: moe_align_block_size, complete (slots = sorted_token_ids, head =
    num_tokens_post_padded), in one launch for a small batch, else count_kernel and align_place_kernel.
    Otherwise count_kernel for moe_permute of a large batch (slots = m_indices, head = the offsets);
    permute_rows_kernel places the routes after it, from the returned (buffers, chunk size).
    `count` holds count_kernel's buffers (CountShape.allocate, plus "ticket"); None allocates them here."""
    is_align = expert_ids is not None
    R = topk_flat.numel()
    dummy = slots
    map_or_ids = topk_flat if expert_map is None else expert_map
    meta = index_args(num_buckets, round_to, expert_map is not None, is_align)
    if is_align and is_small(R):
        _index.align_bucket_kernel[(num_experts,)](
            topk_flat, map_or_ids, slots, expert_ids, head, R, num_experts, round_to, slots.numel(),
            expert_ids.numel(), MAP_EXPERT_IDS=meta["MAP_EXPERT_IDS"], W=_launch.next_pow2(num_experts),
            CH=_launch.align_chunk(R), PAD_BLOCK=_launch.pad_cols(round_to), FILL_BLOCK=meta["FILL_BLOCK"],
            num_warps=_launch.align_warps(R, num_experts))
        return None, None
    shape = CountShape(R, num_buckets)
    pdl = _launch.pdl(topk_flat.device)
    if count is None:
        count = CountShape.allocate(R, num_buckets, topk_flat.device)
        count["ticket"] = ticket_counter(topk_flat.device)
    _index.count_kernel[(shape.C,)](
        topk_flat, map_or_ids, count["hist"], count["base"], count["sub"], count["table"], count["ticket"], slots,
        expert_ids if is_align else dummy, head, R, num_experts, num_buckets, round_to, slots.numel(), fill_value,
        expert_ids.numel() if is_align else 0, shape.CHUNK, SUB=_launch.sub_block(),
        BLOCK_C=_launch.scan_block(shape.C, shape.W), num_warps=4, PDL=pdl, **meta)
    if is_align:
        block = 64
        _index.align_place_kernel[(cdiv(R, block),)](
            topk_flat, map_or_ids, count["base"], count["sub"], count["table"], slots, expert_ids, R, num_experts,
            round_to, shape.CHUNK, MAP_EXPERT_IDS=meta["MAP_EXPERT_IDS"], HAS_PAD=meta["HAS_PAD"],
            PAD_COLS=meta["PAD_COLS"], W=shape.W, SUB=_launch.sub_block(), BLOCK=block,
            RC=_launch.rank_block(block, 4), num_warps=4, PDL=pdl, launch_pdl=pdl)
    return count, shape.CHUNK
