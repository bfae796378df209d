"""Kernel speed report: every implementation of every op of some scenarios, timed by the plugin's own CUDA-graph
timer with warm and cold L2, with kernel launches per call counted by the PyTorch profiler.

    python benchmarks/kernel_speed.py [scenarios/mixtral.yaml scenarios/deepseek-v3.yaml] [--batch-sizes 1,64,4096]
        [--l2 warm,cold] [--impls customized,customized_scratch,standard,torch] [--ops ...] [--dtypes ...]
        [--markdown F] [--json F] [--compare-default] [--batch-sizes scenario]

GPU only. Per row: median us, GB/s (contract section 3 payload bytes over the median), % of the device-copy ceiling
measured in the same process, launches per call (kernels, memsets and copies the profiler saw during one eager call) and
their summed duration ("kernel us": the median minus it is launch overhead and gaps), and each one's ("per kernel
us", by kernel name).
Correctness is checked against the torch reference before a row is timed; a failing row is reported, not timed.
Rows use the tuned launch configs of kernels/configs/ where there are some; --compare-default also says whether a
tuned entry serves the row ("config": tuned / default) and times it three more times in pairs, tuned then the
built-in defaults, back to back: the medians of both sides and the median of the three pair ratios (tuned / default).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import statistics
import sys
from pathlib import Path

import torch
import triton
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from moeperf_kernels import tuning  # noqa: E402
from pytest_moeperf.inputs import problem
from pytest_moeperf.measure import timing
from pytest_moeperf.oracle import impls, registry
from pytest_moeperf.spec import scenario  # noqa: E402

DEFAULT_SCENARIOS = ("scenarios/mixtral.yaml", "scenarios/deepseek-v3.yaml")
DEFAULT_BATCHES = (1, 8, 64, 256, 1024, 4096, 16384)
DEFAULT_IMPLS = ("customized", "customized_scratch", "standard", "torch")
HEADERS = ["scenario", "dtype", "op", "impl", "M", "L2", "median us", "IQR us", "GB/s", "% ceiling", "launches",
           "kernel us", "per kernel us", "mode"]
COMPARE_HEADERS = ["config", "tuned us (paired)", "default us (paired)", "tuned / default"]


def profile_call(call) -> list[tuple[str, float]]:
    """The GPU activities of one eager call (kernels, memsets and copies: name, duration in us), in order, as the
    PyTorch profiler records them. The durations leave out launch gaps: compare their sum with the graph median to
    see them."""
    call()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        call()
        torch.cuda.synchronize()
    events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return [(e.name, getattr(e, "device_time", None) or e.cuda_time) for e in events]


def bench_row(sc, impl, op, dtype, M, l2, ceiling, device, compare_default=False) -> list:
    """One row without its profiler columns ("launches", "kernel us", "per kernel us"): profile_rows() fills them
    once every row is timed, since the profiler, once started, slows every later launch in the process (graph
    replays included): on an H200 a 1.8 us permute timed 3.5 us after it."""
    first = problem.build(sc, dtype, M, device)
    head = [sc.name, dtype, op, impl.name, M, l2]
    try:
        impl.check(op, first)
    except AssertionError as e:
        return head + ["", "", "", "", "", "", "", f"incorrect: {str(e).splitlines()[0][:60]}"]
    payload, extra = problem.moved_bytes(op, first)
    sets = 1 if l2 == "warm" else timing.input_sets_for_cold_l2(payload + extra, device)
    calls = [impl.prepare(op, first)] + [impl.prepare(op, problem.build(sc, dtype, M, device, i))
                                         for i in range(1, sets)]
    for c in calls:
        c()
    m = timing.measure(calls, dataclasses.replace(sc.timing, l2=l2))
    gbps = payload / m.median / 1e3
    pct = "" if op == "align" else f"{100 * gbps / ceiling:.1f}"
    row = head + [f"{m.median:.2f}", f"{m.iqr:.2f}", f"{gbps:.0f}", pct, None, None, None,
                  m.mode + (f" x{sets} sets" if sets > 1 else "")]
    if compare_default:
        row += compare_with_default(calls, dataclasses.replace(sc.timing, l2=l2))
    return row


def profile_rows(rows: list, jobs: list, device) -> None:
    """Fill each timed row's profiler columns from one profiled eager call on its first input set: launches, their
    summed time, and each one's ("count_kernel 3.1 + permute_rows_kernel 30.2")."""
    at, median = HEADERS.index("launches"), HEADERS.index("median us")
    for row, (sc, impl, op, dtype, M) in zip(rows, jobs):
        if row[median] == "":  # incorrect: not timed
            continue
        activities = profile_call(impl.prepare(op, problem.build(sc, dtype, M, device)))
        row[at] = len(activities)
        row[at + 1] = f"{sum(us for _, us in activities):.2f}"
        row[at + 2] = " + ".join(f"{name.split('(')[0][:40]} {us:.2f}" for name, us in activities)


