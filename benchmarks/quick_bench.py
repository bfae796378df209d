"""Quick CUDA-graph timing of the kernels against a device copy, with kernel launches counted by the profiler.

python benchmarks/quick_bench.py  (GPU only). Prints one row per (shape, op): median us, GB/s, % of copy ceiling,
kernel launches per call.
"""
import statistics
import sys

import torch
from tabulate import tabulate

sys.path.insert(0, ".")
import kernels  # noqa: E402
from pytest_moeperf import routing  # noqa: E402


def graph_time_us(fn, invocations=10, samples=50, warmup=5):
    fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(invocations):
            fn()
    for _ in range(warmup):
        g.replay()
    times = []
    for _ in range(samples):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1000 / invocations)
    return statistics.median(times)


def launches(fn):
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
               and "memcpy" not in e.name.lower() and "memset" not in e.name.lower())


def main():
    dev = "cuda"
    big = torch.empty(1 << 30, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(big)
    copy_us = graph_time_us(lambda: dst.copy_(big), invocations=3, samples=20)
    ceiling = 2 * big.numel() / copy_us / 1e3  # GB/s, read + write
    print(f"device copy ceiling: {ceiling:.0f} GB/s ({torch.cuda.get_device_name()})")
    rows = []
    for name, E, k, H in (("mixtral", 8, 2, 4096), ("deepseek-v3", 256, 8, 7168)):
        for M in (1, 16, 64, 256, 4096, 16384):
            ids, w = routing.make_routing(M, k, E, seed=M)
            ids, w = ids.to(dev), w.to(dev)
            x = torch.randn(M, H, device=dev, dtype=torch.bfloat16)
            scratch = kernels.MoEPermuteScratch(M, k, E, E, dev, hidden_size=H, hidden_dtype=torch.bfloat16)
            perm, _, offs, inv, _ = kernels.moe_permute(x, None, ids, E)
            out = torch.empty_like(x)
            nbytes = M * H * 2 * (1 + k)
            ops = {
                "permute": lambda: kernels.moe_permute(x, None, ids, E),
                "permute+scratch": lambda: kernels.moe_permute(x, None, ids, E, scratch=scratch),
                "unpermute": lambda: kernels.moe_unpermute(out, perm, w, inv, offs),
                "align(bs=16)": lambda: kernels.moe_align_block_size(ids, 16, E),
                "torch sort+index_select": lambda: x.index_select(0, torch.sort(ids.view(-1), stable=True)
                                                                  .indices // k),
            }
            for op, fn in ops.items():
                us = graph_time_us(fn)
                gbs = nbytes / us / 1e3 if "align" not in op else float("nan")
                rows.append([name, M, op, f"{us:.2f}", f"{gbs:.0f}", f"{100 * gbs / ceiling:.0f}", launches(fn)])
    print(tabulate(rows, headers=["shape", "M", "op", "median us", "GB/s", "% ceiling", "launches"]))


if __name__ == "__main__":
    main()
