"""Injected slowdowns for proving the gate (--moeperf-inject-slowdown): an extra device copy after the calls, sized so
that the calls, measured as the gate measures them, get slower by a chosen number of microseconds.

A copy costs at least one kernel launch (about 1.7 us in a CUDA graph on an H100), more than 5% of a kernel under
about 35 us. Below that cost the copy runs after every n-th call only, and is made larger until its cost over n
meets the target: n divides the calls of one timing graph, so every graph holds the same number of copies.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

SMALLEST_BYTES = 4096


@dataclasses.dataclass(frozen=True)
class Plan:
    nbytes: int  # bytes of the extra copy
    every: int  # the copy follows every `every`-th call
    added_us: float  # measured slowdown per call


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def calibrate(added_us: Callable[[int, int], float], target_us: float, first_guess: int, graph_calls: int,
              most_bytes: int, steps: int = 3, tolerance: float = 0.05) -> Plan:
    """The copy whose measured slowdown, added_us(nbytes, every), is nearest target_us.

    The copy follows every n-th call, n the smallest divisor of graph_calls for which the smallest copy costs no more
    than the target (n = 1 when the target exceeds that cost); then secant steps on its bytes, stopping within
    `tolerance` of the target or after `steps`, and never past most_bytes.
    """
    a_one = added_us(SMALLEST_BYTES, 1)
    fits = [d for d in divisors(graph_calls) if a_one / d <= target_us]
    every = fits[0] if fits else graph_calls
    n0, a0 = SMALLEST_BYTES, a_one if every == 1 else added_us(SMALLEST_BYTES, every)
    if a0 >= target_us:
        return Plan(n0, every, a0)
    n1 = min(most_bytes, max(first_guess * every, 2 * SMALLEST_BYTES))
    a1 = added_us(n1, every)
    for _ in range(steps):
        if abs(a1 - target_us) <= tolerance * target_us or a1 == a0:
            break
        slope = (a1 - a0) / (n1 - n0)
        if slope <= 0:
            break
        n2 = min(most_bytes, max(SMALLEST_BYTES, int(n1 + (target_us - a1) / slope)))
        if n2 == n1:
            break
        n0, a0, n1, a1 = n1, a1, n2, added_us(n2, every)
    return Plan(n1, every, a1)
