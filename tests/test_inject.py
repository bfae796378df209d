"""Sizing the extra spin of an injected slowdown (pytest_moeperf/measure/inject.py) against made-up cost models."""
import pytest

from pytest_moeperf.measure import inject

LAUNCH_US = 1.7
CLOCK = 1980.0  # cycles per us


def spin_cost(cycles, every):  # one launch for any spin, then its cycles; shared by `every` calls
    return (LAUNCH_US + cycles / CLOCK) / every


def test_a_target_above_one_launch_is_met_from_the_clock_in_two_tries():
    calls = []

    def added(cycles, every):
        calls.append((cycles, every))
        return spin_cost(cycles, every)

    plan = inject.calibrate(added, 12.0, CLOCK, graph_calls=10, most_cycles=1 << 30)
    assert plan.every == 1
    assert plan.added_us == pytest.approx(12.0, rel=0.01)
    assert plan.added_us == spin_cost(plan.cycles, 1)
    assert len(calls) == 2  # the smallest spin, then the sized one


def test_a_wrong_clock_is_corrected_by_secant_steps():
    """The cost model's clock runs at half the rate the caller believes (a throttled GPU): the first sized spin
    lands at about half the target, a secant step fixes it."""
    def slow_clock(cycles, every):
        return (LAUNCH_US + cycles / (CLOCK / 2)) / every

    plan = inject.calibrate(slow_clock, 12.0, CLOCK, graph_calls=10, most_cycles=1 << 30)
    assert plan.added_us == pytest.approx(12.0, rel=0.05)


@pytest.mark.parametrize("target, graph_calls, every", [(0.25, 10, 10), (0.5, 10, 5), (1.2, 10, 2), (0.35, 64, 8),
                                                         (0.6, 64, 4), (1.5, 10, 2), (2.5, 10, 1)])
def test_a_target_below_one_launch_spreads_a_longer_spin_over_calls(target, graph_calls, every):
    plan = inject.calibrate(spin_cost, target, CLOCK, graph_calls=graph_calls, most_cycles=1 << 30)
    assert plan.every == every
    assert graph_calls % plan.every == 0  # every graph holds the same number of spins
    assert plan.added_us == spin_cost(plan.cycles, every) == pytest.approx(target, rel=0.05)


def test_a_target_below_the_smallest_spin_after_every_graph_call_gets_that():
    plan = inject.calibrate(spin_cost, 0.05, CLOCK, graph_calls=10, most_cycles=1 << 30)
    assert (plan.cycles, plan.every) == (inject.SMALLEST_CYCLES, 10)
    assert plan.added_us == spin_cost(inject.SMALLEST_CYCLES, 10)


def test_the_spin_never_outgrows_its_cap():
    plan = inject.calibrate(spin_cost, 1e6, CLOCK, graph_calls=10, most_cycles=1 << 20)
    assert plan.cycles == 1 << 20


def test_a_flat_or_noisy_measurement_stops_instead_of_diverging():
    tries = []

    def flat(cycles, every):
        tries.append(cycles)
        return 2.0

    plan = inject.calibrate(flat, 10.0, CLOCK, graph_calls=10, most_cycles=1 << 30)
    assert plan.every == 1 and plan.added_us == 2.0 and len(tries) == 2
