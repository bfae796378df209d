"""Does the address of count_kernel's ticket counter set its time, or the CUDA graph it is captured in? (GPU only)

    python benchmarks/graph_offsets.py [--graphs 24] [--counter same|moving] [--shape deepseek-v3|mixtral] [--json F]
    python benchmarks/graph_offsets.py --against DIR [--share-pool] [--graphs 24] [--shape ...] [--json F]

Captures --graphs CUDA graphs of 20 moe_align_block_size calls each (no scratch: the index takes count_kernel and the
per-device ticket counter of kernels/_pipeline.py) and times each graph 3 x 20 replays, graphs in shuffled order;
prints the per-call median of each graph in capture order. --counter moving gives each graph its own counter, a MiB
apart in one zeroed buffer; same keeps one. Run it twice (same, moving) in fresh processes: if graph i is as fast in
both, the counter's address does not matter and the graph does (benchmarks/results/2026-12-06-h100-ab-3pct.md).
The A/B gate's offset on the count path was the counter all the same: with both loaded copies on one counter it
went (benchmarks/results/2026-12-06-h100-ticket-bias.md).

--against DIR: the kernels of the checkout in DIR are loaded beside the installed ones (revision.import_from), each
copy with its own counter, as --moeperf-against loaded a reference before it shared one (revision.reference_kernels);
graphs alternate between the copies, pairs captured in turns (installed first in even pairs, DIR's first in odd ones;
--share-pool: a pair's second graph in the first one's memory pool, as the A/B gate captures them). It prints the
per-copy medians and the pairs' median difference: whether the installed copy is slower than an identical second
copy with no A/B harness around them.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
from pathlib import Path

import torch

SHAPES = {"mixtral": (3072, 8, 2), "deepseek-v3": (1024, 256, 8)}  # M, experts, top-k: both above 1024 routes
CALLS, REPLAYS, ROUNDS, BLOCK = 20, 20, 3, 64


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--graphs", type=int, default=24)
    ap.add_argument("--counter", choices=("same", "moving"), default="same")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="deepseek-v3")
    ap.add_argument("--json", help="write every sample (us per call) here")
    ap.add_argument("--against", type=Path, help="a checkout whose kernels are loaded as a second copy")
    ap.add_argument("--share-pool", action="store_true", help="with --against: a pair's graphs share a memory pool")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        ap.error("needs a CUDA GPU")
    import moeperf_kernels as kernels

    dev = torch.device("cuda")
    M, E, k = SHAPES[args.shape]
    copies = [kernels]
    if args.against:
        from pytest_moeperf.oracle import revision
        copies.append(revision.import_from(revision.Revision(str(args.against), "", args.against.resolve()),
                                           "kernels"))
    counters = torch.zeros(args.graphs << 18, dtype=torch.int32, device=dev)  # a MiB per graph
    g = torch.Generator().manual_seed(0)
    topk = torch.stack([torch.randperm(E, generator=g)[:k] for _ in range(M)]).to(torch.int32).to(dev)
    graphs, copy_of = [], []
    for i in range(args.graphs):
        if args.against:  # pair i // 2: installed copy first in even pairs
            copy = (i + i // 2) % 2
            pool = graphs[-1].pool() if args.share_pool and i % 2 else None
        else:
            copy, pool = 0, None
            at = i << 18 if args.counter == "moving" else 0
            kernels._pipeline._tickets[dev] = counters[at:at + 1]
        align = copies[copy].moe_align_block_size
        align(topk, BLOCK, E)  # eager first: compiles, and checks the counter's reset
        torch.cuda.synchronize()
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool, stream=stream):
                for _ in range(CALLS):
                    align(topk, BLOCK, E)
        graphs.append(graph)
        copy_of.append(copy)
    for graph in graphs:
        graph.replay()
    order = list(range(args.graphs)) * ROUNDS
    random.Random(1).shuffle(order)
    samples: list[list[float]] = [[] for _ in graphs]
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for i in order:
        for _ in range(3):
            graphs[i].replay()
        torch.cuda.synchronize()
        start.record()
        for _ in range(REPLAYS):
            graphs[i].replay()
        end.record()
        end.synchronize()
        samples[i].append(start.elapsed_time(end) * 1000 / (REPLAYS * CALLS))
    if int(counters.abs().sum()):
        raise SystemExit("a ticket counter was left non-zero: the index kernels did not reset it")
    medians = [statistics.median(s) for s in samples]
    spread = statistics.median(max(s) - min(s) for s in samples)
    print(f"{args.shape} M = {M}, counter {args.counter}: per-call us over {args.graphs} graphs: "
          f"min {min(medians):.3f} median {statistics.median(medians):.3f} max {max(medians):.3f}; "
          f"within one graph {spread:.3f}")
    print(" ".join(f"{m:.3f}" for m in medians))
    if args.against:
        by_copy = [[m for m, c in zip(medians, copy_of) if c == j] for j in (0, 1)]
        pairs = [medians[i] - medians[i + 1] if copy_of[i] == 0 else medians[i + 1] - medians[i]
                 for i in range(0, args.graphs - 1, 2)]
        print(f"installed copy: median {statistics.median(by_copy[0]):.3f} us; {args.against}'s: "
              f"{statistics.median(by_copy[1]):.3f} us; installed - other per pair: median "
              f"{statistics.median(pairs):+.3f} us, {sum(d > 0 for d in pairs)} of {len(pairs)} positive"
              f"{' (pools shared)' if args.share_pool else ''}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"shape": args.shape, "counter": args.counter, "against": str(args.against or ""),
                       "share_pool": args.share_pool, "copy_of_graph": copy_of, "samples_us": samples}, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
