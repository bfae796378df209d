"""The gate experiment's arithmetic (pytest_moeperf/gate_stats.py) on hand-made results."""
import importlib.util
import json
import types
from pathlib import Path

import pytest

from benchmarks import gate_stats


def result(verdict, median, base, key="k", ceiling=2000.0):
    return {"verdict": verdict, "median_us": median, "baseline_median_us": base, "scenario": "s", "key": key,
            "ceiling_gbps": ceiling, "samples_us": [median * (1 + i / 1000) for i in range(-15, 15)]}


def baseline(median, ceiling=2000.0):
    return {"median_us": median, "samples_us": [median * (1 + i / 1000) for i in range(-15, 15)], "gbps": 100.0,
            "ceiling_pct": 100 * 100.0 / ceiling}


def test_only_counted_regressions_are_flagged():
    assert gate_stats.flagged(result("regression", 1, 1))
    assert gate_stats.flagged(result("regression (injected +10%)", 1, 1))
    assert not gate_stats.flagged(result("regression (eager: advisory)", 1, 1))
    assert not gate_stats.flagged(result("regression (not counted: GPU throttled (hardware slowdown))", 1, 1))
    assert not gate_stats.flagged(result("pass", 1, 1))


def test_false_alarms_detection_and_spread():
    clean = [[result("pass", 10.0, 10.0, "a"), result("regression", 3.3, 3.0, "b"), result("new", 1, None, "c")],
             [result("pass", 20.2, 20.0, "d", ceiling=2020.0), result("pass", 2.9, 3.0, "e")]]
    alarms = gate_stats.false_alarms(clean)
    assert [(a["tests"], a["flagged"]) for a in alarms] == [(2, 1), (2, 0)]
    assert alarms[0]["rate"] == 0.5

    injected = {0.1: [[result("regression (injected +10%)", 11.0, 10.0, "a"), result("pass", 3.1, 3.0, "b")], []],
                0.05: [[result("pass", 10.4, 10.0, "a")],
                       [result("regression (injected +5%)", 21.0, 20.0, "d"), result("pass", 3.0, 3.0, "x")]]}
    rows = gate_stats.detection(injected, clean)
    assert [(r["injected"], r["kernels"], r["tests"], r["flagged"]) for r in rows] == [
        (0.05, "< 10 us", 1, 0), (0.05, ">= 10 us", 2, 1), (0.1, "< 10 us", 1, 0), (0.1, ">= 10 us", 1, 1)]
    # realized: slowed median over the clean median of the same round and test; none for a test without a clean one
    long5 = rows[1]
    assert long5["realized median"] == pytest.approx((0.04 + 21.0 / 20.2 - 1) / 2)
    assert rows[0]["realized median"] is None
    assert rows[3]["realized median"] == pytest.approx(0.1)

    spread = {(r["ratio"], r["kernels"]): r for r in gate_stats.ratio_spread(clean, lambda r: baseline(1.0))}
    assert spread[("median / baseline", ">= 10 us")]["median"] == pytest.approx(1.005)
    assert spread[("median / baseline", ">= 10 us")]["max |r - 1|"] == pytest.approx(0.01)
    # d ran with a 1% higher copy ceiling than its baseline's: scaled, its ratio is 1.01 * 1.01
    assert spread[("x copy-ceiling ratio", ">= 10 us")]["max |r - 1|"] == pytest.approx(1.01 * 1.01 - 1)
    assert spread[("median / baseline", "< 10 us")]["tests"] == 2


def test_the_sweep_rejudges_with_each_threshold_and_floor():
    bases = {"a": baseline(10.0), "b": baseline(2.0)}
    clean = [[result("pass", 10.3, 10.0, "a"), result("pass", 2.1, 2.0, "b")]]
    injected = {0.05: [[result("pass", 10.5, 10.0, "a"), result("pass", 2.2, 2.0, "b")]]}
    rows = gate_stats.sweep(clean, injected, lambda r: bases[r["key"]], [0.02, 0.04, 0.06], [0.0, 0.3])
    got = {(r["threshold"], r["floor us"]): r for r in rows}
    # clean +3% on 10 us and +5% on 2 us; injected +5% and +10%
    assert got[(0.02, 0.0)]["false alarms"] == 2 and got[(0.02, 0.0)]["alarm rate"] == 1.0
    assert got[(0.04, 0.0)]["false alarms"] == 1
    assert got[(0.04, 0.3)]["false alarms"] == 0  # 0.3 us is 15% of 2 us
    assert got[(0.04, 0.3)]["0.05 >= 10 us"] == 1.0 and got[(0.04, 0.3)]["0.05 < 10 us"] == 0.0
    assert got[(0.06, 0.0)]["0.05 >= 10 us"] == 0.0 and got[(0.06, 0.0)]["false alarms"] == 0


