"""fused_experts' inputs beyond the routing: the local experts' weights (and scales) of a scenario and dtype mode,
drawn once per shape and shared by every batch size and implementation, and the arguments of one call.

The per-expert intermediate size is the model's divided by tp_size (expert parallelism instead keeps it whole and
holds E / ep_size experts), as vLLM's benchmark shards it. Under the Triton interpreter on the CPU the hidden and
intermediate sizes are capped at CPU_MOST_DIM and the routes at CPU_MOST_ROUTES: the GEMMs of a real model would
take hours there.
"""
from __future__ import annotations

import dataclasses
import math

import torch

from pytest_moeperf.inputs import routing
from pytest_moeperf.inputs.dtypes import FP8_MAX

CPU_MOST_DIM = 128
CPU_MOST_ROUTES = 64  # batch x topk fused_experts is checked at under the interpreter (E = 256, M = 16: ~35 s)
WEIGHT_BLOCK = (128, 128)  # block_shape of fp8 block quantization (DeepSeek-V3's checkpoints)


@dataclasses.dataclass
class ExpertWeights:
    H: int
    N: int
    w1: torch.Tensor  # [E_local, 2N, H]
    w2: torch.Tensor  # [E_local, H, N]
    kwargs: dict  # scales and quantization flags of fused_experts


def dims(scenario, device) -> tuple[int, int]:
    """(H, N) the op runs with: N = intermediate_size / tp_size, both capped on the CPU."""
    H, N = scenario.shape.hidden_size, scenario.shape.intermediate_size // scenario.tp_size
    if torch.device(device).type == "cpu":
        H, N = min(H, CPU_MOST_DIM), min(N, CPU_MOST_DIM)
    return H, N


def quantize_expert(w: torch.Tensor, scheme: str, block=WEIGHT_BLOCK):
    """(one expert's weights [n, k] as a checkpoint stores them, their scales) for a scheme: "int8" (per output
    channel, [n]), "fp8" (one scale, 0-D), "fp8-channel" ([n, 1]) or "fp8-block" (one per block, [n/bn, k/bk])."""
    if scheme == "int8":
        s = w.abs().amax(dim=1).clamp(min=1e-12) / 127
        return torch.round(w / s[:, None]).clamp(-127, 127).to(torch.int8), s
    if scheme == "fp8-block":
        n, k = w.shape
        bn, bk = block
        pad = torch.nn.functional.pad(w, (0, -k % bk, 0, -n % bn))
        blocks = pad.view(pad.shape[0] // bn, bn, pad.shape[1] // bk, bk)
        s = blocks.abs().amax(dim=(1, 3)).clamp(min=1e-12) / FP8_MAX
        q = (blocks / s[:, None, :, None]).view_as(pad)[:n, :k]
        return q.to(torch.float8_e4m3fn), s
    if scheme == "fp8-channel":
        s = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / FP8_MAX
        return (w / s).to(torch.float8_e4m3fn), s
    s = w.abs().amax().clamp(min=1e-12) / FP8_MAX
    return (w / s).to(torch.float8_e4m3fn), s.reshape(())


def _draw(scenario, dtype: str, device) -> ExpertWeights:
    H, N = dims(scenario, device)
    E = scenario.num_local_experts
    g = torch.Generator(device=device).manual_seed(scenario.seed * 7919 + len(dtype))
    block = dtype == "fp8_w8a8" and scenario.block_quant is not None
    scheme = "int8" if dtype == "int8_w8a16" else "fp8-block" if block else "fp8"
    stored = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp8_w8a8": torch.float8_e4m3fn,
              "int8_w8a16": torch.int8}[dtype]
    out, scales = {}, {}
    for name, (n, k) in (("w1", (2 * N, H)), ("w2", (H, N))):
        w = torch.empty((E, n, k), dtype=stored, device=device)
        scale = []
        for e in range(E):  # one expert at a time: a whole fp32 draw of DeepSeek-V3's w1 would take 30 GB
            x = torch.randn((n, k), generator=g, device=device) / math.sqrt(k)
            if dtype in ("bf16", "fp16"):
                w[e] = x.to(stored)
                continue
            w[e], s = quantize_expert(x, scheme)
            scale.append(s)
        out[name] = w
        if scale:
            scales[f"{name}_scale"] = torch.stack(scale).float()
    kwargs = dict(scales)
    if dtype == "fp8_w8a8":
        kwargs.update(use_fp8_w8a8=True, block_shape=list(WEIGHT_BLOCK) if block else None)
    elif dtype == "int8_w8a16":
        kwargs.update(use_int8_w8a16=True)
    return ExpertWeights(H, N, out["w1"], out["w2"], kwargs)


_last: list = []  # (key, ExpertWeights) of the last shape: a run holds one model's weights at a time


def weights_for(p) -> ExpertWeights:
    """The weights of problem p's scenario and dtype mode on its device (drawn on first use, then reused)."""
    device = p.activations.device
    key = (str(p.scenario.path), p.scenario.name, p.dtype, str(device))
    if not _last or _last[0][0] != key:
        _last.clear()  # free the previous model's weights first
        _last.append((key, _draw(p.scenario, p.dtype, device)))
    return _last[0][1]


def call_args(p) -> tuple[tuple, dict]:
    """(args, kwargs) of fused_experts for problem p."""
    w = weights_for(p)
    kwargs = dict(w.kwargs)
    if p.expert_map is not None:
        kwargs.update(expert_map=p.expert_map, global_num_experts=p.E)
    x = p.activations[:, :w.H].contiguous()
    return (x, w.w1, w.w2, p.topk_weights, p.topk_ids), kwargs


def flops(p) -> int:
    """Multiply-adds x 2 of one call: per local route, x @ w1^T (2N x H) and act @ w2^T (H x N)."""
    w = weights_for(p)
    return 2 * p.local_routes * 3 * w.N * w.H


def touched_weight_bytes(p) -> int:
    """Bytes of the experts that at least one local route uses (each read once at best)."""
    w = weights_for(p)
    local = routing.local_expert_of_routes(p.topk_ids, p.E, p.expert_map)
    touched = int(torch.unique(local[local >= 0]).numel())
    return touched * sum(t[0].numel() * t.element_size() for t in (w.w1, w.w2))
