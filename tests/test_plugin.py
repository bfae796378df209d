"""The plugin end to end through pytester, on the CPU: collection, schema errors, baselines, verdicts, xdist.

Timing needs a GPU; here a fake timer (written into each test's folder as a conftest) stands in for the CUDA one
so that the baseline and verdict logic runs for real. FAKE_FACTOR scales its medians.
"""
import importlib
import json
import os
from pathlib import Path

import pytest
import torch

from pytest_moeperf.oracle import reference_experts
from tests.conftest import DEVICE

REPO = Path(__file__).resolve().parents[1]

FAKE_TIMER = '''
import contextlib, json, os, random
import pytest
from pytest_moeperf.run_state import RUN_KEY
from pytest_moeperf.measure.timing import Measurement

class FakeTimer:
    gpu_slug = "FAKE_GPU"
    def __init__(self):
        self.rng = random.Random(0)
    def measure(self, calls, cfg):
        for c in calls:
            c()
        factor = float(os.environ.get("FAKE_FACTOR", "1.0"))
        noise = float(os.environ.get("FAKE_NOISE", "0.01"))
        extra = getattr(calls[0], "extra_us", 0.0)  # set by slow_down below
        samples = [(10.0 * factor + extra) * (1 + self.rng.gauss(0, noise)) for _ in range(cfg.samples)]
        return Measurement(samples, os.environ.get("FAKE_MODE", "graph"), cfg.invocations, len(calls))
    def compare(self, calls, cfg, contexts):
        out = []
        for context in contexts:
            with context():
                out.append(self.measure(calls, cfg))
        return out
    def interleave(self, sides, cfg):  # side 0 is the current code, FAKE_FACTOR; the others FAKE_REF_FACTOR
        out = []
        for i, calls in enumerate(sides):
            for c in calls:
                c()
            factor = float(os.environ.get("FAKE_FACTOR" if i == 0 else "FAKE_REF_FACTOR", "1.0"))
            noise = float(os.environ.get("FAKE_NOISE", "0.01"))
            extra = getattr(calls[0], "extra_us", 0.0)
            samples = [(10.0 * factor + extra) * (1 + self.rng.gauss(0, noise)) for _ in range(cfg.samples)]
            out.append(Measurement(samples, "graph", cfg.invocations, len(calls)))
        return out
    def slow_down(self, calls, extra_us, device, timing):
        def slowed(call):
            def run():
                return call()
            run.extra_us = extra_us
            return run
        return (lambda cs: [slowed(c) for c in cs]), {"target_us": extra_us, "extra_us": extra_us, "extra_bytes": 0}
    def health(self):
        return json.loads(os.environ.get("FAKE_HEALTH", "{}"))
    def input_sets_for_cold_l2(self, nbytes, device):
        return 2
    def ceiling_gbps(self, device):
        return 1000.0
    def matmul_ceiling_tflops(self, device, kind):
        return 500.0
    def environment(self):
        where = {"measured_in": os.environ.get("PYTEST_XDIST_WORKER", "controller")} \
            if os.environ.get("FAKE_ENV_WHERE") else {}
        return dict({"device": "fake"}, **where, **json.loads(os.environ.get("FAKE_ENV", "{}")))
    def gpu_uuid(self):
        return "GPU-fake"
    @contextlib.contextmanager
    def lock(self):
        yield

@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    run = config.stash.get(RUN_KEY, None)
    if run is not None:
        run.timer = FakeTimer()
'''

SMALL = """
shape: {num_experts: 8, topk: 2, hidden_size: 64, intermediate_size: 128}
batch_sizes: [1, 3]
ops: [permute, align]
impls: [torch, customized, standard]
timing: {samples: 20, warmup: 1, invocations: 2}
"""


def baseline_file(pytester, scenario="small"):
    return pytester.path / "baselines" / "FAKE_GPU" / f"{scenario}.json"


