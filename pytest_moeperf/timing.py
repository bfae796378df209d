"""CUDA-graph timing (SPEC section 3) and the device-copy ceiling it is compared with."""
from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable

import torch

from pytest_moeperf import env, health, inject
from pytest_moeperf.locks import machine_lock
from pytest_moeperf.scenario import Timing


@dataclasses.dataclass
class Measurement:
    samples_us: list[float]
    mode: str  # "graph", or "eager" when the call cannot be captured (it syncs or allocates outside the pool)
    invocations: int
    input_sets: int
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.samples_us)

    @property
    def iqr(self) -> float:
        q = statistics.quantiles(self.samples_us, n=4, method="inclusive")
        return q[2] - q[0]

    @property
    def min(self) -> float:
        return min(self.samples_us)

    @property
    def spread(self) -> float:
        """IQR relative to the median."""
        return self.iqr / self.median


def _time_replays(run: Callable[[], None], calls: int, timing: Timing, min_warmup_s: float = 0.02) -> list[float]:
    # Warm up for `warmup` replays and at least min_warmup_s: a GPU that idled while the host checked correctness
    # has lowered its clocks, and a few replays of a 2 us kernel are not enough to raise them again.
    start, done = time.perf_counter(), 0
    while done < timing.warmup or time.perf_counter() - start < min_warmup_s:
        run()
        torch.cuda.synchronize()
        done += 1
    samples = []
    for _ in range(timing.samples):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) * 1000.0 / calls)
    return samples


def measure(calls: list[Callable[[], object]], timing: Timing) -> Measurement:
    """Time `calls` (one per input set, rotated) per SPEC 3: each was already run once eagerly by the caller.

    One CUDA graph holds max(invocations, sets) calls, rounded to a whole number of rotations; each sample is one
    replay's event time divided by the calls in it, in microseconds.
    """
    sets = len(calls)
    n = max(timing.invocations, sets)
    n = -(-n // sets) * sets
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()
    try:
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up on a side stream, as capture requires
            for c in calls:
                c()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for i in range(n):
                calls[i % sets]()
        torch.cuda.synchronize()
    except RuntimeError as e:
        torch.cuda.synchronize()
        reason = str(e).splitlines()[0][:160]

        def eager():
            for i in range(n):
                calls[i % sets]()
        return Measurement(_time_replays(eager, n, timing), "eager", n, sets,
                           note=f"not capturable in a CUDA graph ({reason}); timed eagerly")
    samples = _time_replays(graph.replay, n, timing)
    del graph
    return Measurement(samples, "graph", n, sets)


def input_sets_for_cold_l2(bytes_per_set: int, device, cap: int = 64) -> int:
    """Input sets to rotate so that together they exceed twice the L2 size (capped; the result says so)."""
    l2 = torch.cuda.get_device_properties(device).L2_cache_size
    return min(cap, max(1, -(-2 * l2 // max(bytes_per_set, 1)) + 1))


_ceiling_cache: dict[str, float] = {}


def copy_ceiling_gbps(device, spin_up_s: float = 0.5) -> float:
    """Device-to-device copy bandwidth (bytes read + written), measured once per process and device.

    Copies run for `spin_up_s` first, so that an idle GPU has raised its clocks before anything is timed.
    """
    key = str(torch.device(device))
    if key not in _ceiling_cache:
        src = torch.empty(1 << 30, dtype=torch.uint8, device=device).fill_(1)
        dst = torch.empty_like(src)
        start = time.perf_counter()
        while time.perf_counter() - start < spin_up_s:
            for _ in range(8):
                dst.copy_(src)
            torch.cuda.synchronize()
        m = measure([lambda: dst.copy_(src)], Timing(invocations=3, samples=20, warmup=3))
        _ceiling_cache[key] = 2 * src.numel() / m.median / 1e3
        del src, dst
    return _ceiling_cache[key]


class CudaTimer:
    """What the timing tests measure with on a GPU. Tests of the plugin give a fake one with the same methods."""

    def __init__(self):
        self.gpu_slug = env.gpu_slug()

    @staticmethod
    def gpu_uuid() -> str:
        return str(torch.cuda.get_device_properties(torch.cuda.current_device()).uuid)

    measure = staticmethod(measure)
    input_sets_for_cold_l2 = staticmethod(input_sets_for_cold_l2)
    ceiling_gbps = staticmethod(copy_ceiling_gbps)

    @staticmethod
    def environment() -> dict:
        return env.snapshot()

    @staticmethod
    def health() -> dict:
        return health.snapshot(torch.cuda.current_device())

    @staticmethod
    def slow_down(calls, extra_us: float, device) -> tuple[list, dict]:
        """The calls, each followed by a device copy sized (inject.calibrate_bytes) so that the calls, measured as
        the gate measures them, get about extra_us slower; and what was added."""
        timing = Timing(invocations=10, samples=30, warmup=3)

        def with_copy(nbytes: int) -> list:
            src = torch.ones(nbytes, dtype=torch.uint8, device=device)
            dst = torch.empty_like(src)
            return [lambda c=c: (c(), dst.copy_(src)) for c in calls]

        clean_us = measure(calls, timing).median
        guess = int(extra_us * copy_ceiling_gbps(device) * 1e3 / 2)
        nbytes, added_us = inject.calibrate_bytes(lambda n: measure(with_copy(n), timing).median - clean_us,
                                                  extra_us, guess)
        return with_copy(nbytes), {"target_us": extra_us, "extra_us": added_us, "extra_bytes": nbytes}

    @staticmethod
    def lock():
        """One timing at a time per physical GPU, even when more xdist workers than GPUs share one."""
        return machine_lock(f"gpu-{CudaTimer.gpu_uuid()}")
