"""How fast can this GPU move memory? Three ways of copying the same buffer, timed side by side:

    python benchmarks/ceiling_probe.py [--gib 1,4]

- graph memcpy: `dst.copy_(src)` captured in a CUDA graph (what the project used as its ceiling before 2026-12-02);
- eager copy_: the same copy run eagerly between CUDA events (pytest_moeperf.timing.copy_ceiling_gbps, the ceiling);
- Triton copy: a plain Triton kernel copying 16 KiB per program.
GB/s count bytes read + written; each figure is the best of ten after half a second of copies. GPU only.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pytest_moeperf.measure import timing  # noqa: E402


@triton.jit
def _copy_kernel(src, dst, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    tl.store(dst + offs, tl.load(src + offs, mask=offs < n), mask=offs < n)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gib", default="1,4")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("ceiling_probe.py needs a CUDA GPU", file=sys.stderr)
        return 2
    print(f"{torch.cuda.get_device_name()}, GPU {timing.CudaTimer.gpu_uuid()}, torch {torch.__version__}, "
          f"triton {triton.__version__}")
    for gib in (float(g) for g in args.gib.split(",")):
        n = int(gib * (1 << 30)) // 16 * 16
        src = torch.empty(n, dtype=torch.uint8, device="cuda").fill_(1)
        dst = torch.empty_like(src)
        words = n // 4
        src32, dst32 = src.view(torch.int32), dst.view(torch.int32)

        def triton_copy():
            _copy_kernel[(triton.cdiv(words, 4096),)](src32, dst32, words, BLOCK=4096, num_warps=8)

        graph = torch.cuda.CUDAGraph()
        dst.copy_(src)
        torch.cuda.synchronize()
        with torch.cuda.graph(graph):
            dst.copy_(src)
        rows = {"graph memcpy": graph.replay, "eager copy_ (the ceiling)": lambda: dst.copy_(src),
                "Triton copy": triton_copy}
        for name, run in rows.items():
            us = timing.best_copy_us(run)
            print(f"{gib:g} GiB  {name:28s} {2 * n / us / 1e3:8.0f} GB/s  ({us:.0f} us)")
        torch.testing.assert_close(dst, src)
        graph = None  # the next size allocates anew
    print(f"pytest_moeperf.timing.copy_ceiling_gbps: {timing.copy_ceiling_gbps('cuda'):.0f} GB/s "
          f"({timing.CEILING_METHOD})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