def test_collects_one_correctness_and_one_timing_test_per_combination(env):
    env.makefile(".yaml", small=SMALL)
    result = env.runpytest("--moeperf", "small.yaml", "--collect-only", "-q")
    ids = {line for line in result.outlines if "::" in line}
    expected = {f"small.yaml::{kind}::{op}[{impl}-bf16-M{m}]" for kind in ("correctness", "timing")
                for op, impls in (("permute", ("torch", "customized", "standard")), ("align", ("torch", "standard")))
                for impl in impls for m in (1, 3)}
    assert ids == expected


def test_inert_without_the_option(env):
    env.makefile(".yaml", small=SMALL)
    env.makepyfile(test_plain="def test_x():\n    assert True\n")
    result = env.runpytest("-q")
    result.assert_outcomes(passed=1)


cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="checks what a machine without a GPU does")


@cpu_only
def test_cpu_run_checks_correctness_and_skips_timing_with_a_reason(env):
    env.makefile(".yaml", small=SMALL)
    result = env.runpytest("--moeperf", "small.yaml", "-rs")
    result.assert_outcomes(passed=10, skipped=10)
    result.stdout.fnmatch_lines(["*no CUDA GPU here*skipped 10 timing tests and 0 correctness tests*",
                                 "*timing needs a CUDA GPU*"])


@cpu_only
def test_cpu_cap_skips_large_batches(env):
    env.makefile(".yaml", small=SMALL.replace("[1, 3]", "[1, 300]"))
    result = env.runpytest("--moeperf", "small.yaml", "-rs", "--moeperf-cpu-max-batch", "16", "-k", "correctness")
    result.assert_outcomes(passed=5, skipped=5)
    result.stdout.fnmatch_lines(["*M=300 is above --moeperf-cpu-max-batch=16*"])


BAD = [
    ("model: mistralai/Mixtral-8x7B-Instruct-v0.1\nbatchsizes: [1]\n", ":2: key 'batchsizes': unknown key"),
    ("model: mistralai/Mixtral-8x7B-Instruct-v0.1\nseed: one\n", ":2: key 'seed': must be an integer"),
    ("model: nobody/NoModel\n", ":1: key 'model': unknown model 'nobody/NoModel'"),
    ("model: mistralai/Mixtral-8x7B-Instruct-v0.1\ndtypes: [bf16, int4]\n", ":2: key 'dtypes': unknown value 'int4'"),
    ("model: mistralai/Mixtral-8x7B-Instruct-v0.1\nops: [permute, gemm]\n", ":2: key 'ops': unknown value 'gemm'"),
    ("model: mistralai/Mixtral-8x7B-Instruct-v0.1\nimpls: [cuda]\n", ":2: key 'impls': unknown implementation"),
    ("model: mistralai/Mixtral-8x7B-Instruct-v0.1\nbatch_sizes: []\n", ":2: key 'batch_sizes': must be a non-empty"),
    ("model: mistralai/Mixtral-8x7B-Instruct-v0.1\nbatch_sizes: [4, -1]\n", ":2: key 'batch_sizes': must be >= 1"),
    ("model: deepseek-ai/DeepSeek-V3\nep_size: 3\n", ":2: key 'ep_size': num_experts=256 is not divisible"),
    ("model: deepseek-ai/DeepSeek-V3\nep_size: 8\nep_rank: 8\n", ":3: key 'ep_rank': must be <= 7"),
    ("model: missing/config.json\n", ":1: key 'model': config file .*config.json does not exist"),
    ("model: partial.json\n", ":1: key 'model': config file .*partial.json lacks a positive integer for topk"),
    ("model: mistralai/Mixtral-8x7B-Instruct-v0.1\nrouting: {kind: zipf, p: 0.5}\n",
     ":2: key 'routing.p': does not apply to routing kind 'zipf'"),
    ("model: mistralai/Mixtral-8x7B-Instruct-v0.1\ntiming: {l2: lukewarm}\n", ":2: key 'timing.l2': unknown value"),
    ("model: mistralai/Mixtral-8x7B-Instruct-v0.1\nthreshold: -0.1\n", ":2: key 'threshold': must lie strictly"),
    ("model: mistralai/Mixtral-8x7B-Instruct-v0.1\nmodel: x\n", ":2: key 'model': given twice"),
    ("shape: {num_experts: 8, topk: 2, hidden_size: 64}\n", ":1: key 'shape': missing intermediate_size"),
    ("model: mistralai/Mixtral-8x7B-Instruct-v0.1\nimpls: ['nosuchmodule:fn']\n",
     ":2: key 'impls': implementation 'nosuchmodule:fn': cannot import"),
    ("model: [unclosed\n", ":1: invalid YAML"),
]


