"""How good is the gate on this GPU? False alarms of clean reruns (A/A) and detection of injected slowdowns (A/B).

    python benchmarks/gate_experiment.py [scenarios/mixtral.yaml scenarios/deepseek-v3.yaml] [--record]
        [--baselines DIR] [--rounds 3] [--inject 0.05,0.1,0.2] [-k EXPR] [--out DIR]
        [--sweep-thresholds 0.03,0.04,0.05] [--sweep-floors 0.25,0.35,0.5] [--summarize] [--budget-s S]
        [--drop-impls NAMES] [--against REF]

Without --record it judges against the committed baselines (the "fresh machine" case: run it on a GPU that did not
record them; the live verdicts then allow the machine band, --moeperf-machine-band, while the offline sweep below
re-judges with each threshold alone). With --record it first records baselines into --baselines (a scratch folder,
default <out>/baselines), then judges against those (the "same machine" case). Each round runs the timing tests once
clean and once per injected fraction (--moeperf-inject-slowdown), each run a separate pytest process, and keeps their
JSON reports in --out; reports already there are reused, so a second call with the same --out adds rounds. With
--budget-s a run still going at the deadline is interrupted as Ctrl-C would and its finished tests are counted
(<name>.partial.json; the next call runs it again in full). After each round it prints and writes (summary.json)
the false alarms per clean run, the detection rate per injected size and kernel duration with the slowdown actually
injected, the spread of the clean median / baseline median ratio (raw and scaled by the copy ceilings of the two
runs), and the same reports re-judged offline for each threshold and noise floor of the sweep. --summarize only
reads --out. GPU only, except --summarize.

With --against REF every run is the in-process A/B gate (--moeperf-against REF; REF = HEAD for the A/A part): no
baselines are read or recorded, "baseline" in the tables is the reference's median of the same run, and the offline
re-judging against stored baselines is left out. Each round then first times the same tests plain (plain-<i>.json:
the stored-baseline path against an empty baseline folder, so that no verdict asks for a second measurement), and the
summary sets each round's clean A/B run's wall time against it (wall: seconds of the whole pytest process, kept in
walls.json for the runs that finished). Before its first run, each call that has runs to make times the tests plain
once more (warm-up.json, not counted), so that no counted run pays for compiling the kernels: on a fresh H100 the first
plain run took 84 s and the A/B run after it 77 s, where a warm plain run takes 50 s.
"""
from __future__ import annotations

import argparse
import itertools
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from tabulate import tabulate

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks import gate_stats
from pytest_moeperf.store import baselines, files  # noqa: E402

DEFAULT_SCENARIOS = ("scenarios/mixtral.yaml", "scenarios/deepseek-v3.yaml")


def floats(text: str) -> list[float]:
    return [float(f) for f in text.split(",") if f]


class OutOfTime(Exception):
    pass


MIN_RUN_S = 60  # no run starts with less time than this left before the deadline
INTERRUPT_GRACE_S = 60  # an interrupted run's time to write its report


class Clock:
    """Refuses to start a run with less than MIN_RUN_S left before the deadline, or any run when only summarizing;
    a run still going at the deadline is interrupted (left_s) and keeps what it finished (run_pytest)."""

    def __init__(self, budget_s: float | None, may_run: bool = True):
        self.deadline = budget_s and time.time() + budget_s
        self.may_run = may_run

    def check(self) -> None:
        if not self.may_run or self.deadline and time.time() + MIN_RUN_S > self.deadline:
            raise OutOfTime

    def left_s(self) -> float | None:
        return self.deadline and max(1.0, self.deadline - time.time())


def partial_path(json_path: Path) -> Path:
    return json_path.with_suffix(".partial.json")