def compare_with_default(calls, timing_cfg, rounds: int = 5) -> list:
    """[whether a tuned entry serves this call, tuned us, default us, tuned / default]. Each of `rounds` rounds
    captures both sides anew (tuned configs, then the built-in defaults, in one memory pool: timing.capture_in_turn)
    and replays them in turns (timing.measure_interleaved); the medians of each side and the median of the rounds'
    ratios."""
    with tuning.recording() as read:
        calls[0]()
    entry = any(tuning.read_table(tuning.CONFIG_DIR / r.name, r.op).get(r.M) for r in read if r.op in tuning.OPS)
    tuned_us, default_us, ratios = [], [], []
    for _ in range(rounds):
        tuned, default = timing.capture_in_turn([calls, calls], timing_cfg, [
            contextlib.nullcontext, lambda: tuning.configs_from(Path("/nonexistent"))])
        a, b = timing.measure_interleaved([tuned, default], timing_cfg)
        tuned_us.append(a.median)
        default_us.append(b.median)
        ratios.append(a.median / b.median)
        del tuned, default
    return ["tuned" if entry else "default", f"{statistics.median(tuned_us):.2f}",
            f"{statistics.median(default_us):.2f}", f"{statistics.median(ratios):.3f}"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("scenarios", nargs="*", default=list(DEFAULT_SCENARIOS))
    ap.add_argument("--batch-sizes", default=",".join(map(str, DEFAULT_BATCHES)),
                    help="comma-separated, or 'scenario' for each scenario's own batch sizes")
    ap.add_argument("--l2", default="warm,cold")
    ap.add_argument("--impls", default=",".join(DEFAULT_IMPLS))
    ap.add_argument("--ops", default="permute,unpermute,align")
    ap.add_argument("--dtypes", help="only these dtype modes of the scenarios (default: all of each)")
    ap.add_argument("--markdown", type=Path, help="also write the table as markdown here")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    ap.add_argument("--compare-default", action="store_true",
                    help="also time each row with the built-in launch configs instead of the tuned ones")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("kernel_speed.py needs a CUDA GPU", file=sys.stderr)
        return 2
    device = torch.device("cuda", torch.cuda.current_device())
    ceiling = timing.copy_ceiling_gbps(device)
    batches = None if args.batch_sizes == "scenario" else [int(b) for b in args.batch_sizes.split(",")]
    wanted_ops = args.ops.split(",")
    built = {name: impls.build(scenario.ImplSpec(name), registry.builtin()) for name in args.impls.split(",")}
    rows, jobs = [], []
    for path in args.scenarios:
        sc = scenario.load(path)
        for dtype in [d for d in sc.dtypes if not args.dtypes or d in args.dtypes.split(",")]:
            for op in [o for o in sc.ops if o in wanted_ops]:
                for impl in [i for i in built.values() if op in i.ops]:
                    for M in batches or sc.batch_sizes:
                        for l2 in args.l2.split(","):
                            resolved = sc.resolve_dtype(dtype)
                            rows.append(bench_row(sc, impl, op, resolved, M, l2, ceiling, device,
                                                  args.compare_default))
                            jobs.append((sc, impl, op, resolved, M))
                            print(" | ".join(map(str, rows[-1])), flush=True)
    profile_rows(rows, jobs, device)
    title = (f"{datetime.date.today()}, {torch.cuda.get_device_name(device)}, torch {torch.__version__}, "
             f"triton {triton.__version__}, GPU {timing.CudaTimer.gpu_uuid()}, copy ceiling {ceiling:.0f} GB/s "
             f"({timing.CEILING_METHOD})")
    headers = HEADERS + (COMPARE_HEADERS if args.compare_default else [])
    print(title)
    print(tabulate(rows, headers=headers))
    if args.markdown:
        args.markdown.write_text(f"{title}\n\n{tabulate(rows, headers=headers, tablefmt='github')}\n")
    if args.json:
        args.json.write_text(json.dumps({"title": title, "headers": headers, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