@pytest.mark.parametrize("text,message", BAD, ids=[m.split("'")[1] if "'" in m else m for _, m in BAD])
def test_schema_errors_are_usage_errors_naming_file_line_and_key(env, text, message):
    (env.path / "partial.json").write_text(json.dumps({"num_local_experts": 8, "hidden_size": 64,
                                                       "intermediate_size": 32}))
    env.makefile(".yaml", bad=text)
    result = env.runpytest("--moeperf", "bad.yaml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = "\n".join(result.errlines)
    import re
    assert re.search(r"ERROR: .*bad\.yaml" + re.escape(message.split(".*")[0]) if ".*" not in message
                     else message, err), err
    assert "Traceback" not in err + "\n".join(result.outlines)


def test_config_json_models_read_nested_fields(env):
    (env.path / "llama4.json").write_text(json.dumps({"text_config": {
        "num_local_experts": 16, "num_experts_per_tok": 1, "hidden_size": 96, "intermediate_size": 64,
        "torch_dtype": "bfloat16"}}))
    (env.path / "dbrx.json").write_text(json.dumps({"d_model": 64, "ffn_config": {
        "moe_num_experts": 16, "moe_top_k": 4, "ffn_hidden_size": 128}}))
    for name in ("llama4", "dbrx"):
        env.makefile(".yaml", **{name: f"model: {name}.json\nbatch_sizes: [2]\nops: [permute]\nimpls: [customized]\n"})
    result = env.runpytest("--moeperf", "llama4.yaml", "dbrx.yaml", "-k", "correctness")
    result.assert_outcomes(passed=2)


USER_IMPL = '''
import torch
from pytest_moeperf.oracle import reference

def good():
    return {"permute": reference.moe_permute, "align": reference.moe_align_block_size}

def broken_permute(*args, **kw):
    out = list(reference.moe_permute(*args, **kw))
    out[3] = torch.flip(out[3], [0])  # scrambles inv_permuted_idx
    return tuple(out)

def bad():
    return {"permute": broken_permute}
'''


def test_user_implementations_by_dotted_path(env, monkeypatch):
    env.makepyfile(myimpl=USER_IMPL)
    monkeypatch.syspath_prepend(str(env.path))
    env.makefile(".yaml", small=SMALL.replace("impls: [torch, customized, standard]",
                                              "impls: [{name: mine, path: 'myimpl:good'}, 'myimpl:bad']"))
    env.makeconftest(FAKE_TIMER)
    result = env.runpytest("--moeperf", "small.yaml", "-rs")
    result.stdout.fnmatch_lines(["*permute[[]myimpl:bad-bf16-M1[]]: inv_permuted_idx of local routes*",
                                 "*correctness failed, not timed: inv_permuted_idx*"])
    result.assert_outcomes(passed=8, failed=2, skipped=2)


def run_timed(env, *args, factor="1.0", mode="graph"):
    os.environ["FAKE_FACTOR"], os.environ["FAKE_MODE"] = factor, mode
    try:
        return env.runpytest("--moeperf", "small.yaml", *args)
    finally:
        os.environ.pop("FAKE_FACTOR", None)
        os.environ.pop("FAKE_MODE", None)


def test_update_baselines_respects_k_and_merges(env):
    env.makefile(".yaml", small=SMALL)
    env.makeconftest(FAKE_TIMER)
    run_timed(env, "--update-baselines", "-k", "timing and permute").assert_outcomes(passed=6)
    keys = set(json.loads(baseline_file(env).read_text())["entries"])
    assert keys == {f"permute[{i}-bf16-M{m}]" for i in ("torch", "customized", "standard") for m in (1, 3)}
    run_timed(env, "--update-baselines", "-k", "timing and align and M1").assert_outcomes(passed=2)
    data = json.loads(baseline_file(env).read_text())
    assert set(data["entries"]) == keys | {"align[torch-bf16-M1]", "align[standard-bf16-M1]"}
    assert set(data["environment"]) == {"device", "sources"} and data["schema"] == 1
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


def test_xdist_workers_send_results_to_the_controller_which_writes_once(env):
    env.makefile(".yaml", small=SMALL)
    env.makeconftest(FAKE_TIMER)
    result = env.runpytest_subprocess("--moeperf", "small.yaml", "-n", "2", "--update-baselines", "-k", "timing",
                                      "--moeperf-json", "out.json")
    result.assert_outcomes(passed=10)
    assert len(json.loads(baseline_file(env).read_text())["entries"]) == 10
    assert len(json.loads((env.path / "out.json").read_text())["results"]) == 10
    result.stdout.fnmatch_lines(["*wrote 10 baseline entries*"])
    again = env.runpytest_subprocess("--moeperf", "small.yaml", "-n", "2", "-k", "timing")
    again.assert_outcomes(passed=10)


def test_the_environment_recorded_under_xdist_is_a_workers_not_the_controllers(env, monkeypatch):
    env.makefile(".yaml", small=SMALL)
    env.makeconftest(FAKE_TIMER)
    monkeypatch.setenv("FAKE_ENV_WHERE", "1")
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)  # when this test itself runs in an xdist worker
    result = env.runpytest_subprocess("--moeperf", "small.yaml", "-n", "2", "--update-baselines", "-k",
                                      "timing and M1", "--moeperf-json", "out.json")
    result.assert_outcomes(passed=5)
    recorded = json.loads(baseline_file(env).read_text())["environment"]
    assert recorded["measured_in"] in ("gw0", "gw1")
    assert json.loads((env.path / "out.json").read_text())["environments"]["FAKE_GPU"]["measured_in"] in ("gw0", "gw1")
    alone = env.runpytest_subprocess("--moeperf", "small.yaml", "--update-baselines", "-k", "timing and M1")
    alone.assert_outcomes(passed=5)
    assert json.loads(baseline_file(env).read_text())["environment"]["measured_in"] == "controller"


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
WORKER_GPU_LOG = """
import os
def pytest_runtest_setup(item):
    with open(os.path.join(str(item.config.rootpath), "gpus.txt"), "a") as f:
        f.write(" ".join([os.environ["PYTEST_XDIST_WORKER"], os.environ.get("CUDA_VISIBLE_DEVICES", "-"),
                          os.environ.get("MOEPERF_WORKERS_PER_GPU", "-")]) + "\\n")
"""


