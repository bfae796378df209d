"""Sizing the extra copy of an injected slowdown (pytest_moeperf/inject.py) against made-up cost models."""
import pytest

from pytest_moeperf.measure import inject

LAUNCH_US = 1.7


def copy_cost(nbytes, every):  # one launch for any copy, then bandwidth that improves with size; shared by `every`
    return (LAUNCH_US + nbytes / (100_000.0 + nbytes / 20.0)) / every


def test_secant_steps_reach_the_target_through_a_launch_cost_and_a_nonlinear_copy():
    calls = []

    def added(nbytes, every):
        calls.append((nbytes, every))
        return copy_cost(nbytes, every)

    plan = inject.calibrate(added, 12.0, first_guess=5_000, graph_calls=10, most_bytes=1 << 30)
    assert plan.every == 1
    assert plan.added_us == pytest.approx(12.0, rel=0.05)
    assert plan.added_us == copy_cost(plan.nbytes, 1)
    assert len(calls) <= 1 + 1 + 3


@pytest.mark.parametrize("target, graph_calls, every", [(0.2, 10, 10), (0.4, 10, 5), (0.9, 10, 2), (0.35, 64, 8),
                                                         (0.5, 64, 4), (1.5, 10, 2), (2.0, 10, 1)])
def test_a_target_below_one_copy_spreads_a_larger_copy_over_calls(target, graph_calls, every):
    plan = inject.calibrate(copy_cost, target, first_guess=1_000, graph_calls=graph_calls, most_bytes=1 << 30)
    assert plan.every == every
    assert graph_calls % plan.every == 0  # every graph holds the same number of copies
    assert plan.added_us == copy_cost(plan.nbytes, every) == pytest.approx(target, rel=0.05)


def test_a_target_below_the_smallest_copy_after_every_graph_call_gets_that():
    plan = inject.calibrate(copy_cost, 0.05, first_guess=1_000, graph_calls=10, most_bytes=1 << 30)
    assert (plan.nbytes, plan.every) == (inject.SMALLEST_BYTES, 10)
    assert plan.added_us == copy_cost(inject.SMALLEST_BYTES, 10)


def test_the_copy_never_outgrows_its_buffer():
    plan = inject.calibrate(copy_cost, 1e6, first_guess=1_000, graph_calls=10, most_bytes=1 << 20)
    assert plan.nbytes == 1 << 20


def test_a_flat_or_noisy_measurement_stops_instead_of_diverging():
    plan = inject.calibrate(lambda n, every: 2.0, 10.0, first_guess=100_000, graph_calls=10, most_bytes=1 << 30)
    assert (plan.nbytes, plan.every) == (100_000, 1)
