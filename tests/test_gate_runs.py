"""Baselines and verdicts end to end (a fake timer, tests/fake_gpu.py): recording, merging, regressions, confirmation,
advisory and excused results, injected slowdowns, fused_experts."""
import json

import pytest

from pytest_moeperf.oracle import reference_experts
from tests.fake_gpu import FAKE_TIMER, GEMM, SMALL, baseline_file, run_timed


def test_update_baselines_respects_k_and_merges(env):
    env.makefile(".yaml", small=SMALL)
    env.makeconftest(FAKE_TIMER)
    run_timed(env, "--update-baselines", "-k", "timing and permute").assert_outcomes(passed=6)
    keys = set(json.loads(baseline_file(env).read_text())["entries"])
    assert keys == {f"permute[{i}-bf16-M{m}]" for i in ("torch", "customized", "standard") for m in (1, 3)}
    run_timed(env, "--update-baselines", "-k", "timing and align and M1").assert_outcomes(passed=2)
    data = json.loads(baseline_file(env).read_text())
    assert set(data["entries"]) == keys | {"align[torch-bf16-M1]", "align[standard-bf16-M1]"}
    assert set(data["environment"]) == {"device", "sources", "uuid"} and data["schema"] == 1
    assert data["environment"]["device"] == "fake" and len(data["environment"]["sources"]) == 16
    entry = data["entries"]["permute[customized-bf16-M1]"]
    assert len(entry["samples_us"]) == 20 and abs(entry["median_us"] - 10) < 0.5
    text = baseline_file(env).read_text()
    assert text == json.dumps(data, indent=1, sort_keys=True) + "\n", "sorted keys, one stable layout"


def test_verdicts_against_recorded_baselines(env):
    env.makefile(".yaml", small=SMALL)
    env.makeconftest(FAKE_TIMER)
    run_timed(env, "--update-baselines", "-k", "timing").assert_outcomes(passed=10)
    run_timed(env, "-k", "timing").assert_outcomes(passed=10)  # clean rerun
    slow = run_timed(env, "-k", "timing", factor="1.3")
    slow.assert_outcomes(failed=10)
    slow.stdout.fnmatch_lines(["*slower than the FAKE_GPU baseline, confirmed by a second measurement*+30.0%*",
                               "*pytest-moeperf timing*", "*regression*"])
    fast = run_timed(env, "-k", "timing", "--moeperf-json", "out.json", "--junitxml", "junit.xml", factor="0.7")
    fast.assert_outcomes(passed=10)
    results = json.loads((env.path / "out.json").read_text())["results"]
    assert {r["verdict"] for r in results} == {"improved"} and len(results) == 10
    assert all(abs(r["change_pct"] + 30) < 2 for r in results)
    junit = (env.path / "junit.xml").read_text()
    assert 'name="moeperf_verdict" value="improved"' in junit and 'name="moeperf_median_us"' in junit
    # A threshold above the slowdown lets it pass, and so does an absolute floor above it (3 us on 10 us).
    run_timed(env, "-k", "timing", "--moeperf-threshold", "0.5", factor="1.3").assert_outcomes(passed=10)
    run_timed(env, "-k", "timing", "--moeperf-noise-floor-us", "4", factor="1.3").assert_outcomes(passed=10)


