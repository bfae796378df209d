"""Injected slowdowns for proving the gate (--moeperf-inject-slowdown): how many extra bytes to copy after each
call so that the call gets slower by a chosen number of microseconds."""
from __future__ import annotations

from collections.abc import Callable

SMALLEST_BYTES = 4096


def calibrate_bytes(added_us: Callable[[int], float], target_us: float, first_guess: int, steps: int = 3,
                    tolerance: float = 0.05) -> tuple[int, float]:
    """(bytes, measured added us): secant steps on added_us(bytes) = target_us, where added_us measures how much
    slower the call is with an extra copy of that many bytes. Stops within `tolerance` of the target or after
    `steps`. A copy costs at least a launch, so a target below added_us(SMALLEST_BYTES) gets that."""
    n0, a0 = SMALLEST_BYTES, added_us(SMALLEST_BYTES)
    if a0 >= target_us:
        return n0, a0
    n1 = max(first_guess, 2 * SMALLEST_BYTES)
    a1 = added_us(n1)
    for _ in range(steps):
        if abs(a1 - target_us) <= tolerance * target_us or a1 == a0:
            break
        slope = (a1 - a0) / (n1 - n0)
        if slope <= 0:
            break
        n2 = max(SMALLEST_BYTES, int(n1 + (target_us - a1) / slope))
        if n2 == n1:
            break
        n0, a0, n1, a1 = n1, a1, n2, added_us(n2)
    return n1, a1
