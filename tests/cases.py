"""Inputs for the kernel tests: one seeded, freshly drawn problem per case."""
from __future__ import annotations

import dataclasses
import zlib

import torch

from pytest_moeperf.inputs import routing

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp8": torch.float8_e4m3fn}


@dataclasses.dataclass(frozen=True)
class Case:
    M: int
    k: int
    E: int
    H: int
    dtype: str = "bf16"
    align: int | None = None
    ep: tuple[int, int] = (1, 0)  # (ep_size, ep_rank)
    scale: str | None = None  # None, "tensor0d", "tensor1d", "token", "block"
    routing: str = "uniform"  # a routing.make_routing kind, or "duplicates" / "invalid" / "one_expert"
    fill: int = -1

    @property
    def id(self) -> str:
        parts = [f"M{self.M}", f"k{self.k}", f"E{self.E}", f"H{self.H}", self.dtype, self.routing]
        if self.align:
            parts.append(f"A{self.align}")
        if self.ep[0] > 1:
            parts.append(f"ep{self.ep[0]}r{self.ep[1]}")
        if self.scale:
            parts.append(f"scale-{self.scale}")
        if self.fill != -1:
            parts.append(f"fill{self.fill}")
        return "-".join(parts)

    @property
    def n_local(self) -> int:
        return self.E // self.ep[0] if self.ep[0] > 1 else -1


def seed_of(text: str) -> int:
    return zlib.crc32(text.encode())


def make_topk(case: Case, g: torch.Generator) -> torch.Tensor:
    M, k, E = case.M, case.k, case.E
    if case.routing == "duplicates":  # ids drawn with replacement: a token may name one expert twice
        return torch.randint(0, E, (M, k), generator=g, dtype=torch.int32)
    if case.routing == "invalid":  # some ids negative or >= E: dropped, never read out of bounds
        return torch.randint(-3, E + 3, (M, k), generator=g, dtype=torch.int32)
    if case.routing == "one_expert":  # every route to the last expert, all other experts empty
        return torch.full((M, k), E - 1, dtype=torch.int32)
    ids, _ = routing.make_routing(M, k, E, case.routing, seed=int(torch.randint(0, 2**31, (1,), generator=g)),
                                  experts_used=max(k, E // 8))
    return ids


def make_inputs(case: Case, device, salt: str = ""):
    """(hidden_states, a1q_scale, topk_ids, topk_weights, expert_map) on `device`, never zero-filled."""
    g = torch.Generator().manual_seed(seed_of(case.id + salt))
    x = torch.randn(case.M, case.H, generator=g)
    x = x + torch.sign(x) * 0.25  # keep every value away from 0
    hidden = x.to(DTYPES[case.dtype])
    scale = {
        None: None,
        "tensor0d": torch.rand((), generator=g) + 0.5,
        "tensor1d": torch.rand(1, generator=g) + 0.5,
        "token": torch.rand(case.M, 1, generator=g) + 0.5,
        "block": torch.rand(case.M, -(-case.H // 128), generator=g) + 0.5,
    }[case.scale]
    ids = make_topk(case, g)
    weights = torch.softmax(torch.randn(case.M, case.k, generator=g), dim=-1)
    emap = routing.expert_map_for(case.E, *case.ep)
    move = (lambda t: None if t is None else t.to(device))
    return move(hidden), move(scale), move(ids), move(weights), move(emap)
