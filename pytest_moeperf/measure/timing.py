"""CUDA-graph timing (docs/contract.md section 3) and the device-copy ceiling it is compared with."""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import os
import statistics
import time
import typing
from collections.abc import Callable

import torch

from pytest_moeperf.measure import env, health, inject
from pytest_moeperf.measure.locks import machine_lock
from pytest_moeperf.spec.scenario import Timing


def instance_medians(values: list[float], instances: int) -> list[float]:
    """The median of each of `instances` equal consecutive groups of values (one per graph instance)."""
    size = len(values) // instances
    return [statistics.median(values[i * size:(i + 1) * size]) for i in range(instances)]


def iqr(samples: list[float]) -> float:
    q = statistics.quantiles(samples, n=4, method="inclusive")
    return q[2] - q[0]


def relative_iqr(samples: list[float]) -> float:
    return iqr(samples) / statistics.median(samples)


@dataclasses.dataclass
class Measurement:
    samples_us: list[float]
    mode: str  # "graph", or "eager" when the call cannot be captured (it syncs or allocates outside the pool)
    invocations: int
    input_sets: int
    note: str = ""
    instances: int = 1  # graph instances the samples come from, in that many equal consecutive groups

    @property
    def median(self) -> float:
        return statistics.median(self.samples_us)

    @property
    def iqr(self) -> float:
        return iqr(self.samples_us)

    @property
    def min(self) -> float:
        return min(self.samples_us)

    @property
    def spread(self) -> float:
        """IQR relative to the median."""
        return relative_iqr(self.samples_us)


# Queued ahead of every timed sample: a GPU spin long enough (200k cycles: ~100 us at 2 GHz) for the host to queue
# the start event, the replay and the end event behind it, so that the GPU runs them back to back. Without it the GPU
# reaches the start event at once, idles while the host launches the replay, and the sample includes that launch
# (on an H200 ~7% of the Mixtral medians, and as variable as the host).
SPIN_CYCLES = 200_000
MIN_WARMUP_S = 0.02
# Graph instances an A/B measurement spreads its samples over (measure_instances). Two CUDA graphs of the same calls,
# captured one after the other, replay steadily apart: on an H200, 1.5-2 us kernels in 10-call graphs by up to
# +-4% (0.2-0.6 us a replay), with narrow intervals, and the next pair of graphs apart by another amount (A/A on
# the same functions and tensors). Pairs of graphs are therefore the unit the A/B verdict counts, not replays.
AB_INSTANCES = 10
# That gap is about the same number of microseconds per replay whatever the graph holds (sd 0.2-0.35 us with 10, 40
# or 160 calls of a 1.5-2 us kernel), so A/B graphs hold calls for a replay of at least AB_MIN_REPLAY_US (at most
# AB_MOST_CALLS calls): with 160 calls it came to ~0.1% of a replay, against +-2% with 10 (pair_timing). Replays of
# >= 100 us rather than 250 (20-70 calls of a kernel under 5 us): on an H100 three A/A runs of 324 Mixtral + DeepSeek-V3
# tests flagged 0 (250 us: 1 of 324), the pairs' intervals 0.5-0.7% wide under 10 us (250 us: 0.3%), an injected +5%
# was caught in 324 of 324, and the A/B run took 73-78 s against 114 s (benchmarks/results/2026-12-06-h100-ab-wall.md).
AB_MIN_REPLAY_US = 100.0
AB_MOST_CALLS = 1024
# Replays of each side's new graphs before an A/B instance's samples: the first replay of a graph uploads it; the
# clocks are already up (measure_instances). The usual five apiece and 20 ms in the first instance came to 100 replays
# of long graphs or more in each A/B test, 40 now.
AB_WARMUP_REPLAYS = 2
# Pairs of graphs an injected spin is sized over (CudaTimer.slow_down) when a replay lasts AB_MIN_REPLAY_US or more:
# there two graphs of the same calls differ by ~0.1% of a replay, ~2% of a 5% target, so one pair a try will do.
# (Sizing over ten pairs of the long graphs left an injected Mixtral + DeepSeek-V3 A/B run unfinished after 400 s on
# an H200, 201 s clean; over three, an injected Mixtral run after 431 s on an H100, 91 s clean.)
SIZING_INSTANCES_LONG = 1
MOST_SPIN_CYCLES = 100_000_000  # an injected spin's cap: ~50 ms at 2 GHz, past any target
TIMING_METHOD = ("CUDA-graph replays (contract section 3), each timed between two CUDA events queued behind a GPU spin "
                 f"of {SPIN_CYCLES} cycles, so that the host's launch of the replay is not timed")


