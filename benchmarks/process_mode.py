"""Why did a serial pytest process time the same kernels ~8% slower than an `-n 4` run on one H200?
(benchmarks/results/h200-2026-12-02-fresh-machine.md.) One process times a few Mixtral calls, with the gate's timer,
under each condition in turn, and prints the medians side by side:

    python benchmarks/process_mode.py [--json F]

- fresh: nothing else ran in this process yet;
- idle-2s: each call timed after the GPU idled 2 s;
- cached-20GiB: after 20 GiB were allocated and freed (the caching allocator keeps them, as after the large
  correctness shapes); empty-cache: after torch.cuda.empty_cache();
- 3-idle-contexts: while three other processes hold idle CUDA contexts on the GPU (as xdist workers do);
- 3-busy-siblings: while three other processes each run a small kernel every millisecond (as xdist workers building
  inputs do);
- after-correctness: after the Mixtral correctness tests ran in this process (pytest.main, as `make run` does);
- again-last: the fresh calls once more, last, to show drift over the run.
GPU only. Answer (2026-12-02, GPU-1850de78; benchmarks/results/h200-2026-12-02-fresh-machine.md): only the busy
siblings made the launch-bound calls faster (standard permute -9 to -17%, unpermute -8%), i.e. the `-n 4` workers
sharing the GPU; the SM clock stayed at its maximum throughout (nvidia-smi).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from tabulate import tabulate

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from pytest_moeperf.inputs import problem  # noqa: E402
from pytest_moeperf.measure import timing  # noqa: E402
from pytest_moeperf.oracle import impls, registry  # noqa: E402
from pytest_moeperf.spec import scenario  # noqa: E402
from pytest_moeperf.spec.scenario import ImplSpec, Timing  # noqa: E402

CALLS = [("customized", "permute", 1), ("customized", "permute", 64), ("customized", "permute", 4096),
         ("standard", "permute", 1), ("standard", "permute", 256), ("customized", "unpermute", 64)]
TIMING = Timing(invocations=10, samples=100, warmup=5)
IDLE = "import sys, torch; torch.zeros(1, device='cuda'); torch.cuda.synchronize(); print('up', flush=True); " \
       "sys.stdin.read()"
BUSY = "import select, sys, time, torch; x = torch.zeros(1 << 20, device='cuda'); print('up', flush=True)\n" \
       "while not select.select([sys.stdin], [], [], 0)[0]:\n    x.add_(1); torch.cuda.synchronize(); time.sleep(0.001)"


def medians(idle_s: float = 0.0) -> dict[str, float]:
    """Median us per call."""
    sc = scenario.load(ROOT / "scenarios" / "mixtral.yaml")
    reg = registry.builtin()
    built = {name: impls.build(ImplSpec(name), reg) for name in {c[0] for c in CALLS}}
    out = {}
    for impl, op, M in CALLS:
        p = problem.build(sc, "bf16", M, "cuda")
        call = built[impl].prepare(op, p)
        call()
        torch.cuda.synchronize()
        time.sleep(idle_s)
        out[f"{impl} {op} M={M}"] = timing.measure([call], TIMING).median
    return out


def with_siblings(program: str, n: int = 3) -> dict[str, float]:
    """medians() while n other processes run `program` (which prints 'up' once it holds a CUDA context)."""
    procs = [subprocess.Popen([sys.executable, "-c", program], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True) for _ in range(n)]
    try:
        assert all(p.stdout.readline().strip() == "up" for p in procs)
        return medians()
    finally:
        for p in procs:
            p.communicate("x")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("process_mode.py times on a GPU; none is visible", file=sys.stderr)
        return 2
    results = {"fresh": medians()}
    results["idle-2s"] = medians(idle_s=2.0)
    blocks = [torch.empty(1 << 30, dtype=torch.uint8, device="cuda") for _ in range(20)]
    del blocks
    results["cached-20GiB"] = medians()
    torch.cuda.empty_cache()
    results["empty-cache"] = medians()
    results["3-idle-contexts"] = with_siblings(IDLE)
    results["3-busy-siblings"] = with_siblings(BUSY)
    import pytest
    pytest.main(["--moeperf", str(ROOT / "scenarios" / "mixtral.yaml"), "-k", "correctness", "-q", "-p",
                 "no:cacheprovider", "--rootdir", str(ROOT)])
    results["after-correctness"] = medians()
    results["again-last"] = medians()
    names = list(results["fresh"])
    rows = [[cond] + [f"{results[cond][n]:.2f}" for n in names] for cond in results]
    print(tabulate(rows, ["condition (median us)"] + names, tablefmt="github", disable_numparse=True))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
