"""Reports of a run: the terminal table, the JSON file, the markdown summary and the tuning table."""
from __future__ import annotations

import datetime
import json
import os
from collections import Counter
from pathlib import Path

from tabulate import tabulate

from pytest_moeperf.gate.result import TimingResult
from pytest_moeperf.gate.verdict import Kind

COLUMNS = ("scenario", "op", "impl", "dtype", "M", "median us", "baseline us", "change %", "GB/s", "% ceiling",
           "verdict")


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def _rank(r: TimingResult) -> int:
    """Counted regressions first, then regressions not counted, passes and improvements, new tests last."""
    if r.outcome.counted:
        return 0
    if r.outcome.uncounted_regression:
        return 1
    return 3 if r.outcome.kind is Kind.NEW else 2


def sort_worst_first(results: list[TimingResult]) -> list[TimingResult]:
    return sorted(results, key=lambda r: (_rank(r), -(r.change_pct if r.change_pct is not None else -1e9),
                                          r.scenario, r.op, r.impl, r.dtype, r.M))


def table(results: list[TimingResult]) -> str:
    rows = [[r.scenario, r.op, r.impl, r.dtype, r.M, _fmt(r.median_us, ".2f"), _fmt(r.baseline_median_us, ".2f"),
             _fmt(r.change_pct, "+.1f"), _fmt(r.gbps, ".0f"), _fmt(r.ceiling_pct, ".0f"),
             r.verdict + (" (eager)" if r.mode == "eager" else "")]
            for r in sort_worst_first(results)]
    return tabulate(rows, headers=COLUMNS, disable_numparse=True)


def tuning_table(tuned: list[dict], tablefmt: str = "simple") -> str:
    """One row per tuning test: the best config against the default, both timed as the timing tests time; the paired
    change is the median ratio of back-to-back timings, and what was written: the config, or the default kept."""
    def configs(r):  # "150 of 1249 (2 failed)": how many were timed, of how large a space
        drawn = f" of {r['space']}" if r.get("space", r["candidates"]) != r["candidates"] else ""
        return f"{r['candidates']}{drawn}" + (f" ({len(r['failed'])} failed)" if r["failed"] else "")

    def written(r):
        config = " ".join(f"{k}={v}" for k, v in sorted(r["config"].items()))
        return config if r["kept"] else f"default kept (best found: {config})"

    rows = [[r["scenario"], r["key"], configs(r),
             _fmt(r["default_us"], ".2f"), _fmt(r["median_us"], ".2f"), _fmt(100 * (r["ratio"] - 1), "+.1f"),
             written(r)]
            for r in sorted(tuned, key=lambda r: (r["scenario"], r["key"]))]
    return tabulate(rows, headers=["scenario", "test", "configs", "default us", "best us", "paired change %",
                                   "written"], disable_numparse=True, tablefmt=tablefmt)


def write_json(path: str | Path, results: list[TimingResult], environments: dict, tuned: list[dict] = ()) -> None:
    data = {"environments": environments, "results": [r.to_json() for r in sort_worst_first(results)]}
    if tuned:
        data["tuned"] = sorted(tuned, key=lambda r: (r["scenario"], r["key"]))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def markdown(results: list[TimingResult], environments: dict, tuned: list[dict] = (), notes: list[str] = ()) -> str:
    """A summary for people: counts, the environment, regressions first, then one table per scenario; the tuning
    table of a --moeperf-tune run."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    counts = Counter(r.verdict for r in results)
    lines = [f"## pytest-moeperf {'tuning' if tuned and not results else 'timing'} ({now})", ""]
    for slug, e in sorted(environments.items()):
        lines.append(f"- GPU `{slug}`: {e.get('device', '?')}, {e.get('sm_count', '?')} SMs, driver "
                     f"{e.get('driver_version', '?')}, CUDA {e.get('cuda', '?')}, torch {e.get('torch', '?')}, triton "
                     f"{e.get('triton', '?')}, SM clock {e.get('clocks.sm', '?')} / {e.get('clocks.max.sm', '?')} MHz")
        if e.get("copy_ceiling_gbps"):
            lines.append(f"- `% ceiling` is of a {e['copy_ceiling_gbps']:.0f} GB/s copy ceiling: "
                         f"{e.get('copy_ceiling_method', '?')}")
    lines += [f"- Note: {note}" for note in notes]
    if tuned:
        lines += [f"- {len(tuned)} tuning tests", "", tuning_table(tuned, "github"), ""]
    if not results:
        return "\n".join(lines)
    lines.append("- " + ", ".join(f"{n} {v}" for v, n in sorted(counts.items())) + f" ({len(results)} timing tests)")
    lines.append("")
    header = ("| scenario | op | impl | dtype | M | median us | baseline us | change % | GB/s | % ceiling | TFLOP/s | "
              "% matmul | rel. error | verdict |")
    rule = "|" + "---|" * 14

    def row(r: TimingResult):
        return (f"| {r.scenario} | {r.op} | {r.impl} | {r.dtype} | {r.M} | {_fmt(r.median_us, '.2f')}"
                f" | {_fmt(r.baseline_median_us, '.2f')} | {_fmt(r.change_pct, '+.1f')} | "
                f"{_fmt(r.gbps, '.0f')} | {_fmt(r.ceiling_pct, '.0f')} | "
                f"{_fmt(r.tflops, '.1f')} | {_fmt(r.matmul_pct, '.0f')} | "
                f"{_fmt(r.relative_error, '.1e')} | {r.verdict} |")

    bad = [r for r in sort_worst_first(results) if r.outcome.counted]
    if bad:
        lines += ["### Regressions", "", header, rule] + [row(r) for r in bad] + [""]
    for scenario in sorted({r.scenario for r in results}):
        mine = sorted((r for r in results if r.scenario == scenario), key=lambda r: (r.op, r.impl, r.dtype, r.M))
        lines += [f"### {scenario}", "", header, rule] + [row(r) for r in mine] + [""]
    return "\n".join(lines)


def write_markdown(path: str | Path | None, results: list[TimingResult], environments: dict, tuned: list[dict] = (),
                   notes: list[str] = ()) -> None:
    """Write the summary to `path` and append it to $GITHUB_STEP_SUMMARY when that is set."""
    text = markdown(results, environments, tuned, notes)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text + "\n")
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a") as fh:
            fh.write(text + "\n")
