"""Judge one recording of baselines against another, as the plugin judges a run against baselines of another GPU.

    python benchmarks/baseline_drift.py OLD_ROOT NEW_ROOT [--gpu NVIDIA_H200] [--skip REGEX] [--json OUT]

Every entry present in both OLD_ROOT/<gpu>/<scenario>.json and NEW_ROOT/<gpu>/<scenario>.json is judged with
gate.verdict.judge: NEW's samples against OLD's, with the scenario's threshold, the default noise floor and the
machine band when the two were timed on different GPUs. Two recordings of the same code on two machines, each alone
on its GPU, so show what `pytest --moeperf` would flag on the second machine against the first's committed files
(false alarms), without timing anything again; each test's confirmation on fresh inputs is not replayed, so this
counts at least as many alarms as the plugin would. --skip leaves out entries whose code path changed in between.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import gate_stats  # noqa: E402
from pytest_moeperf.gate import verdict  # noqa: E402
from pytest_moeperf.gate.verdict import Kind  # noqa: E402
from pytest_moeperf.spec import scenario as scenario_spec  # noqa: E402
from pytest_moeperf.spec.settings import DEFAULT_MACHINE_BAND, DEFAULT_NOISE_FLOOR_US  # noqa: E402
from pytest_moeperf.store import baselines  # noqa: E402


def judged(old_root: Path, new_root: Path, gpu: str, skip: re.Pattern | None, scenarios_dir: Path) -> list[dict]:
    rows = []
    for new_path in sorted((new_root / gpu).glob("*.json")):
        old_path = old_root / gpu / new_path.name
        if not old_path.exists():
            continue
        old, new = baselines.load_file(old_path), baselines.load_file(new_path)
        threshold = scenario_spec.load(scenarios_dir / f"{new_path.stem}.yaml").threshold
        for key in sorted(set(old.entries) & set(new.entries)):
            if skip and skip.search(f"{new_path.stem}::{key}"):
                continue
            old_env, new_uuid = old.environment_of(key), str(new.environment_of(key).get("uuid") or "")
            band = None if baselines.timed_on(old_env, new_uuid) else DEFAULT_MACHINE_BAND
            v = verdict.judge(new.entries[key]["samples_us"], old.entries[key]["samples_us"], threshold,
                              DEFAULT_NOISE_FLOOR_US, band)
            rows.append(dict(scenario=new_path.stem, key=key, op=key.split("[")[0], kind=v.kind.value,
                             ratio=v.ratio, band=v.band, old_us=old.entries[key]["median_us"],
                             new_us=new.entries[key]["median_us"], old_uuid=old_env.get("uuid"),
                             new_uuid=new_uuid))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("old", type=Path, help="baseline root of the first recording")
    ap.add_argument("new", type=Path, help="baseline root of the second recording")
    ap.add_argument("--gpu", default="NVIDIA_H200", help="GPU folder (default: NVIDIA_H200)")
    ap.add_argument("--skip", help="regex over 'scenario::test key' of entries to leave out")
    ap.add_argument("--scenarios", type=Path, default=Path("scenarios"), help="where the scenario files are")
    ap.add_argument("--json", type=Path, help="write every judged entry here")
    args = ap.parse_args(argv)
    try:
        skip = re.compile(args.skip) if args.skip else None
    except re.error as e:
        ap.error(f"--skip: not a regular expression: {e}")
    try:
        rows = judged(args.old, args.new, args.gpu, skip, args.scenarios)
    except (scenario_spec.ScenarioError, baselines.BaselineError) as e:
        print(e, file=sys.stderr)
        return 2
    if not rows:
        print(f"no entry is in both {args.old / args.gpu} and {args.new / args.gpu}", file=sys.stderr)
        return 2
    counts = Counter((r["op"], r["kind"]) for r in rows)
    ops = sorted({r["op"] for r in rows})
    kinds = [k.value for k in (Kind.PASS, Kind.REGRESSION, Kind.IMPROVED)]
    table = [[op] + [counts[(op, k)] for k in kinds] for op in ops]
    table.append(["all"] + [sum(counts[(op, k)] for op in ops) for k in kinds])
    print(tabulate(table, headers=["op"] + kinds))
    spread = ", ".join(f"{name} {'-' if x is None else f'{x:.3f}'}"
                       for name, x in gate_stats.quantiles([r["ratio"] for r in rows]).items())
    print(f"\n{len(rows)} entries; new / old median ratio {spread}")
    flagged = [r for r in rows if r["kind"] == Kind.REGRESSION.value]
    if flagged:
        print("\nflagged:")
        print(tabulate([[r["scenario"], r["key"], r["old_us"], r["new_us"], r["ratio"], r["band"]] for r in flagged],
                       headers=["scenario", "test", "old us", "new us", "ratio", "band"], floatfmt=".3f"))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