def test_a_baseline_from_another_environment_or_older_kernels_is_named_in_the_summary(env, monkeypatch):
    env.makepyfile(mine="""
from moeperf_kernels import moe_permute
def impls():
    return {"permute": moe_permute}
""")
    env.makefile(".yaml", small=SMALL.replace("impls: [torch, customized, standard]", "impls: ['mine:impls']"))
    env.makeconftest(FAKE_TIMER)
    monkeypatch.setenv("FAKE_ENV", json.dumps({"driver_version": "580.1", "torch": "2.11.0", "uuid": "GPU-aaa"}))
    run_timed(env, "--update-baselines", "-k", "timing").assert_outcomes(passed=2)
    recorded = json.loads(baseline_file(env).read_text())["environment"]
    assert recorded["driver_version"] == "580.1" and len(recorded["sources"]) == 16
    same = run_timed(env, "-k", "timing", "--moeperf-markdown", "same.md")
    assert "differ from this run" not in same.stdout.str() and "Note:" not in (env.path / "same.md").read_text()
    # another machine with another driver and torch: one line says so, the tests still pass
    monkeypatch.setenv("FAKE_ENV", json.dumps({"driver_version": "590.2", "torch": "2.13.0", "uuid": "GPU-bbb"}))
    moved = run_timed(env, "-k", "timing", "--moeperf-markdown", "moved.md")
    moved.assert_outcomes(passed=2)
    line = "baselines of small (FAKE_GPU) differ from this run: GPU GPU-aaa -> GPU-bbb; driver 580.1 -> 590.2; " \
           "torch 2.11.0 -> 2.13.0"
    moved.stdout.fnmatch_lines([f"pytest-moeperf: {line}"])
    assert f"- Note: {line}" in (env.path / "moved.md").read_text()
    # the implementation's source changes: the baseline is older than the kernels it now times
    monkeypatch.setenv("FAKE_ENV", json.dumps({"driver_version": "580.1", "torch": "2.11.0", "uuid": "GPU-aaa"}))
    (env.path / "mine.py").write_text((env.path / "mine.py").read_text() + "# changed\n")
    changed = run_timed(env, "-k", "timing")
    changed.assert_outcomes(passed=2)
    changed.stdout.fnmatch_lines(["pytest-moeperf: baselines of small (FAKE_GPU) differ from this run: kernels "
                                  "changed since it was recorded"])
    # one entry re-recorded on a newer torch: the other keeps its own environment, and the line counts it
    monkeypatch.setenv("FAKE_ENV", json.dumps({"driver_version": "580.1", "torch": "2.13.0", "uuid": "GPU-aaa"}))
    run_timed(env, "--update-baselines", "-k", "timing and M3").assert_outcomes(passed=1)
    mixed = run_timed(env, "-k", "timing")
    mixed.assert_outcomes(passed=2)
    mixed.stdout.fnmatch_lines(["pytest-moeperf: baselines of small (1 of its entries) (FAKE_GPU) differ from this "
                                "run: torch 2.11.0 -> 2.13.0; kernels changed since it was recorded"])


def test_on_another_gpu_of_the_model_the_machine_band_applies(env, monkeypatch):
    env.makefile(".yaml", small=SMALL)
    env.makeconftest(FAKE_TIMER)
    monkeypatch.setenv("FAKE_NOISE", "0.002")
    monkeypatch.setenv("FAKE_ENV", json.dumps({"uuid": "GPU-aaa"}))
    run_timed(env, "--update-baselines", "-k", "timing and permute").assert_outcomes(passed=6)
    # on the recording GPU: 4% allowed (the floor, 0.4 us of 10)
    run_timed(env, "-k", "timing and permute", factor="1.05").assert_outcomes(failed=6)
    monkeypatch.setenv("FAKE_ENV", json.dumps({"uuid": "GPU-bbb"}))
    other = run_timed(env, "-k", "timing and permute", "--moeperf-json", "other.json", "--moeperf-markdown", "o.md",
                      "--junitxml", "other.xml", factor="1.05")
    other.assert_outcomes(passed=6)
    note = ("6 timing test(s) judged against baselines timed on another GPU, allowing at least 6% "
            "(--moeperf-machine-band: two GPUs of one model run a kernel a few percent apart); on the recording GPU "
            "the threshold applies")
    other.stdout.fnmatch_lines([f"pytest-moeperf: {note}"])
    assert f"- Note: {note}" in (env.path / "o.md").read_text()
    results = json.loads((env.path / "other.json").read_text())["results"]
    assert {r["machine_band"] for r in results} == {0.06} and {r["verdict"] for r in results} == {"pass"}
    assert all("allowed +/-6.0%, baseline from another GPU" in r["verdict_detail"] for r in results)
    assert (env.path / "other.xml").read_text().count('name="moeperf_machine_band" value="0.06"') == 6
    run_timed(env, "-k", "timing and permute", factor="1.1").assert_outcomes(failed=6)  # beyond the band
    off = run_timed(env, "-k", "timing and permute", "--moeperf-machine-band", "0", factor="1.05")
    off.assert_outcomes(failed=6)  # 0: judged as on the recording GPU
    assert "judged against baselines timed on another GPU" not in off.stdout.str()
    run_timed(env, "-k", "timing and permute", "-o", "moeperf_machine_band=0.2",
              factor="1.1").assert_outcomes(passed=6)
    monkeypatch.setenv("FAKE_ENV", json.dumps({"uuid": "GPU-aaa"}))
    same = run_timed(env, "-k", "timing and permute", "--moeperf-json", "same.json")
    assert "judged against baselines timed on another GPU" not in same.stdout.str()
    assert {r["machine_band"] for r in json.loads((env.path / "same.json").read_text())["results"]} == {None}


def test_missing_baseline_is_new_and_fails_only_when_strict(env):
    env.makefile(".yaml", small=SMALL)
    env.makeconftest(FAKE_TIMER)
    result = run_timed(env, "-k", "timing and permute and M1", "--moeperf-json", "out.json")
    result.assert_outcomes(passed=3)
    assert {r["verdict"] for r in json.loads((env.path / "out.json").read_text())["results"]} == {"new"}
    strict = run_timed(env, "-k", "timing and permute and M1", "--moeperf-strict")
    strict.assert_outcomes(failed=3)
    strict.stdout.fnmatch_lines(["*no baseline for FAKE_GPU*--moeperf-strict*"])


