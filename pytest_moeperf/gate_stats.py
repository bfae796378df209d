"""Error rates of the gate, from the JSON reports (--moeperf-json) of clean and slowed-down reruns.

Used by benchmarks/gate_experiment.py: a clean rerun against the baselines (A/A) measures the false alarms; a rerun
with --moeperf-inject-slowdown (A/B) measures the detection power, per injected size and kernel duration.
"""
from __future__ import annotations

import statistics

LONG_KERNEL_US = 10.0  # SPEC 5 states the detection figures for kernels of at least this long


def flagged(result: dict) -> bool:
    """Whether the gate failed this timing test (a counted regression: not advisory, not excused)."""
    v = result["verdict"]
    return v.startswith("regression") and "not counted" not in v and "advisory" not in v


def duration_class(result: dict) -> str:
    base = result.get("baseline_median_us")
    if base is None:
        return "no baseline"
    return f">= {LONG_KERNEL_US:g} us" if base >= LONG_KERNEL_US else f"< {LONG_KERNEL_US:g} us"


def _quantiles(values: list[float]) -> tuple[float, float, float] | None:
    if len(values) < 2:
        return None
    q = statistics.quantiles(values, n=20, method="inclusive")
    return q[0], statistics.median(values), q[-1]


def false_alarms(clean_runs: list[list[dict]]) -> list[dict]:
    """Per clean run: timing tests with a baseline, how many the gate flagged, and how many it excused."""
    rows = []
    for i, results in enumerate(clean_runs):
        judged = [r for r in results if r.get("baseline_median_us") is not None]
        rows.append({"run": i + 1, "tests": len(judged), "flagged": sum(map(flagged, judged)),
                     "excused": sum("not counted" in r["verdict"] for r in judged),
                     "rate": sum(map(flagged, judged)) / len(judged) if judged else None})
    return rows


def detection(injected_runs: dict[float, list[list[dict]]]) -> list[dict]:
    """Per injected fraction and kernel duration class: tests, how many were flagged, and the rate."""
    rows = []
    for fraction, runs in sorted(injected_runs.items()):
        by_class: dict[str, list[dict]] = {}
        for results in runs:
            for r in results:
                if r.get("baseline_median_us") is not None:
                    by_class.setdefault(duration_class(r), []).append(r)
        for cls, rs in sorted(by_class.items()):
            hits = sum(map(flagged, rs))
            rows.append({"injected": fraction, "kernels": cls, "tests": len(rs), "flagged": hits,
                         "rate": hits / len(rs)})
    return rows


def ratio_spread(clean_runs: list[list[dict]]) -> list[dict]:
    """5th percentile, median and 95th percentile of the clean median / baseline median ratio, per duration class."""
    by_class: dict[str, list[float]] = {}
    for results in clean_runs:
        for r in results:
            if r.get("baseline_median_us"):
                by_class.setdefault(duration_class(r), []).append(r["median_us"] / r["baseline_median_us"])
    rows = []
    for cls, ratios in sorted(by_class.items()):
        q = _quantiles(ratios)
        if q:
            rows.append({"kernels": cls, "tests": len(ratios), "p5": q[0], "median": q[1], "p95": q[2]})
    return rows
