"""Sizing the extra copy of an injected slowdown (pytest_moeperf/inject.py) against made-up cost models."""
import pytest

from pytest_moeperf import inject


def test_secant_steps_reach_the_target_through_a_launch_cost_and_a_nonlinear_copy():
    calls = []

    def added(nbytes):  # 1.7 us for any copy, then bandwidth that improves with size
        calls.append(nbytes)
        return 1.7 + nbytes / (1000.0 + nbytes / 2000.0)

    nbytes, got = inject.calibrate_bytes(added, 12.0, first_guess=5_000)
    assert got == pytest.approx(12.0, rel=0.05)
    assert got == added(nbytes)
    assert len(calls) <= 1 + 1 + 3 + 1


def test_a_target_below_one_copy_gets_the_smallest_copy():
    nbytes, got = inject.calibrate_bytes(lambda n: 1.7 + n / 1e6, 0.5, first_guess=1_000_000)
    assert nbytes == inject.SMALLEST_BYTES and got > 0.5


def test_a_flat_or_noisy_measurement_stops_instead_of_diverging():
    nbytes, _ = inject.calibrate_bytes(lambda n: 2.0, 10.0, first_guess=100_000)
    assert nbytes == 100_000
