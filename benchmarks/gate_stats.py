"""Error rates of the gate, from the JSON reports (--moeperf-json) of clean and slowed-down reruns.

Used by benchmarks/gate_experiment.py: a clean rerun against the baselines (A/A) measures the false alarms; a rerun
with --moeperf-inject-slowdown (A/B) measures the detection power, per injected size and kernel duration. Runs are
lists of results as the JSON report holds them (committed reports of 2026-11 included: their outcome is read by
result.Outcome.of); clean_runs[i] and each injected_runs[f][i] come from the same round.
"""
from __future__ import annotations

import statistics
from collections.abc import Callable

from pytest_moeperf.gate import verdict
from pytest_moeperf.gate.result import Outcome
from pytest_moeperf.gate.verdict import Kind

LONG_KERNEL_US = 10.0  # contract section 5 states the detection figures for kernels of at least this long


def flagged(result: dict) -> bool:
    """Whether the gate failed this timing test (a counted regression: not advisory, not excused)."""
    return Outcome.of(result).counted


def duration_class(result: dict) -> str:
    base = result.get("baseline_median_us")
    if base is None:
        return "no baseline"
    return f">= {LONG_KERNEL_US:g} us" if base >= LONG_KERNEL_US else f"< {LONG_KERNEL_US:g} us"


def _judged(results: list[dict]) -> list[dict]:
    return [r for r in results if r.get("baseline_median_us") is not None]


def quantiles(values: list[float]) -> dict:
    if len(values) < 2:
        return {"p5": None, "median": values[0] if values else None, "p95": None}
    q = statistics.quantiles(values, n=20, method="inclusive")
    return {"p5": q[0], "median": statistics.median(values), "p95": q[-1]}


def false_alarms(clean_runs: list[list[dict]]) -> list[dict]:
    """Per clean run: timing tests with a baseline, how many the gate flagged, and how many it excused."""
    rows = []
    for i, results in enumerate(clean_runs):
        judged = _judged(results)
        rows.append({"run": i + 1, "tests": len(judged), "flagged": sum(map(flagged, judged)),
                     "excused": sum(bool(Outcome.of(r).excuses) for r in judged),
                     "rate": sum(map(flagged, judged)) / len(judged) if judged else None})
    return rows


def _by_key(results: list[dict]) -> dict:
    return {(r["scenario"], r["key"]): r for r in results}


def detection(injected_runs: dict[float, list[list[dict]]], clean_runs: list[list[dict]]) -> list[dict]:
    """Per injected fraction and kernel duration class: tests, how many were flagged, the rate, and the slowdown
    actually injected (median of the slowed run over the clean run of the same round, 5th to 95th percentile)."""
    rows = []
    for fraction, runs in sorted(injected_runs.items()):
        by_class: dict[str, list[tuple[dict, float | None]]] = {}
        for results, clean in zip(runs, clean_runs):
            clean_of = _by_key(clean)
            for r in _judged(results):
                c = clean_of.get((r["scenario"], r["key"]))
                realized = r["median_us"] / c["median_us"] - 1 if c else None
                by_class.setdefault(duration_class(r), []).append((r, realized))
        for cls, pairs in sorted(by_class.items()):
            hits = sum(flagged(r) for r, _ in pairs)
            q = quantiles([x for _, x in pairs if x is not None])
            rows.append({"injected": fraction, "kernels": cls, "tests": len(pairs), "flagged": hits,
                         "rate": hits / len(pairs), "realized p5": q["p5"], "realized median": q["median"],
                         "realized p95": q["p95"]})
    return rows


def ceiling_ratio(result: dict, base_entry: dict | None) -> float | None:
    """This run's copy ceiling over that of the run that recorded the baseline (None when either is unknown)."""
    if not base_entry or not base_entry.get("ceiling_pct") or not result.get("ceiling_gbps"):
        return None
    return result["ceiling_gbps"] / (100 * base_entry["gbps"] / base_entry["ceiling_pct"])


def ratio_spread(clean_runs: list[list[dict]], baseline_of: Callable[[dict], dict | None]) -> list[dict]:
    """Spread of the clean median / baseline median ratio per duration class: raw, and scaled by the two runs'
    copy ceilings (what a gate on time relative to the copy ceiling of its own run would see)."""
    raw: dict[str, list[float]] = {}
    scaled: dict[str, list[float]] = {}
    for results in clean_runs:
        for r in _judged(results):
            ratio = r["median_us"] / r["baseline_median_us"]
            raw.setdefault(duration_class(r), []).append(ratio)
            c = ceiling_ratio(r, baseline_of(r))
            if c is not None:
                scaled.setdefault(duration_class(r), []).append(ratio * c)
    rows = []
    for measure, groups in (("median / baseline", raw), ("x copy-ceiling ratio", scaled)):
        for cls, ratios in sorted(groups.items()):
            rows.append({"ratio": measure, "kernels": cls, "tests": len(ratios), **quantiles(ratios),
                         "max |r - 1|": max(abs(x - 1) for x in ratios)})
    return rows


def rejudged(result: dict, base_entry: dict | None, threshold: float, floor_us: float) -> bool:
    """Whether the verdict rule with this threshold and noise floor flags the result's measurement (the first one
    only: the confirming re-measurement is not in the report, so this can only over-count alarms)."""
    if not base_entry:
        return False
    return verdict.judge(result["samples_us"], base_entry["samples_us"], threshold, floor_us).kind is Kind.REGRESSION


def sweep(clean_runs: list[list[dict]], injected_runs: dict[float, list[list[dict]]],
          baseline_of: Callable[[dict], dict | None], thresholds: list[float], floors: list[float]) -> list[dict]:
    """False-alarm rate of the clean runs and detection rate per injected fraction and duration class, re-judged
    offline for each threshold and noise floor: how the defaults were chosen."""
    clean = [r for run in clean_runs for r in _judged(run)]
    slowed: dict[str, list[dict]] = {}  # "<fraction> <duration class>" -> results
    for fraction, runs in sorted(injected_runs.items()):
        for cls in (f"< {LONG_KERNEL_US:g} us", f">= {LONG_KERNEL_US:g} us"):
            rs = [r for run in runs for r in _judged(run) if duration_class(r) == cls]
            if rs:
                slowed[f"{fraction:g} {cls}"] = rs
    rows = []
    for threshold in thresholds:
        for floor in floors:
            alarms = sum(rejudged(r, baseline_of(r), threshold, floor) for r in clean)
            row = {"threshold": threshold, "floor us": floor, "false alarms": alarms,
                   "alarm rate": alarms / len(clean) if clean else None}
            for column, rs in slowed.items():
                row[column] = sum(rejudged(r, baseline_of(r), threshold, floor) for r in rs) / len(rs)
            rows.append(row)
    return rows
