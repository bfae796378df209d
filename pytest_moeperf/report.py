"""Reports of a run: the terminal table, the JSON file, and each result's JUnit properties."""
from __future__ import annotations

import json
from pathlib import Path

from tabulate import tabulate

COLUMNS = ("scenario", "op", "impl", "dtype", "M", "median us", "baseline us", "change %", "GB/s", "% ceiling",
           "verdict")


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def sort_worst_first(results: list[dict]) -> list[dict]:
    order = {"regression": 0, "regression (eager: advisory)": 1, "new": 3}
    return sorted(results, key=lambda r: (order.get(r["verdict"], 2), -(r.get("change_pct") or -1e9),
                                          r["scenario"], r["op"], r["impl"], r["dtype"], r["M"]))


def table(results: list[dict]) -> str:
    rows = [[r["scenario"], r["op"], r["impl"], r["dtype"], r["M"], _fmt(r["median_us"], ".2f"),
             _fmt(r.get("baseline_median_us"), ".2f"), _fmt(r.get("change_pct"), "+.1f"), _fmt(r.get("gbps"), ".0f"),
             _fmt(r.get("ceiling_pct"), ".0f"), r["verdict"] + (" (eager)" if r.get("mode") == "eager" else "")]
            for r in sort_worst_first(results)]
    return tabulate(rows, headers=COLUMNS, disable_numparse=True)


def junit_properties(result: dict) -> list[tuple[str, object]]:
    keys = ("median_us", "iqr_us", "min_us", "gbps", "ceiling_pct", "baseline_median_us", "change_pct", "verdict",
            "mode", "gpu")
    return [(f"moeperf_{k}", result[k]) for k in keys if result.get(k) is not None]


def write_json(path: str | Path, results: list[dict], environments: dict) -> None:
    data = {"environments": environments, "results": sort_worst_first(results)}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