def run_pytest(clock: Clock, scenarios, select: str, json_path: Path, *extra: str) -> tuple[list[dict], bool]:
    """(results, partial) of one pytest run, or of the report an earlier call left at json_path.

    A run still going at the deadline is interrupted as Ctrl-C would: pytest then writes the report of the tests it
    finished, kept as <name>.partial.json (partial = True; a later call runs it again in full, --summarize reads it).
    Only a run that wrote no report is lost."""
    partial = partial_path(json_path)
    if not json_path.exists():
        if not clock.may_run and partial.exists():
            return json.loads(partial.read_text())["results"], True
        clock.check()
        cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--moeperf", *scenarios, "-k",
               select, "--moeperf-json", str(json_path), *extra]
        started = time.time()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            stdout, stderr = proc.communicate(timeout=clock.left_s())
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
            try:
                proc.communicate(timeout=INTERRUPT_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
            print(f"  {' '.join(cmd[5:])}: interrupted at the deadline after {time.time() - started:.0f} s", flush=True)
            if not json_path.exists():
                raise OutOfTime from None
            json_path.replace(partial)
            results = json.loads(partial.read_text())["results"]
            print(f"  kept the {len(results)} tests it finished in {partial.name}", flush=True)
            return results, True
        seconds = time.time() - started
        print(f"  {' '.join(cmd[5:])}: exit {proc.returncode}, {seconds:.0f} s", flush=True)
        if not json_path.exists():
            sys.exit(f"no report from that run; its output ends:\n{stdout[-3000:]}\n{stderr[-2000:]}")
        out = json_path.parent
        files.write_json_atomic(out / WALLS, dict(walls(out), **{json_path.name: seconds}))
    partial.unlink(missing_ok=True)
    return json.loads(json_path.read_text())["results"], False


def round_files(i: int, fractions: list[float]) -> list[str]:
    return [f"clean-{i}.json"] + [f"inject-{f:g}-{i}.json" for f in fractions]


def plain_file(i: int) -> str:
    """--against: round i's plain run, timed for its wall time only."""
    return f"plain-{i}.json"


WARM_UP = "warm-up.json"  # --against: a plain run before the counted ones, again by every call that makes runs
WALLS = "walls.json"  # in --out: {report name: seconds its pytest process ran}, for the runs that finished


def walls(out: Path) -> dict[str, float]:
    path = out / WALLS
    return json.loads(path.read_text()) if path.exists() else {}


def wall_ratios(seconds: dict[str, float]) -> list[dict]:
    """Per round that has both: the plain run's wall time, the clean A/B run's, and their ratio."""
    rows = []
    for i in itertools.count(1):
        plain, ab = seconds.get(plain_file(i)), seconds.get(round_files(i, [])[0])
        if plain is None and ab is None:
            return rows
        if plain and ab:
            rows.append({"round": i, "plain s": round(plain, 1), "A/B s": round(ab, 1), "A/B / plain": ab / plain})


def baseline_lookup(root: Path):
    loaded: dict[Path, dict] = {}

    def baseline_of(result: dict) -> dict | None:
        path = baselines.path_for(root, result["gpu"], result["scenario"])
        if path not in loaded:
            loaded[path] = baselines.load(path)
        return loaded[path].get(result["key"])
    return baseline_of


def summarize(out: Path, clean, injected, baseline_of, args, source: str, partial: list[str]) -> None:
    drop = set(args.drop_impls.split(",")) if args.drop_impls else set()
    clean = [[r for r in run if r["impl"] not in drop] for run in clean]
    injected = {f: [[r for r in run if r["impl"] not in drop] for run in runs] for f, runs in injected.items()}
    stored = not args.against  # the spread and the sweep compare with stored baselines
    summary = {"false_alarms": gate_stats.false_alarms(clean),
               "detection": gate_stats.detection(injected, clean),
               "ratio_spread": gate_stats.ratio_spread(clean, baseline_of) if stored else [],
               "sweep": gate_stats.sweep(clean, injected, baseline_of, floats(args.sweep_thresholds),
                                         floats(args.sweep_floors)) if stored else [],
               "wall": wall_ratios(walls(out)) if args.against else [],
               "gpu_uuids": sorted({r["gpu_uuid"] for run in clean for r in run}),
               "scenarios": args.scenarios, "select": args.select, "dropped_impls": sorted(drop),
               "baselines": source, "partial_runs": partial}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"\n{len(clean)} rounds on {', '.join(summary['gpu_uuids'])}, baselines: {source}")
    if partial:
        print(f"interrupted at the deadline, counted with the tests they finished: {', '.join(partial)}")
    for name, rows in (("false alarms per clean run (A/A)", summary["false_alarms"]),
                       ("detection of injected slowdowns (A/B)", summary["detection"]),
                       ("clean median / baseline median", summary["ratio_spread"]),
                       ("re-judged offline (first measurement only) per threshold and noise floor", summary["sweep"]),
                       ("wall time of the A/B run against the plain run of the same tests", summary["wall"])):
        print(f"\n{name}")
        print(tabulate(rows, headers="keys", floatfmt=".4g"), flush=True)


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
    ap.add_argument("--sweep-thresholds", default="0.03,0.04,0.05")
    ap.add_argument("--sweep-floors", default="0.25,0.35,0.5")
    ap.add_argument("--summarize", action="store_true", help="only summarize the reports already in --out")
    ap.add_argument("--drop-impls", help="leave these implementations' results out of the summary (comma-separated; "
                                         "e.g. ones whose baselines are known to be stale)")
    ap.add_argument("--budget-s", type=float, help="stop after this many seconds: a run still going is interrupted "
                                                   "and its finished tests are counted")
    ap.add_argument("--against", metavar="REF", help="run the in-process A/B gate against REF (e.g. HEAD for A/A)")
    args = ap.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    args.select = args.select if "timing" in args.select else f"timing and ({args.select})"
    extra, folder, source = [], ROOT / "baselines", "committed"
    plain = ["--moeperf-baselines", str(out / "no-baselines")]  # a folder with no baselines: no verdict confirms
    if args.against:
        if args.record:
            sys.exit("--against needs no baselines: leave out --record")
        extra, source = ["--moeperf-against", args.against], f"A/B against {args.against}"
    elif args.record or args.baselines:
        folder = (args.baselines or out / "baselines").resolve()
        extra, source = ["--moeperf-baselines", str(folder)], "recorded here" if args.record else str(folder)
    baseline_of = baseline_lookup(folder)
    fractions = floats(args.inject)
    clock = Clock(args.budget_s, may_run=not args.summarize)
    clean, injected, partial = [], {f: [] for f in fractions}, []

    def run(name: str, into: list, *more: str, base: list[str] | None = None) -> None:
        """Runs (or reads) one report into `into`; one interrupted at the deadline is counted, then ends the rounds.
        `base`: the arguments of the kind of run (default: the experiment's)."""
        results, cut = run_pytest(clock, args.scenarios, args.select, out / name, *(extra if base is None else base),
                                  *more)
        into.append(results)
        if cut:
            partial.append(f"{name} ({len(results)} tests)")
            if not args.summarize:
                raise OutOfTime

    try:
        if args.record and not args.summarize:
            print("recording baselines", flush=True)
            run("record.json", [], "--update-baselines")
        counted = [name for i in range(1, args.rounds + 1) for name in [plain_file(i), *round_files(i, fractions)]]
        if args.against and not args.summarize and not all((out / name).exists() for name in counted):
            (out / WARM_UP).unlink(missing_ok=True)  # compiles every kernel before a counted run (module docstring)
            run(WARM_UP, [], base=plain)
        for i in itertools.count(1) if args.summarize else range(1, args.rounds + 1):
            if not args.summarize:
                print(f"round {i}", flush=True)
            names = round_files(i, fractions)
            if args.against and not args.summarize:  # only its wall time is used (walls.json)
                run(plain_file(i), [], base=plain)
            run(names[0], clean)
            for f, name in zip(fractions, names[1:]):  # each run counted as it comes: a cut round still counts
                run(name, injected[f], "--moeperf-inject-slowdown", str(f))
            if not args.summarize:
                summarize(out, clean, injected, baseline_of, args, source, partial)
    except OutOfTime:
        if not args.summarize:
            print(f"out of time (--budget-s {args.budget_s:g}): the runs that finished are summarized; run again "
                  f"with the same --out to go on", flush=True)
        summarize(out, clean, injected, baseline_of, args, source, partial)  # --summarize always ends here
    return 0


if __name__ == "__main__":
    sys.exit(main())
