"""The gate experiment's arithmetic (pytest_moeperf/gate_stats.py) on hand-made results."""
import pytest

from pytest_moeperf import gate_stats


def result(verdict, median, base):
    return {"verdict": verdict, "median_us": median, "baseline_median_us": base}


def test_only_counted_regressions_are_flagged():
    assert gate_stats.flagged(result("regression", 1, 1))
    assert gate_stats.flagged(result("regression (injected +10%)", 1, 1))
    assert not gate_stats.flagged(result("regression (eager: advisory)", 1, 1))
    assert not gate_stats.flagged(result("regression (not counted: GPU throttled (hardware slowdown))", 1, 1))
    assert not gate_stats.flagged(result("pass", 1, 1))


def test_false_alarms_detection_and_spread():
    clean = [[result("pass", 10.0, 10.0), result("regression", 3.3, 3.0), result("new", 1, None)],
             [result("pass", 20.2, 20.0), result("pass", 2.9, 3.0)]]
    alarms = gate_stats.false_alarms(clean)
    assert [(a["tests"], a["flagged"]) for a in alarms] == [(2, 1), (2, 0)]
    assert alarms[0]["rate"] == 0.5

    injected = {0.1: [[result("regression (injected +10%)", 11.0, 10.0), result("pass", 3.1, 3.0)]],
                0.05: [[result("pass", 10.4, 10.0), result("regression (injected +5%)", 21.0, 20.0)]]}
    rows = gate_stats.detection(injected)
    assert [(r["injected"], r["kernels"], r["tests"], r["flagged"]) for r in rows] == [
        (0.05, ">= 10 us", 2, 1), (0.1, "< 10 us", 1, 0), (0.1, ">= 10 us", 1, 1)]

    spread = {r["kernels"]: r for r in gate_stats.ratio_spread(clean)}
    assert spread[">= 10 us"]["median"] == pytest.approx(1.005)
    assert spread["< 10 us"]["tests"] == 2