def test_corrupted_baseline_is_a_clear_error_and_is_never_overwritten(env):
    env.makefile(".yaml", small=SMALL)
    env.makeconftest(FAKE_TIMER)
    path = baseline_file(env)
    path.parent.mkdir(parents=True)
    path.write_text('{"schema": 1, "entries": {"permute[torch-bf16-M1]": ')
    result = run_timed(env, "--update-baselines")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert any("small.json is unreadable or corrupted" in line for line in result.errlines)
    assert path.read_text() == '{"schema": 1, "entries": {"permute[torch-bf16-M1]": '


def test_torch_reference_is_timed_only_when_named(env):
    env.makefile(".yaml", small=SMALL.replace("impls: [torch, customized, standard]\n", ""))
    result = env.runpytest("--moeperf", "small.yaml", "--collect-only", "-q")
    ids = [line for line in result.outlines if "::" in line]
    assert any("correctness::permute[torch-" in i for i in ids)
    assert not any("timing::" in i and "[torch-" in i for i in ids)
    assert any("timing::permute[customized_scratch-" in i for i in ids)


def test_eager_regressions_are_advisory_unless_gated(env):
    env.makefile(".yaml", small=SMALL)
    env.makeconftest(FAKE_TIMER)
    run_timed(env, "--update-baselines", "-k", "timing and permute", mode="eager").assert_outcomes(passed=6)
    advisory = run_timed(env, "-k", "timing and permute", "--moeperf-json", "out.json", factor="1.5", mode="eager")
    advisory.assert_outcomes(passed=6)
    verdicts = {r["verdict"] for r in json.loads((env.path / "out.json").read_text())["results"]}
    assert verdicts == {"regression (eager: advisory)"}
    gated = run_timed(env, "-k", "timing and permute", "--moeperf-gate-eager", factor="1.5", mode="eager")
    gated.assert_outcomes(failed=6)


def test_an_injected_slowdown_is_caught_and_labelled(env):
    env.makefile(".yaml", small=SMALL)
    env.makeconftest(FAKE_TIMER)
    run_timed(env, "--update-baselines", "-k", "timing and permute").assert_outcomes(passed=6)
    caught = run_timed(env, "-k", "timing and permute", "--moeperf-inject-slowdown", "0.2", "--moeperf-json", "o.json")
    caught.assert_outcomes(failed=6)
    assert any("an injected slowdown of 20%" in line for line in caught.outlines)
    results = json.loads((env.path / "o.json").read_text())["results"]
    assert {r["verdict"] for r in results} == {"regression (injected +20%)"}
    assert all(r["injected"]["fraction"] == 0.2 and r["injected"]["target_us"] == pytest.approx(2.0, rel=0.1)
               for r in results)
    run_timed(env, "-k", "timing and permute", "--moeperf-inject-slowdown", "0.02").assert_outcomes(passed=6)
    refused = run_timed(env, "-k", "timing", "--moeperf-inject-slowdown", "0.1", "--update-baselines")
    assert refused.ret == pytest.ExitCode.USAGE_ERROR
    assert any("must never become a baseline" in line for line in refused.errlines)


def test_a_regression_on_a_throttled_or_shared_gpu_is_reported_not_counted(env, monkeypatch):
    env.makefile(".yaml", small=SMALL)
    env.makeconftest(FAKE_TIMER)
    run_timed(env, "--update-baselines", "-k", "timing and permute").assert_outcomes(passed=6)
    monkeypatch.setenv("FAKE_HEALTH", json.dumps({"slowdown": ["hardware slowdown"], "other_processes": [4242]}))
    result = run_timed(env, "-k", "timing and permute", "--moeperf-json", "o.json", factor="1.5")
    result.assert_outcomes(passed=6)
    verdicts = {r["verdict"] for r in json.loads((env.path / "o.json").read_text())["results"]}
    assert verdicts == {"regression (not counted: GPU throttled (hardware slowdown); GPU shared with process(es) "
                        "4242)"}
    monkeypatch.setenv("FAKE_HEALTH", json.dumps({"slowdown": [], "other_processes": []}))
    run_timed(env, "-k", "timing and permute", factor="1.5").assert_outcomes(failed=6)


# A conftest logging, for each test, "<worker> <CUDA_VISIBLE_DEVICES> <MOEPERF_WORKERS_PER_GPU>" into gpus.txt.


