"""Host side of the shared index build (see _index.py): buffer sizes and the count and scan launches."""
from __future__ import annotations

import torch

from kernels import _index, _launch


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def round_up(a: int, b: int) -> int:
    return cdiv(a, b) * b


class IndexShape:
    """Sizes of the index buffers for R routes over NB buckets on a device kind."""

    def __init__(self, num_routes: int, num_buckets: int):
        self.R = num_routes
        self.NB = num_buckets
        self.W = _launch.hist_width(num_buckets)
        self.CHUNK = _launch.chunk_size(self.W)
        self.C = cdiv(num_routes, self.CHUNK)

    def allocate(self, device) -> dict[str, torch.Tensor]:
        return {
            "hist": torch.empty((max(self.C, 1), self.W), dtype=torch.int32, device=device),
            "base": torch.empty((max(self.C, 1), self.W), dtype=torch.int32, device=device),
            "rank": torch.empty(max(self.R, 1), dtype=torch.int32, device=device),
        }


def build_index(shape: IndexShape, buffers, topk_flat, expert_map, num_experts: int, round_to: int,
                num_slots: int, unrouted: torch.Tensor, unrouted_value: int, *, offsets=None, ntpp=None,
                expert_ids=None) -> None:
    """Count and scan: after this, a route's row is base[chunk, bucket] + rank (see _index.route_row).

    `unrouted` (num_slots int32 entries) gets `unrouted_value` in every slot no route owns. With `offsets` the scan
    writes the bucket start rows (permute); with `ntpp` and `expert_ids` the align outputs.
    """
    is_align = offsets is None
    hist, base, rank = buffers["hist"], buffers["base"], buffers["rank"]
    if shape.R > 0:
        _index.count_kernel[(shape.C,)](
            topk_flat, topk_flat if expert_map is None else expert_map, hist, rank, shape.R, num_experts, shape.NB,
            HAS_MAP=expert_map is not None, W=shape.W, CHUNK=shape.CHUNK,
            num_warps=_launch.num_warps(shape.CHUNK * max(shape.CHUNK, shape.W) // 4))
    dummy = rank
    block_c = max(1, 4096 // shape.W)
    _index.scan_kernel[(1,)](
        hist, base, shape.C, shape.NB, round_to, num_slots, unrouted, unrouted_value,
        dummy if is_align else offsets, ntpp if is_align else dummy, expert_ids if is_align else dummy,
        expert_ids.numel() if is_align else 0,
        IS_ALIGN=is_align, W=shape.W, BLOCK_C=block_c,
        PAD_COLS=max(1, min(_launch.next_pow2(round_to), 4096 // shape.W)), BLOCK_T=1024, num_warps=8)