def _spin() -> None:
    torch.cuda._sleep(SPIN_CYCLES)


def _queued_us(runs: list[Callable[[], object]], spin: Callable[[], None] = _spin) -> list[float]:
    """Each run's GPU time in microseconds, the runs queued back to back behind one `spin`, an event between each
    two: for runs long enough (A/B graphs, AB_MIN_REPLAY_US) that the host queues the next one before the GPU ends
    the last, each sample still holds the GPU's work only (TIMING_METHOD), without a spin and a host sync apiece."""
    events = [torch.cuda.Event(enable_timing=True) for _ in range(len(runs) + 1)]
    spin()
    events[0].record()
    for run, end in zip(runs, events[1:]):
        run()
        end.record()
    events[-1].synchronize()
    return [start.elapsed_time(end) * 1000.0 for start, end in zip(events, events[1:])]


def _event_us(run: Callable[[], object], spin: Callable[[], None] = _spin) -> float:
    """One run's GPU time between two CUDA events, in microseconds, queued behind `spin` (TIMING_METHOD)."""
    return _queued_us([run], spin)[0]


def _warm_up(runs: list[Callable[[], object]], timing: Timing, min_warmup_s: float = MIN_WARMUP_S) -> None:
    # Warm up for `warmup` replays and at least min_warmup_s: a GPU that idled while the host checked correctness
    # has lowered its clocks, and a few replays of a 2 us kernel are not enough to raise them again.
    start, done = time.perf_counter(), 0
    while done < timing.warmup or time.perf_counter() - start < min_warmup_s:
        for run in runs:
            run()
        torch.cuda.synchronize()
        done += 1


def _time_replays(run: Callable[[], None], calls: int, timing: Timing) -> list[float]:
    _warm_up([run], timing)
    return [_event_us(run) / calls for _ in range(timing.samples)]