def logged_worker_gpus(env) -> set[str]:
    return set((env.path / "gpus.txt").read_text().split("\n")) - {""}


def test_auto_workers_one_per_visible_gpu(env, monkeypatch):
    import pytest_moeperf.plugin as plugin

    env.makefile(".yaml", small=SMALL)
    monkeypatch.setattr(plugin, "visible_gpus", lambda: ["0", "1", "2"])
    env.makeconftest(WORKER_GPU_LOG)
    result = env.runpytest("--moeperf", "small.yaml", "-n", "auto", "-k", "correctness and torch")
    result.stdout.fnmatch_lines(["*created: 3/3 workers*"])
    result.assert_outcomes(passed=4)
    seen = logged_worker_gpus(env)
    assert seen <= {"gw0 0 1", "gw1 1 1", "gw2 2 1"} and seen, seen


def test_workers_sharing_a_gpu_are_told_so_and_may_not_record(env, monkeypatch):
    """Workers sharing a GPU time each other's kernels faster (benchmarks/results/h200-2026-12-02-fresh-machine.md):
    each worker learns how many share its GPU (recorded in the environment), and --update-baselines is refused."""
    import pytest_moeperf.plugin as plugin

    env.makefile(".yaml", small=SMALL)
    monkeypatch.setattr(plugin, "visible_gpus", lambda: ["0", "1"])
    result = env.runpytest("--moeperf", "small.yaml", "-n", "3", "-k", "timing", "--update-baselines")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--update-baselines with 3 xdist workers on 2 GPU(s): workers sharing a GPU*"
                                 "record with -n auto (one worker per GPU) or without -n*"])
    env.makeconftest(WORKER_GPU_LOG)
    env.runpytest("--moeperf", "small.yaml", "-n", "3", "-k", "correctness and torch").assert_outcomes(passed=4)
    seen = logged_worker_gpus(env)
    assert seen <= {"gw0 0 2", "gw1 1 1", "gw2 0 2"} and seen, seen
    result = env.runpytest("--moeperf", "small.yaml", "-n", "2", "-k", "correctness and torch", "--update-baselines")
    result.assert_outcomes(passed=4)


