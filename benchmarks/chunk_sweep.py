"""count_kernel's chunk count swept: the permute and align of some scenarios (more than 1024 routes) timed with
_launch.most_chunks fixed to each count, outputs compared bit for bit with the default count's.

    python benchmarks/chunk_sweep.py [--scenarios mixtral:bf16,deepseek-v3:fp8_w8a8] [--batch-sizes 1024,4096,16384]
        [--chunks 64,128,256]

Timed by the plugin's timer (CUDA graph of 10 calls, median of 60 replays, warm L2). Prints one line per scenario, op
and batch size: "count:C=<chunks the call ran with>:<median us>", the default first. GPU only.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from moeperf_kernels import _launch  # noqa: E402
from pytest_moeperf.inputs import problem  # noqa: E402
from pytest_moeperf.measure import timing  # noqa: E402
from pytest_moeperf.oracle import impls, registry  # noqa: E402
from pytest_moeperf.spec import scenario  # noqa: E402
from pytest_moeperf.spec.scenario import ImplSpec, Timing  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TIMING = Timing(invocations=10, samples=60, warmup=5)


def outputs(op: str, out) -> list[torch.Tensor]:
    """What must not change with the chunk count: the index tensors, and for the permute the rows each route got.
    Dropped routes (rows >= offsets[-1]) get no copy: their rows hold whatever the buffer held, so they are left out."""
    if op == "align":
        return list(out)
    permuted, _, offsets, inv, m_indices = out
    rows = permuted.view(torch.uint8) if permuted.dtype.is_floating_point else permuted
    owned = inv[inv < offsets[-1]].long()
    return [offsets, inv, m_indices, rows.index_select(0, owned)]


IMPL_OF = {"permute": "customized", "align": "standard"}  # the implementations whose timing tests run these ops


def sweep(impl, p, op: str, counts: list[int]) -> str:
    """The call the plugin times for `impl`'s op, at each chunk count."""
    call = impl.prepare(op, p)
    default, want, cells = _launch.most_chunks, None, []
    R, W = p.M * p.k, _launch.hist_width(p.E)
    try:
        for count in [None] + counts:
            _launch.most_chunks = default if count is None else (lambda width, count=count: count)
            got = outputs(op, call())
            want = want or got
            same = all(torch.equal(a, b) for a, b in zip(want, got))
            us = timing.measure([call], TIMING).median
            chunks = -(-R // _launch.count_chunk(R, W))
            cells.append(f"{'default' if count is None else count}:C={chunks}:{us:.2f}{'' if same else ' MISMATCH'}")
    finally:
        _launch.most_chunks = default
    return " | ".join(cells)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenarios", default="mixtral:bf16,deepseek-v3:fp8_w8a8", help="name:dtype, comma-separated")
    ap.add_argument("--batch-sizes", default="1024,4096,16384")
    ap.add_argument("--chunks", default="64,128,256")
    args = ap.parse_args(argv)
    try:
        counts = [int(c) for c in args.chunks.split(",")]
        batches = [int(m) for m in args.batch_sizes.split(",")]
    except ValueError:
        ap.error("--chunks and --batch-sizes take comma-separated integers")
    items = [item.split(":") for item in args.scenarios.split(",")]
    if any(len(item) != 2 for item in items):
        ap.error(f"--scenarios takes name:dtype pairs, got {args.scenarios!r}")
    if not torch.cuda.is_available():
        print("chunk_sweep.py needs a CUDA GPU", file=sys.stderr)
        return 2
    built = {op: impls.build(ImplSpec(name), registry.builtin()) for op, name in IMPL_OF.items()}
    for name, dtype in items:
        sc = scenario.load(ROOT / "scenarios" / f"{name}.yaml")
        for M in batches:
            p = problem.build(sc, dtype, M, "cuda")
            for op, impl in built.items():
                print(name, dtype, op, M, sweep(impl, p, op, counts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
