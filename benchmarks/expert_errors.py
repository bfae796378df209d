"""fused_experts against the PyTorch oracle at real model shapes, one line of JSON per (mode, batch size): relative
error, CUDA-graph median, TFLOP/s and the fraction of the bf16 / fp8 matmul ceiling, and the time to read the
touched experts' weights at the copy ceiling. It covers the modes the scenarios do not run (fp16; fp8 with
per-tensor or per-token activations), and is where reference_experts.TOLERANCE comes from.

    python benchmarks/expert_errors.py [--batch-sizes 1,16,256,4096] [--cases mixtral-bf16,...]

GPU only. Weights are drawn per expert (N(0, 1/k)) and quantized as experts.quantize_expert does; routing is the
top-k of softmaxed normal logits.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import moeperf_kernels as kernels  # noqa: E402
from pytest_moeperf.inputs import experts
from pytest_moeperf.measure import timing
from pytest_moeperf.oracle import reference_experts  # noqa: E402
from pytest_moeperf.spec.scenario import Timing  # noqa: E402

# name: (E, k, H, N, weight scheme (None: 16-bit), activation dtype, fused_experts keywords)
CASES = {
    "mixtral-bf16": (8, 2, 4096, 14336, None, torch.bfloat16, {}),
    "mixtral-fp16": (8, 2, 4096, 14336, None, torch.float16, {}),
    "mixtral-int8": (8, 2, 4096, 14336, "int8", torch.bfloat16, dict(use_int8_w8a16=True)),
    "mixtral-fp8-tensor": (8, 2, 4096, 14336, "fp8", torch.bfloat16, dict(use_fp8_w8a8=True)),
    "mixtral-fp8-token": (8, 2, 4096, 14336, "fp8-channel", torch.bfloat16,
                          dict(use_fp8_w8a8=True, per_channel_quant=True)),
    "deepseek-v3-fp8-block": (256, 8, 7168, 2048, "fp8-block", torch.bfloat16,
                              dict(use_fp8_w8a8=True, block_shape=[128, 128])),
}
QUICK = Timing(invocations=3, samples=15, warmup=2)


def draw_weights(E, H, N, scheme, dtype, device):
    """(w1, w1_scale, w2, w2_scale): scales None for 16-bit weights."""
    out = []
    for n, k in ((2 * N, H), (H, N)):
        if scheme is None:
            out += [(torch.randn(E, n, k, device=device) / math.sqrt(k)).to(dtype), None]
            continue
        q, s = zip(*(experts.quantize_expert(torch.randn(n, k, device=device) / math.sqrt(k), scheme)
                     for _ in range(E)))
        out += [torch.stack(q), torch.stack(s).float()]
    return out


def run_case(name: str, batch_sizes: list[int], matmul: dict, copy: float, device) -> None:
    E, k, H, N, scheme, dtype, kw = CASES[name]
    w1, s1, w2, s2 = draw_weights(E, H, N, scheme, dtype, device)
    if s1 is not None:
        kw = dict(kw, w1_scale=s1, w2_scale=s2)
    per_expert = w1[0].numel() * w1.element_size() + w2[0].numel() * w2.element_size()
    for M in batch_sizes:
        x = torch.randn(M, H, device=device).to(dtype)
        weights, ids = torch.topk(torch.softmax(torch.randn(M, E, device=device), dim=1), k, dim=1)
        ids = ids.to(torch.int32)
        got = kernels.fused_experts(x, w1, w2, weights, ids, **kw)
        err = reference_experts.relative_error(got, reference_experts.fused_experts(x, w1, w2, weights, ids, **kw))
        us = timing.measure([lambda: kernels.fused_experts(x, w1, w2, weights, ids, **kw)], QUICK).median
        tflops = 2 * M * k * 3 * N * H / us / 1e6
        read_us = int(torch.unique(ids).numel()) * per_expert / copy / 1e3
        ceiling = matmul["fp8" if scheme and scheme.startswith("fp8") else "bf16"]
        print(json.dumps({"case": name, "M": M, "relative_error": err, "median_us": us, "tflops": tflops,
                          "matmul_pct": 100 * tflops / ceiling, "weight_read_us": read_us,
                          "time_over_weight_read": us / read_us}), flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch-sizes", default="1,16,64,256,1024,4096")
    ap.add_argument("--cases", default=",".join(CASES))
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("expert_errors.py needs a CUDA GPU", file=sys.stderr)
        return 2
    device = torch.device("cuda", torch.cuda.current_device())
    torch.manual_seed(0)
    matmul = {kind: timing.matmul_ceiling_tflops(device, kind) for kind in ("bf16", "fp8")}
    copy = timing.copy_ceiling_gbps(device)
    print(json.dumps({"device": torch.cuda.get_device_name(device), "matmul_tflops": matmul, "copy_gbps": copy}))
    for name in args.cases.split(","):
        run_case(name, [int(m) for m in args.batch_sizes.split(",")], matmul, copy, device)
        torch.cuda.empty_cache()  # this case's weights are gone with run_case's frame
    return 0


if __name__ == "__main__":
    sys.exit(main())