def test_markdown_summary_and_github_step_summary(env, monkeypatch):
    env.makefile(".yaml", small=SMALL)
    env.makeconftest(FAKE_TIMER)
    run_timed(env, "--update-baselines", "-k", "timing").assert_outcomes(passed=10)
    summary = env.path / "step_summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    run_timed(env, "-k", "timing", "--moeperf-markdown", "report.md", factor="1.3").assert_outcomes(failed=10)
    text = (env.path / "report.md").read_text()
    assert "### Regressions" in text and "| small | permute | customized | bf16 | 1 |" in text
    assert "10 regression (10 timing tests)" in text and "GPU `FAKE_GPU`" in text
    assert summary.read_text() == text


@pytest.mark.skipif(not importlib.import_module("pytest_moeperf.report.plots").available(),
                    reason="matplotlib not installed")
def test_plots_one_png_per_scenario_and_op(env):
    env.makefile(".yaml", small=SMALL)
    env.makeconftest(FAKE_TIMER)
    run_timed(env, "--update-baselines", "-k", "timing").assert_outcomes(passed=10)
    result = run_timed(env, "-k", "timing", "--moeperf-plot", "plots", factor="1.3")
    result.stdout.fnmatch_lines(["*wrote 2 plots to plots*"])
    pngs = sorted(p.name for p in (env.path / "plots").iterdir())
    assert pngs == ["small-align.png", "small-permute.png"]
    assert (env.path / "plots" / "small-permute.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_says_how_to_install(env, monkeypatch):
    import pytest_moeperf.report.plots as plots

    monkeypatch.setattr(plots, "available", lambda: False)
    env.makefile(".yaml", small=SMALL)
    result = env.runpytest("--moeperf", "small.yaml", "--moeperf-plot", "plots")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert any("pip install 'pytest-moeperf[plot]'" in line for line in result.errlines)


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


TUNE_TIMER = FAKE_TIMER + '''
from moeperf_kernels import tuning
FAST = {"BLOCK_T": 1, "BLOCK_H": 64, "num_warps": 2}
def fast_gemm(config):  # grouped tile orders: the defaults at these sizes use GROUP_SIZE_M 1
    return config.get("GROUP_SIZE_M", 1) != 1
BROKEN = {"BLOCK_T": 2, "BLOCK_H": 64, "num_warps": 2}  # as if Triton could not compile it
_launch_config = tuning.launch_config
def launch_config(*args, **kw):
    config = _launch_config(*args, **kw)
    if config == BROKEN:
        raise ValueError("out of resources")
    return config
def pytest_sessionstart(session):
    tuning.launch_config = launch_config
def pytest_sessionfinish(session):
    tuning.launch_config = _launch_config
_orig = FakeTimer.measure
def measure(self, calls, cfg):
    forced = [c for _, c in tuning._stack("forced")]
    m = _orig(self, calls, cfg)
    fast = forced and (forced[-1] == FAST or fast_gemm(forced[-1]))
    if fast and os.environ.get("FAKE_NO_FAST") != "1":  # the fake GPU runs these configs 20% faster than any other
        m = Measurement([0.8 * s for s in m.samples_us], m.mode, m.invocations, m.input_sets)
    return m
FakeTimer.measure = measure
'''


@pytest.fixture
def configs(tmp_path):
    from moeperf_kernels import tuning

    with tuning.configs_from(tmp_path / "configs"):
        yield tmp_path / "configs"


def test_tuning_writes_the_fastest_config_per_batch_size_and_the_kernels_read_it(env, configs):
    from moeperf_kernels import tuning

    device = torch.device(DEVICE)  # where the plugin's correctness and tuning tests run
    name = tuning.config_name("permute", 64, 2, torch.bfloat16, tuning.device_name(device), E=8)
    candidates = len(tuning.search_space("permute", 64, 1, 2, 2))
    kept = {"BLOCK_H": 32, "BLOCK_T": 4, "num_warps": 2}
    configs.mkdir()
    (configs / name).write_text(json.dumps({"triton": "old", "configs": {"64": kept}}))
    env.makefile(".yaml", small=SMALL)
    # What the file holds when each tuning test's report has been handled: winners are written as they come.
    env.makeconftest(TUNE_TIMER + f'''
import json
@pytest.hookimpl(trylast=True)
def pytest_runtest_logreport(report):
    if report.when == "call" and "::tuning::" in report.nodeid:
        held = json.loads((tuning.CONFIG_DIR / "{name}").read_text())["configs"]
        with open("seen.txt", "a") as f:
            f.write(report.nodeid.rsplit("-", 1)[1] + " " + ",".join(held) + "\\n")
''')
    result = run_timed(env, "--moeperf-tune", "-k", "tuning or correctness", "--moeperf-json", "tune.json",
                       "--moeperf-markdown", "tune.md")
    result.assert_outcomes(passed=10 + 2)  # the correctness tests, and permute of `customized` at M = 1 and 3
    assert (env.path / "seen.txt").read_text().splitlines() == ["M1] 1,64", "M3] 1,3,64"]
    tuned = json.loads((env.path / "tune.json").read_text())["tuned"]
    assert [(r["M"], r["config"]["BLOCK_H"]) for r in tuned] == [(1, 64), (3, 64)]
    summary = (env.path / "tune.md").read_text()
    assert summary.startswith("## pytest-moeperf tuning") and "| small      | permute[customized-bf16-M3]" in summary
    result.stdout.fnmatch_lines(["*pytest-moeperf tuning*",
                                 f"*permute[[]customized-bf16-M1[]]*  {candidates}  *BLOCK_H=64 "
                                 "BLOCK_T=1 num_warps=2*", "*permute[[]customized-bf16-M3[]]*(1 failed)*BLOCK_H=64 "
                                 "BLOCK_T=1 num_warps=2*", f"*wrote 2 tuned configs to *{name}*"])
    fast = {"BLOCK_H": 64, "BLOCK_T": 1, "num_warps": 2}
    data = json.loads((configs / name).read_text())
    assert list(data["configs"]) == ["1", "3", "64"]  # merged with what was there, by batch size
    assert data["configs"] == {"1": fast, "3": fast, "64": kept}
    assert data["triton"] != "old"
    assert tuning.launch_config("permute", 3, 64, 2, torch.bfloat16, device, E=8) == fast
    assert tuning.launch_config("permute", 64, 64, 2, torch.bfloat16, device, E=8) == kept
    # batch sizes that were not tuned run the defaults, not a neighbour's entry
    assert tuning.launch_config("permute", 2, 64, 2, torch.bfloat16, device, E=8) == \
        tuning.default_config(64, 2, 2)


def test_tuning_keeps_the_default_where_no_config_beats_it_and_drops_an_old_entry(env, configs, monkeypatch):
    from moeperf_kernels import tuning

    device = torch.device(DEVICE)
    name = tuning.config_name("permute", 64, 2, torch.bfloat16, tuning.device_name(device), E=8)
    old = {"BLOCK_H": 32, "BLOCK_T": 4, "num_warps": 2}
    configs.mkdir()
    (configs / name).write_text(json.dumps({"triton": "old", "configs": {"1": old, "64": old}}))
    env.makefile(".yaml", small=SMALL)
    env.makeconftest(TUNE_TIMER)
    monkeypatch.setenv("FAKE_NO_FAST", "1")  # every config times alike, within 1% noise: none beats the default
    result = run_timed(env, "--moeperf-tune", "-k", "tuning and M1]", "--moeperf-json", "tune.json")
    result.assert_outcomes(passed=1)
    (tuned,) = json.loads((env.path / "tune.json").read_text())["tuned"]
    assert tuned["kept"] is False and tuned["ratio"] > 1 - 0.03
    result.stdout.fnmatch_lines(["*permute[[]customized-bf16-M1[]]*default kept (best found:*",
                                 f"*wrote 0 tuned configs to *{name} (1 batch sizes keep the default*"])
    assert json.loads((configs / name).read_text())["configs"] == {"64": old}  # M = 1's old entry is gone
    assert tuning.launch_config("permute", 1, 64, 2, torch.bfloat16, device, E=8) == tuning.default_config(64, 1, 2)


def test_tuning_runs_alone(env):
    env.makefile(".yaml", small=SMALL)
    env.makeconftest(FAKE_TIMER)
    result = env.runpytest("--moeperf", "small.yaml", "--moeperf-tune", "--update-baselines")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert any("--moeperf-tune runs alone" in line for line in result.errlines)


def test_loading_the_plugin_does_not_import_the_kernels():
    # triton.jit reads TRITON_INTERPRET when the kernels are imported; pytest_configure sets it on a CPU machine,
    # so nothing the plugin loads before that may import them
    import subprocess
    import sys

    code = ("import sys, pytest_moeperf.plugin, pytest_moeperf.items, pytest_moeperf.run_state; "
            "print('moeperf_kernels' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


GEMM = """
shape: {num_experts: 8, topk: 2, hidden_size: 128, intermediate_size: 256}
tp_size: 2
dtypes: [bf16, fp8_w8a8]
block_quant: [128, 128]
batch_sizes: [1, 3]
ops: [fused_experts]
impls: [customized]
timing: {samples: 20, warmup: 1, invocations: 2}
"""


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


def test_tuning_fused_experts_writes_a_vllm_style_file(configs, env):
    from moeperf_kernels import tuning

    env.makefile(".yaml", gemm=GEMM.replace("dtypes: [bf16, fp8_w8a8]", "dtypes: [bf16]").replace(
        "block_quant: [128, 128]\n", ""))
    env.makeconftest(TUNE_TIMER)
    # at most 12 configs: on a GPU the whole space would compile hundreds of GEMMs for a test of the plumbing
    result = env.runpytest("--moeperf", "gemm.yaml", "--moeperf-tune", "-k", "tuning", "--moeperf-tune-max-configs",
                           "12")
    result.assert_outcomes(passed=2)
    name = tuning.gemm_config_name(8, 128, tuning.device_name(torch.device(DEVICE)), None, None)
    result.stdout.fnmatch_lines([f"*wrote 2 tuned configs to *{name}*"])
    data = json.loads((configs / name).read_text())
    assert list(data) == ["triton_version", "1", "3"]
    assert all(set(data[m]) == set(tuning.GEMM_KEYS) and data[m]["GROUP_SIZE_M"] != 1 for m in ("1", "3"))


def test_tuning_can_time_a_seeded_draw_of_a_large_space(configs, env):
    from moeperf_kernels import tuning

    env.makefile(".yaml", gemm=GEMM.replace("dtypes: [bf16, fp8_w8a8]", "dtypes: [bf16]").replace(
        "block_quant: [128, 128]\n", "").replace("batch_sizes: [1, 3]", "batch_sizes: [3]"))
    env.makeconftest(FAKE_TIMER)
    space = len(tuning.gemm_search_space(3, 2, 8, 2, None))
    assert space > 2
    result = env.runpytest("--moeperf", "gemm.yaml", "--moeperf-tune", "-k", "tuning", "--moeperf-tune-max-configs",
                           "2", "--moeperf-json", "tune.json")
    result.assert_outcomes(passed=1)
    (tuned,) = json.loads((env.path / "tune.json").read_text())["tuned"]
    assert (tuned["candidates"], tuned["space"]) == (2, space)
    result.stdout.fnmatch_lines([f"*fused_experts[[]customized-bf16-M3[]]*2 of {space} *"])
    refused = env.runpytest("--moeperf", "gemm.yaml", "--moeperf-tune", "--moeperf-tune-max-configs", "0")
    refused.stderr.fnmatch_lines(["*argument --moeperf-tune-max-configs: must be >= 1, got 0*"])
    assert refused.ret == pytest.ExitCode.USAGE_ERROR


def test_injected_regressions_reach_the_markdown_regressions_section_and_the_plots(env):
    # the bug of issue 17: the outcome was a string, "regression (injected +20%)", compared with == "regression"
    from pytest_moeperf.gate.result import TimingResult
    from pytest_moeperf.report import plots

    env.makefile(".yaml", small=SMALL)
    env.makeconftest(FAKE_TIMER)
    run_timed(env, "--update-baselines", "-k", "timing and permute").assert_outcomes(passed=6)
    caught = run_timed(env, "-k", "timing and permute", "--moeperf-inject-slowdown", "0.2", "--moeperf-json", "o.json",
                       "--moeperf-markdown", "o.md")
    caught.assert_outcomes(failed=6)
    summary = (env.path / "o.md").read_text()
    regressions = summary.split("### Regressions", 1)[1].split("###", 1)[0]
    assert regressions.count("regression (injected +20%)") == 6
    results = [TimingResult.from_json(r) for r in json.loads((env.path / "o.json").read_text())["results"]]
    assert all(r.outcome.counted and r.outcome.injected == 0.2 for r in results)
    lines = plots.series(results)[("small", "permute")]
    assert sum(len(line.regressions) for line in lines) == 6


def test_the_workers_registrations_are_removed_after_the_run(env):
    """Each xdist worker registers itself for the health check (health.register_worker) in a folder of the run; the
    controller removes it at the end, so that runs leave nothing behind in the temporary directory."""
    from pytest_moeperf.measure import health

    env.makefile(".yaml", small=SMALL)
    env.makeconftest("""
import os
from pytest_moeperf.measure import health
def pytest_runtest_setup(item):
    with open(os.path.join(str(item.config.rootpath), "workers.txt"), "a") as f:
        f.write(str(len(health.run_workers())) + "\\n")
""")
    run_id = f"moeperf-test-{os.getpid()}"
    result = env.runpytest("--moeperf", "small.yaml", "-n", "2", "--testrunuid", run_id, "-k", "correctness and torch")
    result.assert_outcomes(passed=4)
    assert {int(n) for n in (env.path / "workers.txt").read_text().split()} == {2}
    assert not health._run_folder(run_id).exists()