def graph_calls(timing: Timing, sets: int) -> int:
    """Calls in one timing graph: max(invocations, sets), rounded up to a whole number of rotations."""
    n = max(timing.invocations, sets)
    return -(-n // sets) * sets


def pair_timing(us_per_call: float, timing: Timing, sets: int) -> Timing:
    """`timing` for an A/B measurement of calls taking about us_per_call each: its graphs hold enough calls for a
    replay of at least AB_MIN_REPLAY_US (at most AB_MOST_CALLS), a whole multiple of the usual graph's calls (so an
    injected copy every n-th call, n dividing those, divides these too), never fewer."""
    usual = graph_calls(timing, sets)
    times = min(math.ceil(AB_MIN_REPLAY_US / max(us_per_call, 1e-3) / usual), AB_MOST_CALLS // usual)
    return dataclasses.replace(timing, invocations=max(1, times) * usual)


@dataclasses.dataclass
class Captured:
    """What one measurement replays: `run` makes `calls` calls, through a CUDA graph (mode "graph") or eagerly."""
    run: Callable[[], object]
    calls: int
    sets: int
    mode: str
    note: str = ""
    pool: object = None  # the graph's memory pool (mode "graph")


def capture(calls: list[Callable[[], object]], timing: Timing, pool=None) -> Captured:
    """One CUDA graph of max(invocations, sets) calls (one per input set, rotated), rounded to a whole number of
    rotations, allocating from `pool` (another graph's) when given; an eager loop of the same calls when they cannot
    be captured (they sync or allocate)."""
    sets = len(calls)
    n = graph_calls(timing, sets)
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()
    try:
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up on a side stream, as capture requires
            for c in calls:
                c()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            for i in range(n):
                calls[i % sets]()
        torch.cuda.synchronize()
    except RuntimeError as e:
        torch.cuda.synchronize()
        reason = str(e).splitlines()[0][:160]

        def eager():
            for i in range(n):
                calls[i % sets]()
        return Captured(eager, n, sets, "eager", f"not capturable in a CUDA graph ({reason}); timed eagerly")
    return Captured(graph.replay, n, sets, "graph", pool=graph.pool())


def capture_in_turn(sides: list[list[Callable[[], object]]], timing: Timing,
                    contexts: list[Callable[[], typing.ContextManager]] | None = None) -> list[Captured]:
    """Each side's calls captured (inside its context, when given) for measure_interleaved, every graph allocating
    from the first one's memory pool: what a side allocates inside its graph (outputs, workspaces) then lies where
    the first side's did, at the same addresses for the same allocations, so that the sides are not told apart by
    where their memory happens to lie. Sharing is safe here: the graphs replay one at a time on one stream, and
    nothing reads what one left in the pool."""
    captured: list[Captured] = []
    for i, calls in enumerate(sides):
        with contexts[i]() if contexts else contextlib.nullcontext():
            captured.append(capture(calls, timing, next((c.pool for c in captured if c.pool is not None), None)))
    return captured


def measure(calls: list[Callable[[], object]], timing: Timing) -> Measurement:
    """Time `calls` (one per input set, rotated) per contract section 3: each was already run once eagerly by the
    caller. Each sample is one replay's event time divided by the calls in it, in microseconds."""
    c = capture(calls, timing)
    return Measurement(_time_replays(c.run, c.calls, timing), c.mode, c.calls, c.sets, c.note)


def measure_interleaved(sides: list[Captured], timing: Timing, min_warmup_s: float = MIN_WARMUP_S,
                        queued: bool = False) -> list[Measurement]:
    """Time several captured sides in turns (A B, then B A, ...), so that clock and power changes reach them alike:
    `samples` samples each, after a shared warm-up. One Measurement per side. `queued`: the replays of graphs that
    each last AB_MIN_REPLAY_US or so are queued back to back (_queued_us); eager sides are timed one by one."""
    _warm_up([side.run for side in sides], timing, min_warmup_s)
    turns = [j for i in range(timing.samples) for j in (range(len(sides)) if i % 2 == 0 else
                                                        reversed(range(len(sides))))]
    if queued and all(side.mode == "graph" for side in sides):
        times = _queued_us([sides[j].run for j in turns])
    else:
        times = [_event_us(sides[j].run) for j in turns]
    samples: list[list[float]] = [[] for _ in sides]
    for j, us in zip(turns, times):
        samples[j].append(us / sides[j].calls)
    return [Measurement(s, side.mode, side.calls, side.sets, side.note) for s, side in zip(samples, sides)]


def measure_instances(sides: list[list[Callable[[], object]]], timing: Timing, instances: int = AB_INSTANCES,
                      renew: Callable[[int], list[list[Callable[[], object]]]] | None = None) -> list[Measurement]:
    """The sides' calls (the current implementation, the reference's) captured anew `instances` times
    (capture_in_turn; even instances in the order given, odd ones the last side first) and each instance's graphs
    replayed in turns (measure_interleaved) for samples / instances samples each (at least 5), so that what sets one
    pair of graphs apart (AB_INSTANCES) is drawn anew for each pair. With `renew`, instance k >= 1 times the calls
    renew(k) makes instead (the sides' calls with buffers of their own made anew, say). Each instance's graphs are
    warmed up by AB_WARMUP_REPLAYS replays each, with no minimum time: callers time the calls just before (the
    A/B test's probe of the reference), so the clocks are up. Samples are queued back to back (_queued_us). One
    Measurement per side, in the order given: its samples are the instances' in order, sample i of each side taken
    back to back."""
    each = dataclasses.replace(timing, samples=max(5, -(-timing.samples // instances)), warmup=AB_WARMUP_REPLAYS)
    per_side: list[list[Measurement]] = [[] for _ in sides]
    calls = sides
    for k in range(instances):
        if k and renew is not None:
            calls = None  # the previous instance's calls, and what only they hold, go first
            calls = renew(k)
        order = list(range(len(sides)))[::1 if k % 2 == 0 else -1]
        captured = capture_in_turn([calls[j] for j in order], each)
        for j, m in zip(order, measure_interleaved(captured, each, 0.0, queued=True)):
            per_side[j].append(m)
        del captured  # the graphs and their pool go before the next instance's are made
    return [dataclasses.replace(ms[0], samples_us=[s for m in ms for s in m.samples_us], instances=instances)
            for ms in per_side]


def input_sets_for_cold_l2(bytes_per_set: int, device, cap: int = 64) -> int:
    """Input sets to rotate so that together they exceed twice the L2 size (capped; the result says so)."""
    l2 = torch.cuda.get_device_properties(device).L2_cache_size
    return min(cap, max(1, -(-2 * l2 // max(bytes_per_set, 1)) + 1))


_ceiling_cache: dict[str, float] = {}

CEILING_BYTES = 1 << 30  # copied per timed copy; >= 1 GiB: far past the L2, so HBM is what is timed
CEILING_TRIES = 10
CEILING_SPIN_UP_S = 0.5
CEILING_METHOD = (f"eager torch copy_ of {CEILING_BYTES >> 30} GiB between CUDA events (an SM copy kernel, not a "
                  f"memcpy captured in a CUDA graph), best of {CEILING_TRIES}, bytes read + written")


def best_copy_us(copy: Callable[[], object], tries: int | None = None, spin_up_s: float | None = None,
                 clock: Callable[[Callable[[], object]], float] | None = None) -> float:
    """The fastest of `tries` (CEILING_TRIES) eager copies, each timed alone by `clock` (CUDA events), after copying
    for `spin_up_s` (CEILING_SPIN_UP_S) so that an idle GPU has raised its clocks."""
    tries = CEILING_TRIES if tries is None else tries
    spin_up_s = CEILING_SPIN_UP_S if spin_up_s is None else spin_up_s
    clock = clock or _event_us
    start = time.perf_counter()
    while time.perf_counter() - start < spin_up_s:
        copy()
        clock(copy)
    return min(clock(copy) for _ in range(tries))


def copy_ceiling_gbps(device) -> float:
    """What a kernel can move (docs/contract.md section 3): CEILING_METHOD, measured once per process and device, in
    GB/s of bytes read plus bytes written.

    A memcpy captured in a CUDA graph runs on the copy engines, which are much slower (2.71 TB/s on an H200 where
    this moves 4.2): against it every kernel looked ~1.55x closer to the limit than it is.
    """
    key = str(torch.device(device))
    if key not in _ceiling_cache:
        src = torch.empty(CEILING_BYTES, dtype=torch.uint8, device=device).fill_(1)
        dst = torch.empty_like(src)
        us = best_copy_us(lambda: dst.copy_(src))
        _ceiling_cache[key] = 2 * CEILING_BYTES / us / 1e3
        del src, dst
    return _ceiling_cache[key]


_spin_rate_cache: dict[str, float] = {}


def spin_cycles_per_us(device, cycles: int = 1_000_000) -> float:
    """Clock cycles a GPU spin (torch.cuda._sleep) waits per microsecond, measured once per process and device: the
    difference of a spin of 2 x `cycles` and one of `cycles` (launch costs cancel), best of three."""
    key = str(torch.device(device))
    if key not in _spin_rate_cache:
        with torch.cuda.device(torch.device(device)):
            _event_us(lambda: torch.cuda._sleep(cycles))  # the first launch loads the kernel
            us = min(_event_us(lambda: torch.cuda._sleep(2 * cycles)) - _event_us(lambda: torch.cuda._sleep(cycles))
                     for _ in range(3))
        _spin_rate_cache[key] = cycles / us
    return _spin_rate_cache[key]


_matmul_cache: dict[tuple[str, str], float] = {}


def matmul_ceiling_tflops(device, kind: str, n: int = 8192) -> float:
    """Dense n x n x n matrix-multiply throughput in TFLOP/s (2 n^3 per product), bf16 or fp8 (torch._scaled_mm,
    bf16 out), measured once per process, device and kind: what fused_experts' TFLOP/s is a fraction of."""
    key = (str(torch.device(device)), kind)
    if key not in _matmul_cache:
        a = torch.randn(n, n, device=device).to(torch.bfloat16)
        b = torch.randn(n, n, device=device).to(torch.bfloat16).t()  # column-major, as _scaled_mm wants
        if kind == "fp8":
            a, b = a.to(torch.float8_e4m3fn), b.to(torch.float8_e4m3fn)
            one = torch.ones((), device=device)

            def call():
                return torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
        else:
            def call():
                return a @ b
        call()
        m = measure([call], Timing(invocations=3, samples=20, warmup=3))
        _matmul_cache[key] = 2 * n ** 3 / m.median / 1e6
    return _matmul_cache[key]


class CudaTimer:
    """What the timing tests measure with on a GPU. Tests of the plugin give a fake one with the same methods."""

    def __init__(self):
        self.gpu_slug = env.gpu_slug()

    @staticmethod
    def gpu_uuid() -> str:
        return str(torch.cuda.get_device_properties(torch.cuda.current_device()).uuid)

    measure = staticmethod(measure)

    @staticmethod
    def compare(calls, timing: Timing, contexts: list[Callable[[], typing.ContextManager]]) -> list[Measurement]:
        """The same calls captured once inside each context (another launch config) and the captures replayed in
        turns (measure_interleaved): one Measurement per context."""
        return measure_interleaved(capture_in_turn([calls] * len(contexts), timing, contexts), timing)

    interleave = staticmethod(measure_instances)

    input_sets_for_cold_l2 = staticmethod(input_sets_for_cold_l2)
    ceiling_gbps = staticmethod(copy_ceiling_gbps)
    matmul_ceiling_tflops = staticmethod(matmul_ceiling_tflops)

    @staticmethod
    def environment() -> dict:
        device = torch.cuda.current_device()
        # pytest processes timing on this GPU (xdist workers sharing it, set by the plugin; else 1): on an H200 a
        # process alone on the GPU timed ~8% slower than one of four -n 4 workers sharing it
        processes = int(os.environ.get(health.WORKERS_PER_GPU_VAR) or 1)
        return dict(env.snapshot(device), copy_ceiling_gbps=round(copy_ceiling_gbps(device), 1),
                    copy_ceiling_method=CEILING_METHOD, timing_method=TIMING_METHOD, pytest_processes=processes)

    @staticmethod
    def health() -> dict:
        return health.snapshot(torch.cuda.current_device())

    @staticmethod
    def slow_down(calls, extra_us: float, device, timing: Timing) -> tuple[Callable[[list], list], dict]:
        """A function that adds to a list of calls like these a GPU spin (inject.calibrate) that makes them, timed
        with `timing` as the gate times them, about extra_us slower; and what it adds.

        The spin is sized on `calls`, each try measured over pairs of graphs (AB_INSTANCES, or SIZING_INSTANCES_LONG
        for replays of AB_MIN_REPLAY_US or more); what it adds is the last try's measurement, of the spin returned.
        """
        quick = dataclasses.replace(timing, samples=min(timing.samples, 30))
        replay_us = measure(calls, quick).median * graph_calls(timing, len(calls))
        pairs = SIZING_INSTANCES_LONG if replay_us >= AB_MIN_REPLAY_US else AB_INSTANCES

        def with_spin(cycles: int, every: int) -> Callable[[list], list]:
            count = itertools.count()

            def slowed(call):
                def run():
                    out = call()
                    if next(count) % every == 0:
                        torch.cuda._sleep(cycles)
                    return out
                return run
            return lambda cs: [slowed(c) for c in cs]

        def added(cycles: int, every: int) -> float:  # as the A/B gate pairs: the median over pairs of graphs of
            slowed, plain = measure_instances([with_spin(cycles, every)(calls), calls], quick, pairs)  # differences
            return statistics.median(instance_medians([a - b for a, b in zip(slowed.samples_us, plain.samples_us)],
                                                      slowed.instances))

        plan = inject.calibrate(added, extra_us, spin_cycles_per_us(device), graph_calls(timing, len(calls)),
                                MOST_SPIN_CYCLES)
        return with_spin(plan.cycles, plan.every), {"target_us": extra_us, "extra_us": plan.added_us,
                                                    "spin_cycles": plan.cycles, "spin_every": plan.every}

    @staticmethod
    def lock():
        """One timing at a time per physical GPU, even when more xdist workers than GPUs share one."""
        return machine_lock(f"gpu-{CudaTimer.gpu_uuid()}")
