"""The plugin end to end through pytester, on the CPU (a fake timer, tests/fake_gpu.py): collection, options, schema
errors, user implementations, reports."""
import importlib
import json

import pytest
import torch

from tests.fake_gpu import FAKE_TIMER, REPO, SMALL, run_timed


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


def test_loading_the_plugin_does_not_import_the_kernels():
    # triton.jit reads TRITON_INTERPRET when the kernels are imported; pytest_configure sets it on a CPU machine,
    # so nothing the plugin loads before that may import them
    import subprocess
    import sys

    code = ("import sys, pytest_moeperf.plugin, pytest_moeperf.items, pytest_moeperf.run_state; "
            "print('moeperf_kernels' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
