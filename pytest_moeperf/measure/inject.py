"""Injected slowdowns for proving the gate (--moeperf-inject-slowdown): an extra GPU spin (a kernel that waits a given
number of clock cycles, touching no memory) after the calls, sized so that the calls, measured as the gate measures
them, get slower by a chosen number of microseconds.

A spin costs one kernel launch (a graph node: about 1-2 us on an H100 or H200) plus its cycles, which is more than 5%
of a kernel under about 30 us. Below that cost the spin runs after every n-th call only, and is made longer until its
cost over n meets the target: n divides the calls of one timing graph, so every graph holds the same number of spins.
A spin rather than a copy (as before 2026-12-05): its cost is linear in its cycles and it moves no memory, so it
neither evicts the kernel's data from L2 nor competes for bandwidth; sizing needs fewer tries and lands nearer.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

SMALLEST_CYCLES = 1000  # about half a microsecond at 2 GHz


@dataclasses.dataclass(frozen=True)
class Plan:
    cycles: int  # clock cycles of the extra spin
    every: int  # the spin follows every `every`-th call
    added_us: float  # measured slowdown per call


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def calibrate(added_us: Callable[[int, int], float], target_us: float, cycles_per_us: float, graph_calls: int,
              most_cycles: int, steps: int = 2, tolerance: float = 0.05) -> Plan:
    """The spin whose measured slowdown, added_us(cycles, every), is nearest target_us.

    The spin follows every n-th call, n the smallest divisor of graph_calls for which the smallest spin costs no more
    than the target (n = 1 when the target exceeds that cost). Its cycles then come from the clock (cycles_per_us:
    what is left of the target after the smallest spin's cost, times n), and at most `steps` secant steps correct
    them while the measurement is off by more than `tolerance` of the target; never past most_cycles.
    """
    a_one = added_us(SMALLEST_CYCLES, 1)
    fits = [d for d in divisors(graph_calls) if a_one / d <= target_us]
    every = fits[0] if fits else graph_calls
    n0, a0 = SMALLEST_CYCLES, a_one if every == 1 else added_us(SMALLEST_CYCLES, every)
    if a0 >= target_us:
        return Plan(n0, every, a0)

    def bounded(n: float) -> int:
        return min(most_cycles, max(SMALLEST_CYCLES, int(n)))

    n1 = bounded(n0 + (target_us - a0) * every * cycles_per_us)
    a1 = added_us(n1, every)
    for _ in range(steps):
        if abs(a1 - target_us) <= tolerance * target_us or a1 == a0:
            break
        slope = (a1 - a0) / (n1 - n0) if n1 != n0 else 0.0
        if slope <= 0:
            break
        n2 = bounded(n1 + (target_us - a1) / slope)
        if n2 == n1:
            break
        n0, a0, n1, a1 = n1, a1, n2, added_us(n2, every)
    return Plan(n1, every, a1)
