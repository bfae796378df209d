"""The inputs of one test: a scenario's shape, dtype mode and batch size, drawn with the scenario's routing."""
from __future__ import annotations

import dataclasses
import zlib

import torch

from pytest_moeperf.inputs import experts, routing
from pytest_moeperf.inputs.dtypes import FP8_MAX, PAYLOAD
from pytest_moeperf.spec.scenario import Scenario


@dataclasses.dataclass
class Problem:
    scenario: Scenario
    dtype: str  # resolved dtype mode
    M: int
    hidden: torch.Tensor
    scale: torch.Tensor | None
    topk_ids: torch.Tensor
    topk_weights: torch.Tensor
    expert_map: torch.Tensor | None
    local_routes: int  # routes this EP rank keeps
    activations: torch.Tensor  # the 16-bit hidden states before any fp8 quantization (fused_experts' input)
    derived: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)  # see shared()

    def shared(self, key: str, make):
        """What make() derives from these inputs for timing (an unpermute's expert rows, its output buffer), made
        once per problem: every implementation prepared on this problem then reads and writes the very same tensors,
        so that an A/B comparison (--moeperf-against) times two codes, not two places in memory."""
        if key not in self.derived:
            self.derived[key] = make()
        return self.derived[key]

    @property
    def E(self) -> int:
        return self.scenario.shape.num_experts

    @property
    def k(self) -> int:
        return self.scenario.shape.topk

    @property
    def H(self) -> int:
        return self.scenario.shape.hidden_size

    @property
    def n_local(self) -> int:
        return self.scenario.num_local_experts if self.expert_map is not None else -1

    @property
    def align(self) -> int | None:
        return self.scenario.permute_align(self.dtype)

    @property
    def block_size(self) -> int:
        return self.scenario.block_size(self.dtype)

    @property
    def out_dtype(self) -> torch.dtype:
        """dtype of the expert output that unpermute reduces (fp8 experts write bf16)."""
        return torch.bfloat16 if self.hidden.dtype == torch.float8_e4m3fn else self.hidden.dtype


def _quantize_fp8(x: torch.Tensor, block_cols: int | None):
    """float8_e4m3fn data and fp32 scales: per token [M, 1], or per 1 x block_cols block [M, ceil(H/block)]."""
    M, H = x.shape
    if block_cols is None:
        scale = x.abs().amax(dim=1, keepdim=True).clamp(min=1e-6) / FP8_MAX
        return (x / scale).to(torch.float8_e4m3fn), scale
    blocks = -(-H // block_cols)
    padded = torch.nn.functional.pad(x, (0, blocks * block_cols - H)).view(M, blocks, block_cols)
    scale = padded.abs().amax(dim=2).clamp(min=1e-6) / FP8_MAX
    q = (padded / scale[:, :, None]).view(M, -1)[:, :H]
    return q.to(torch.float8_e4m3fn), scale


def build(scenario: Scenario, dtype: str, M: int, device, input_set: int = 0) -> Problem:
    """Seeded by the scenario's seed, the dtype, M and the input set (every impl sees the same inputs)."""
    dtype = scenario.resolve_dtype(dtype)
    seed = scenario.seed * 1_000_003 + zlib.crc32(f"{dtype}-{M}-{input_set}".encode())
    shape, r = scenario.shape, scenario.routing
    ids, weights = routing.make_routing(M, shape.topk, shape.num_experts, r.kind, seed=seed, alpha=r.alpha, p=r.p,
                                        experts_used=r.experts_used)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(M, shape.hidden_size, generator=g)
    scale = None
    if dtype == "fp8_w8a8":
        hidden, scale = _quantize_fp8(x, 128 if scenario.block_quant else None)
    else:
        hidden = x.to(PAYLOAD[dtype])
    emap = routing.expert_map_for(shape.num_experts, scenario.ep_size, scenario.ep_rank)
    local = int((routing.local_expert_of_routes(ids, shape.num_experts, emap) >= 0).sum())
    move = (lambda t: None if t is None else t.to(device))
    activations = x.to(torch.float16 if dtype == "fp16" else torch.bfloat16)
    return Problem(scenario, dtype, M, move(hidden), move(scale), move(ids), move(weights), move(emap), local,
                   move(activations))


def moved_bytes(op: str, p: Problem) -> tuple[int, int]:
    """(payload bytes, extra bytes) one call moves at least (contract section 3): M*H*b read + one row written per
    local route for permute (the reverse for unpermute); extra = scales and index bytes. fused_experts: the weights
    of the experts its local routes touch (read once), the activations in and out as extra."""
    if op == "fused_experts":
        H = experts.weights_for(p).H
        return experts.touched_weight_bytes(p), 2 * p.M * H * p.activations.element_size()
    if op == "align":
        R = p.M * p.k
        return R * 4 + (R + p.E * (p.block_size - 1)) * 4, 0
    b = p.hidden.element_size() if op == "permute" else torch.empty((), dtype=p.out_dtype).element_size()
    payload = (p.M + p.local_routes) * p.H * b
    scale_cols = 0 if p.scale is None else p.scale.shape[1]
    extra = p.M * p.k * 4 * 2 + (p.M + p.local_routes) * scale_cols * 4 * (op == "permute")
    return payload, extra