def _experiment():
    """benchmarks/gate_experiment.py loaded as a module."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gate_experiment.py"
    spec = importlib.util.spec_from_file_location("gate_experiment", script)
    experiment = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(experiment)
    return experiment


def _experiment_with_reports(folder: Path):
    """benchmarks/gate_experiment.py loaded as a module, with two rounds' reports in `folder` (the second cut before
    its injected run) and baselines for them."""
    experiment = _experiment()

    def report(name, rows):
        full = [dict(result(v, m, b, key), impl=impl, gpu="G", gpu_uuid="u1") for v, m, b, key, impl in rows]
        (folder / name).write_text(json.dumps({"results": full}))

    report("clean-1.json", [("pass", 20.0, 20.0, "a", "mine"), ("regression", 5.0, 4.0, "b", "stale")])
    report("inject-0.1-1.json", [("regression (injected +10%)", 22.0, 20.0, "a", "mine"),
                                 ("pass", 5.5, 4.0, "b", "stale")])
    report("clean-2.json", [("regression", 20.0, 19.0, "a", "mine")])
    bases = folder / "baselines" / "G"
    bases.mkdir(parents=True)
    (bases / "s.json").write_text(json.dumps({"schema": 1, "entries": {"a": baseline(20.0), "b": baseline(4.0)}}))
    return experiment


def test_the_experiment_summarizes_reports_already_on_disk(tmp_path):
    """--summarize reads every run that finished (a cut round's too), leaves out --drop-impls, writes summary."""
    experiment = _experiment_with_reports(tmp_path)
    assert experiment.main(["--summarize", "--out", str(tmp_path), "--baselines", str(tmp_path / "baselines"),
                            "--inject", "0.1", "--drop-impls", "stale"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["false_alarms"] == [{"run": 1, "tests": 1, "flagged": 0, "excused": 0, "rate": 0.0},
                                       {"run": 2, "tests": 1, "flagged": 1, "excused": 0, "rate": 1.0}]
    assert [(d["kernels"], d["tests"], d["flagged"]) for d in summary["detection"]] == [(">= 10 us", 1, 1)]
    assert summary["dropped_impls"] == ["stale"] and summary["gpu_uuids"] == ["u1"]


def _outliving_runs(experiment, monkeypatch, report_rows):
    """subprocess.Popen replaced by pytest runs that outlive any budget: communicate() times out (the timeouts asked
    are returned) until the run is sent SIGINT; then, like pytest on Ctrl-C, it writes the report of the tests it
    finished (report_rows, a JSON "results" list; None: it had finished none and writes nothing)."""
    asked = []

    class Outliving:
        returncode = 2

        def __init__(self, cmd, **kw):
            self.cmd, self.interrupted = cmd, False

        def communicate(self, timeout=None):
            if not self.interrupted:
                asked.append(timeout)
                raise experiment.subprocess.TimeoutExpired(self.cmd, timeout)
            if report_rows is not None:
                Path(self.cmd[self.cmd.index("--moeperf-json") + 1]).write_text(json.dumps({"results": report_rows}))
            return "", ""

        def send_signal(self, sig):
            assert sig == experiment.signal.SIGINT
            self.interrupted = True

    monkeypatch.setattr(experiment.subprocess, "Popen", Outliving)
    return asked


def test_the_experiment_stops_a_run_still_going_at_its_deadline_and_summarizes_what_finished(tmp_path, monkeypatch):
    experiment = _experiment_with_reports(tmp_path)
    (tmp_path / "clean-2.json").unlink()
    asked = _outliving_runs(experiment, monkeypatch, None)  # round 2's clean run outlives the budget, reports none
    assert experiment.main(["--out", str(tmp_path), "--baselines", str(tmp_path / "baselines"), "--inject", "0.1",
                            "--rounds", "2", "--budget-s", "120", "--drop-impls", "stale"]) == 0
    assert len(asked) == 1 and 110 < asked[0] <= 120  # stopped at the deadline, not at a limit of its own
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [r["run"] for r in summary["false_alarms"]] == [1] and summary["detection"][0]["tests"] == 1
    assert summary["partial_runs"] == []
    assert not (tmp_path / "clean-2.json").exists() and not (tmp_path / "clean-2.partial.json").exists()


def test_a_run_interrupted_at_the_deadline_counts_the_tests_it_finished(tmp_path, monkeypatch):
    experiment = _experiment_with_reports(tmp_path)
    (tmp_path / "clean-2.json").unlink()
    finished = [dict(result("regression", 20.0, 19.0, "a"), impl="mine", gpu="G", gpu_uuid="u1")]
    _outliving_runs(experiment, monkeypatch, finished)
    args = ["--out", str(tmp_path), "--baselines", str(tmp_path / "baselines"), "--inject", "0.1", "--drop-impls",
            "stale"]
    assert experiment.main(args + ["--rounds", "2", "--budget-s", "120"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [(r["run"], r["tests"], r["flagged"]) for r in summary["false_alarms"]] == [(1, 1, 0), (2, 1, 1)]
    assert summary["partial_runs"] == ["clean-2.json (1 tests)"]
    assert (tmp_path / "clean-2.partial.json").exists() and not (tmp_path / "clean-2.json").exists()
    assert experiment.main(args + ["--summarize"]) == 0  # read back as partial; a later run would redo it
    assert json.loads((tmp_path / "summary.json").read_text())["partial_runs"] == ["clean-2.json (1 tests)"]


def test_no_run_starts_too_near_the_deadline(tmp_path, monkeypatch):
    experiment = _experiment_with_reports(tmp_path)
    (tmp_path / "clean-2.json").unlink()
    asked = _outliving_runs(experiment, monkeypatch, None)
    assert experiment.main(["--out", str(tmp_path), "--baselines", str(tmp_path / "baselines"), "--inject", "0.1",
                            "--rounds", "2", "--budget-s", str(experiment.MIN_RUN_S - 1)]) == 0
    assert asked == []


def test_an_ab_experiment_times_each_round_plain_too_and_sets_the_wall_times_side_by_side(tmp_path, monkeypatch):
    """With --against each round runs the tests plain first (against a folder with no baselines, so that nothing is
    confirmed) and then A/B, after one plain warm-up run per call that compiles the kernels; each finished run's wall
    time is kept in walls.json and the summary gives A/B / plain of the counted runs."""
    experiment = _experiment()
    commands, now = [], [1000.0]
    seconds = {"plain": 40.0, "against": 70.0}

    class Finishing:
        returncode = 0

        def __init__(self, cmd, **kw):
            self.cmd = cmd
            commands.append(cmd)

        def communicate(self, timeout=None):
            now[0] += seconds["against" if "--moeperf-against" in self.cmd else "plain"]
            row = dict(result("pass", 2.0, 2.0, "a"), impl="mine", gpu="G", gpu_uuid="u1")
            Path(self.cmd[self.cmd.index("--moeperf-json") + 1]).write_text(json.dumps({"results": [row]}))
            return "", ""

    monkeypatch.setattr(experiment.subprocess, "Popen", Finishing)
    monkeypatch.setattr(experiment, "time", types.SimpleNamespace(time=lambda: now[0]))  # this module's clock only
    def reports() -> list[str]:
        return [c[c.index("--moeperf-json") + 1].rsplit("/", 1)[1] for c in commands]

    args = ["--out", str(tmp_path), "--against", "HEAD", "--inject", ""]
    assert experiment.main(args + ["--rounds", "2"]) == 0
    plain_args = ["--moeperf-baselines", str(tmp_path / "no-baselines")]
    assert reports() == ["warm-up.json", "plain-1.json", "clean-1.json", "plain-2.json", "clean-2.json"]
    plain, ab = [commands[i] for i in (0, 1, 3)], commands[2::2]
    assert all(" ".join(plain_args) in " ".join(c) and "--moeperf-against" not in c for c in plain)
    assert all("--moeperf-baselines" not in c and c[-2:] == ["--moeperf-against", "HEAD"] for c in ab)
    assert json.loads((tmp_path / "walls.json").read_text()) == {
        "warm-up.json": 40.0, "plain-1.json": 40.0, "clean-1.json": 70.0, "plain-2.json": 40.0, "clean-2.json": 70.0}
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["wall"] == [{"round": i, "plain s": 40.0, "A/B s": 70.0, "A/B / plain": 1.75} for i in (1, 2)]
    assert [r["tests"] for r in summary["false_alarms"]] == [1, 1]  # the plain runs are not counted as A/A ones
    commands.clear()
    assert experiment.main(args + ["--summarize"]) == 0  # reads the reports and walls.json, runs nothing
    assert commands == [] and json.loads((tmp_path / "summary.json").read_text())["wall"] == summary["wall"]
    assert experiment.main(args + ["--rounds", "2"]) == 0  # every report is there: nothing to warm up for
    assert commands == []
    assert experiment.main(args + ["--rounds", "3"]) == 0  # a third round: warm-up, then its runs only
    assert reports() == ["warm-up.json", "plain-3.json", "clean-3.json"]