def test_a_noisy_measurement_is_measured_again_before_it_becomes_a_baseline(env):
    env.makefile(".yaml", small=SMALL)
    env.makeconftest(FAKE_TIMER + '''
_calls = {"n": 0}
_orig = FakeTimer.measure
def measure(self, calls, cfg):
    _calls["n"] += 1
    os.environ["FAKE_NOISE"] = "0.3" if _calls["n"] % 2 else "0.01"  # every other measurement is disturbed
    return _orig(self, calls, cfg)
FakeTimer.measure = measure
''')
    run_timed(env, "--update-baselines", "-k", "timing and permute").assert_outcomes(passed=6)
    entries = json.loads(baseline_file(env).read_text())["entries"]
    assert all(e["iqr_us"] / e["median_us"] < 0.05 for e in entries.values())


def test_a_regression_is_confirmed_with_inputs_made_anew(env, monkeypatch):
    # the first inputs of each test sit at a "slow address": the re-measurement with new inputs clears it
    env.makefile(".yaml", small=SMALL)
    env.makeconftest(FAKE_TIMER + '''
_state = {"first": None, "new_test": True}
def pytest_runtest_setup(item):
    _state["new_test"] = True
_orig = FakeTimer.measure
def measure(self, calls, cfg):
    if _state["new_test"]:
        _state["first"], _state["new_test"] = calls[0], False
    os.environ["FAKE_FACTOR"] = os.environ.get("SLOW_FIRST", "1.0") if calls[0] is _state["first"] else "1.0"
    return _orig(self, calls, cfg)
FakeTimer.measure = measure
''')
    run_timed(env, "--update-baselines", "-k", "timing and permute").assert_outcomes(passed=6)
    monkeypatch.setenv("SLOW_FIRST", "1.3")
    run_timed(env, "-k", "timing and permute", "--moeperf-json", "o.json").assert_outcomes(passed=6)
    results = json.loads((env.path / "o.json").read_text())["results"]
    assert {(r["verdict"], r["confirmed"]) for r in results} == {("pass", False)}


def test_a_measurement_that_stays_spread_out_is_not_counted(env, monkeypatch):
    env.makefile(".yaml", small=SMALL)
    env.makeconftest(FAKE_TIMER)
    run_timed(env, "--update-baselines", "-k", "timing and permute").assert_outcomes(passed=6)
    monkeypatch.setenv("FAKE_NOISE", "0.5")
    result = run_timed(env, "-k", "timing and permute", "--moeperf-json", "o.json", factor="3")
    result.assert_outcomes(passed=6)
    verdicts = {r["verdict"] for r in json.loads((env.path / "o.json").read_text())["results"]}
    assert all(v.startswith("regression (not counted: timing unstable, IQR") for v in verdicts)


def test_fused_experts_is_checked_and_timed_in_flops_and_weight_bytes(env):
    env.makefile(".yaml", gemm=GEMM)
    env.makeconftest(FAKE_TIMER)
    result = env.runpytest("--moeperf", "gemm.yaml", "--moeperf-json", "out.json", "--moeperf-markdown", "out.md")
    result.assert_outcomes(passed=4 + 4)
    rows = json.loads((env.path / "out.json").read_text())["results"]
    assert {(r["dtype"], r["M"]) for r in rows} == {("bf16", 1), ("bf16", 3), ("fp8_w8a8", 1), ("fp8_w8a8", 3)}
    for r in rows:
        H, N = 128, 256 // 2  # intermediate size per expert over tp_size
        routes = 2 * r["M"]
        flops = 2 * routes * 3 * N * H
        assert r["tflops"] == pytest.approx(flops / r["median_us"] / 1e6)
        assert r["matmul_pct"] == pytest.approx(100 * r["tflops"] / 500.0)
        per_expert = 3 * N * H * (2 if r["dtype"] == "bf16" else 1)
        assert r["bytes"] % per_expert == 0 and 1 <= r["bytes"] // per_expert <= min(8, routes)
        assert 0 <= r["relative_error"] <= r["tolerance"] == reference_experts.TOLERANCE[r["dtype"]]
    assert "| TFLOP/s | % matmul | rel. error |" in (env.path / "out.md").read_text()


def test_a_wrong_fused_experts_fails_its_correctness_test(env):
    env.makepyfile(mine="""
from moeperf_kernels import fused_experts
def impls():
    def off_by_a_bit(*args, **kwargs):
        return fused_experts(*args, **kwargs) * 1.05
    return {"fused_experts": off_by_a_bit}
""")
    env.makefile(".yaml", gemm=GEMM.replace("impls: [customized]", "impls: ['mine:impls']")
                 .replace("dtypes: [bf16, fp8_w8a8]", "dtypes: [bf16]").replace("block_quant: [128, 128]\n", ""))
    env.makeconftest(FAKE_TIMER)
    result = env.runpytest("--moeperf", "gemm.yaml", "-k", "correctness")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*fused_experts: relative error *e-02 against the oracle, allowed 3e-03*"])
