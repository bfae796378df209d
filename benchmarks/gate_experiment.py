"""How good is the gate on this GPU? False alarms of clean reruns (A/A) and detection of injected slowdowns (A/B).

    python benchmarks/gate_experiment.py [scenarios/mixtral.yaml scenarios/deepseek-v3.yaml] [--record]
        [--baselines DIR] [--rounds 3] [--inject 0.05,0.1,0.2] [-k EXPR] [--out DIR]

Without --record it judges against the committed baselines (the "fresh machine" case: run it on a GPU that did not
record them). With --record it first records baselines into --baselines (a scratch folder, default
<out>/baselines), then judges against those (the "same machine" case). Each round runs the timing tests once clean
and once per injected fraction (--moeperf-inject-slowdown), each run a separate pytest process, and keeps their JSON
reports in --out. Prints false alarms per clean run, detection rate per injected size and kernel duration, and the
spread of the clean median / baseline median ratio; writes summary.json. GPU only.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from tabulate import tabulate

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from pytest_moeperf import gate_stats  # noqa: E402

DEFAULT_SCENARIOS = ("scenarios/mixtral.yaml", "scenarios/deepseek-v3.yaml")


def run_pytest(scenarios, select: str, json_path: Path, *extra: str) -> list[dict]:
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--moeperf", *scenarios, "-k", select,
           "--moeperf-json", str(json_path), *extra]
    started = time.time()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    print(f"  {' '.join(cmd[5:])}: exit {done.returncode}, {time.time() - started:.0f} s", flush=True)
    if not json_path.exists():
        sys.exit(f"no report from that run; its output ends:\n{done.stdout[-3000:]}\n{done.stderr[-2000:]}")
    return json.loads(json_path.read_text())["results"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("scenarios", nargs="*", default=list(DEFAULT_SCENARIOS))
    ap.add_argument("--record", action="store_true", help="record baselines first, into --baselines")
    ap.add_argument("--baselines", type=Path, help="baseline folder (default: the committed one, or "
                                                   "<out>/baselines with --record)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--inject", default="0.05,0.1,0.2", help="slowdown fractions to inject")
    ap.add_argument("-k", dest="select", default="timing", help="pytest -k expression (default: every timing test)")
    ap.add_argument("--out", type=Path, default=Path("gate-experiment"))
    args = ap.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    select = args.select if "timing" in args.select else f"timing and ({args.select})"
    extra = []
    if args.record or args.baselines:
        folder = (args.baselines or out / "baselines").resolve()
        extra = ["--moeperf-baselines", str(folder)]
    if args.record:
        print("recording baselines", flush=True)
        run_pytest(args.scenarios, select, out / "record.json", "--update-baselines", *extra)
    fractions = [float(f) for f in args.inject.split(",") if f]
    clean, injected = [], {f: [] for f in fractions}
    for i in range(1, args.rounds + 1):
        print(f"round {i}", flush=True)
        clean.append(run_pytest(args.scenarios, select, out / f"clean-{i}.json", *extra))
        for f in fractions:
            injected[f].append(run_pytest(args.scenarios, select, out / f"inject-{f:g}-{i}.json", *extra,
                                          "--moeperf-inject-slowdown", str(f)))
    summary = {"false_alarms": gate_stats.false_alarms(clean), "detection": gate_stats.detection(injected),
               "ratio_spread": gate_stats.ratio_spread(clean), "scenarios": args.scenarios,
               "select": select, "baselines": "recorded here" if args.record else (extra[1] if extra else
                                                                                   "committed")}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    for name, rows in (("false alarms per clean run (A/A)", summary["false_alarms"]),
                       ("detection of injected slowdowns (A/B)", summary["detection"]),
                       ("clean median / baseline median", summary["ratio_spread"])):
        print(f"\n{name}")
        print(tabulate(rows, headers="keys", floatfmt=".4g"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
