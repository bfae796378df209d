"""What a careless or hostile user can do to the gate, each kept fixed (issue 16): every case was a crash, a silent
pass or a write outside the baselines folder before."""
import os
import subprocess
import sys

import pytest
import torch

import moeperf_kernels as kernels
from pytest_moeperf.inputs import problem
from pytest_moeperf.oracle import impls, reference
from pytest_moeperf.spec import scenario
from tests.fake_gpu import FAKE_TIMER
from tests.fake_gpu import SMALL as PLUGIN_SMALL
from tests.fake_gpu import run_timed

SMALL = """
shape: {num_experts: 8, topk: 2, hidden_size: 64, intermediate_size: 128}
batch_sizes: [3]
"""


@pytest.fixture
def small_problem(tmp_path, device):
    path = tmp_path / "small.yaml"
    path.write_text(SMALL)
    return problem.build(scenario.load(path), "bf16", 3, device)


# --- 1. unpermute is checked through `out` ----------------------------------------------------------------------------
def _vllm_style_unpermute(out, permuted, weights, inv, offsets=None):
    kernels.moe_unpermute(out, permuted, weights, inv, offsets)  # writes out, returns None, as vLLM's does


def _returns_a_copy_never_writes_out(out, permuted, weights, inv, offsets=None):
    right = torch.empty_like(out)
    reference.moe_unpermute(right, permuted, weights, inv, offsets)
    return right  # correct values, but `out` is left as it was


def test_an_unpermute_that_writes_out_and_returns_none_passes(small_problem):
    impls.CustomizedContract("vllm", kernels.moe_permute, _vllm_style_unpermute).check("unpermute", small_problem)


def test_an_unpermute_that_returns_out_itself_passes(small_problem):
    impls.CustomizedContract("ours", kernels.moe_permute, kernels.moe_unpermute).check("unpermute", small_problem)


def test_an_unpermute_that_returns_a_correct_copy_but_never_writes_out_fails(small_problem):
    impl = impls.CustomizedContract("copy", kernels.moe_permute, _returns_a_copy_never_writes_out)
    with pytest.raises(AssertionError, match=r"unpermute returned a tensor of shape \(3, 64\), dtype "
                                             r"torch.bfloat16, not `out`: it must write its result into `out`"):
        impl.check("unpermute", small_problem)


# --- 2. options and ini values are checked like the YAML keys ---------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["--moeperf-threshold", "nan"], "argument --moeperf-threshold: must lie in (0, 10), got 'nan'"),
    (["--moeperf-threshold", "0"], "argument --moeperf-threshold: must lie in (0, 10), got '0'"),
    (["--moeperf-threshold", "-1"], "argument --moeperf-threshold: must lie in (0, 10), got '-1'"),
    (["--moeperf-threshold", "1e9"], "argument --moeperf-threshold: must lie in (0, 10), got '1e9'"),
    (["--moeperf-threshold", "abc"], "argument --moeperf-threshold: must be a number, got 'abc'"),
    (["--moeperf-noise-floor-us", "-5"], "argument --moeperf-noise-floor-us: must lie in [0, 1e+06), got '-5'"),
    (["--moeperf-noise-floor-us", "nan"], "argument --moeperf-noise-floor-us: must lie in [0, 1e+06), got 'nan'"),
    (["--moeperf-machine-band", "-0.1"], "argument --moeperf-machine-band: must lie in [0, 10), got '-0.1'"),
    (["--moeperf-machine-band", "inf"], "argument --moeperf-machine-band: must lie in [0, 10), got 'inf'"),
    (["-o", "moeperf_machine_band=5%"], "ini option moeperf_machine_band (-o moeperf_machine_band=...): must be a "
                                        "number, got '5%'"),
    (["--moeperf-cpu-max-batch", "-1"], "argument --moeperf-cpu-max-batch: must be >= 1, got -1"),
    (["--moeperf-cpu-max-batch", "0"], "argument --moeperf-cpu-max-batch: must be >= 1, got 0"),
    (["--moeperf-inject-slowdown", "inf"], "argument --moeperf-inject-slowdown: must lie in (0, 10], got 'inf'"),
    (["-o", "moeperf_threshold=abc"], "ini option moeperf_threshold (-o moeperf_threshold=...): must be a number"),
    (["-o", "moeperf_threshold=0"], "ini option moeperf_threshold (-o moeperf_threshold=...): must lie in (0, 10)"),
    (["-o", "moeperf_noise_floor_us=nan"], "ini option moeperf_noise_floor_us (-o moeperf_noise_floor_us=...): "
                                           "must lie in [0, 1e+06), got 'nan'"),
    (["-o", "moeperf_cpu_max_batch=-1"], "ini option moeperf_cpu_max_batch (-o moeperf_cpu_max_batch=...): must be "
                                         ">= 1, got -1"),
    (["-o", "moeperf_strict=maybe"], "ini option moeperf_strict (-o moeperf_strict=...): must be true or false"),
])
def test_a_bad_option_value_is_a_usage_error_that_names_it(env, args, message):
    env.makefile(".yaml", small=PLUGIN_SMALL)
    result = env.runpytest("--moeperf", "small.yaml", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    text = result.stderr.str()
    assert message in text and "INTERNALERROR" not in text + result.stdout.str()


def test_a_threshold_from_the_command_line_overrides_the_ini_and_the_scenario(env):
    env.makefile(".yaml", small=PLUGIN_SMALL)
    env.makeconftest(FAKE_TIMER)
    env.makeini("[pytest]\nmoeperf_threshold = 0.9\n")
    run_timed(env, "--update-baselines", "-k", "timing and permute and M1").assert_outcomes(passed=3)
    run_timed(env, "-k", "timing and permute and M1", factor="1.5").assert_outcomes(passed=3)  # ini: 90% allowed
    run_timed(env, "-k", "timing and permute and M1", "--moeperf-threshold", "0.05",
              factor="1.5").assert_outcomes(failed=3)


# --- 3. a scenario name is a plain file name, and writes stay inside the baselines folder -----------------------------
@pytest.mark.parametrize("name", ["/tmp/x/abs", "../../escaped", "a/b", '""', "'\\0x'", "'a\\nb'", "x" * 300,
                                  "./same", ".hidden", "-dash"])
def test_a_scenario_name_that_is_no_plain_file_name_is_refused_at_load(env, name):
    env.makefile(".yaml", small=f"name: {name}\n" + PLUGIN_SMALL)
    result = env.runpytest("--moeperf", "small.yaml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*small.yaml:1: key 'name': * cannot name a baseline file: use 1-100 letters, "
                                 "digits, '.', '_' or '-', starting with a letter or digit*"])
    assert len(result.stderr.str()) < 2000


def test_a_file_whose_stem_cannot_name_a_baseline_file_must_be_given_a_name(env):
    (env.path / "my scenario.yaml").write_text(PLUGIN_SMALL)
    result = env.runpytest("--moeperf", "my scenario.yaml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*the file name 'my scenario' cannot name a baseline file*rename the file or give "
                                 "the scenario a 'name'*"])


def test_two_scenarios_with_one_name_in_any_case_are_refused(env):
    env.makefile(".yaml", one="name: Same\n" + PLUGIN_SMALL, two="name: same\n" + PLUGIN_SMALL)
    result = env.runpytest("--moeperf", "one.yaml", "two.yaml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*scenario name 'same' is also used by *one.yaml*"])


def test_baseline_paths_never_leave_their_folder(tmp_path):
    from pytest_moeperf.store import baselines

    assert baselines.path_for(tmp_path, "NVIDIA_H200", "mixtral") == tmp_path / "NVIDIA_H200" / "mixtral.json"
    for gpu, name in (("NVIDIA_H200", "../x"), ("..", "x"), ("NVIDIA_H200", "/etc/x"), ("a/b", "x")):
        with pytest.raises(baselines.BaselineError, match="cannot name a baseline file"):
            baselines.path_for(tmp_path, gpu, name)


# --- 4. a failed baseline write costs no report, and concurrent writers keep every entry ------------------------------
@pytest.mark.parametrize("breakage", ["file-where-the-gpu-folder-goes", "read-only-folder"])
def test_a_failed_baseline_write_still_writes_the_reports_and_fails_clearly(env, breakage):
    import os

    env.makefile(".yaml", small=PLUGIN_SMALL)
    env.makeconftest(FAKE_TIMER)
    root = env.path / "baselines"
    root.mkdir()
    if breakage == "file-where-the-gpu-folder-goes":
        (root / "FAKE_GPU").write_text("not a folder")
    else:
        (root / "FAKE_GPU").mkdir()
        os.chmod(root / "FAKE_GPU", 0o555)
        if os.access(root / "FAKE_GPU", os.W_OK):  # root ignores permissions: nothing to test here
            pytest.skip("this user can write into a read-only folder")
    try:
        result = run_timed(env, "--update-baselines", "-k", "timing and permute and M1", "--moeperf-json", "out.json",
                           "--moeperf-markdown", "out.md")
    finally:
        if (root / "FAKE_GPU").is_dir():
            os.chmod(root / "FAKE_GPU", 0o755)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*pytest-moeperf: baselines of small (3 entries) not written: *"])
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    import json

    assert len(json.loads((env.path / "out.json").read_text())["results"]) == 3
    assert "| small |" in (env.path / "out.md").read_text()


WRITER = """
import sys
from pytest_moeperf.store import baselines
path, who = sys.argv[1], sys.argv[2]
for i in range(20):
    entry = {"median_us": 1.0, "samples_us": [1.0, 1.0, 1.0]}
    baselines.update(path, {f"{who}-{i}": entry}, {"writer": who}, "small")
"""


def test_writers_with_different_temp_folders_keep_every_entry(tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    path = tmp_path / "baselines" / "GPU" / "small.json"
    procs = []
    for who in ("a", "b"):
        tmp = tmp_path / f"tmp-{who}"
        tmp.mkdir()
        env = dict(os.environ, TMPDIR=str(tmp), PYTHONPATH=str(repo))
        procs.append(subprocess.Popen([sys.executable, "-c", WRITER, str(path), who], env=env))
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    assert len(json.loads(path.read_text())["entries"]) == 40
    assert not list(path.parent.glob("*.lock")) and not list(path.parent.glob("*.tmp"))


def test_a_lock_file_another_user_left_read_only_still_serves(tmp_path, monkeypatch):
    import tempfile

    from pytest_moeperf.measure import locks

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    lock = tmp_path / "pytest-moeperf-gpu-x.lock"
    lock.write_text("")
    lock.chmod(0o444)
    with locks.machine_lock("gpu-x"):
        pass


# --- 5. a baseline that parses but cannot serve is refused at load, naming file and entry -----------------------------
@pytest.mark.parametrize("entry, words", [
    ({"median_us": 10.0, "samples_us": [float("nan")] * 5}, "samples_us must hold positive finite numbers, got nan"),
    ({"median_us": float("nan"), "samples_us": [1.0] * 5}, "median_us must be a positive finite number, got nan"),
    ({"median_us": 10.0, "samples_us": ["1", "2", "3"]}, "samples_us must hold positive finite numbers, got 1"),
    ({"median_us": 10.0, "samples_us": [10.0]}, "samples_us must be a list of at least 3 timings"),
    ({"median_us": 0, "samples_us": [0.0, 0.0, 0.0]}, "median_us must be a positive finite number, got 0"),
    ({"median_us": 10.0, "samples_us": [10.0, 0.0, 10.0]}, "samples_us must hold positive finite numbers, got 0.0"),
    ([1, 2], "must be a mapping with median_us and samples_us, got list"),
])
def test_an_unusable_baseline_entry_is_an_error_naming_file_and_entry(tmp_path, entry, words):
    import json

    from pytest_moeperf.store import baselines

    path = tmp_path / "small.json"
    path.write_text(json.dumps({"schema": 1, "entries": {"permute[x-bf16-M1]": entry}}))
    with pytest.raises(baselines.BaselineError) as e:
        baselines.load(path)
    assert f"{path}: entry 'permute[x-bf16-M1]': {words}" in str(e.value)


def test_a_deeply_nested_baseline_file_is_a_clear_error(tmp_path):
    from pytest_moeperf.store import baselines

    path = tmp_path / "small.json"
    path.write_text("[" * 100_000)
    with pytest.raises(baselines.BaselineError, match="unreadable or corrupted"):
        baselines.load(path)


# --- 6. an implementation module that fails at import or in its provider is a usage error naming the line -------------
@pytest.mark.parametrize("source, words", [
    ("raise RuntimeError('broken at import')\n", "cannot import 'mine:impls': RuntimeError: broken at import"),
    ("def impls(:\n", "cannot import 'mine:impls': SyntaxError"),
    ("import sys\ndef impls():\n    sys.exit(3)\n", "mine:impls() raised SystemExit: 3"),
    ("import sys\nsys.exit(0)\n", "cannot import 'mine:impls': SystemExit: 0"),
])
def test_a_broken_implementation_module_is_a_usage_error(env, source, words):
    (env.path / "mine.py").write_text(source)
    env.makefile(".yaml", small=PLUGIN_SMALL.replace("impls: [torch, customized, standard]", "impls: ['mine:impls']"))
    result = env.runpytest_subprocess("--moeperf", "small.yaml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*small.yaml:*: key 'impls': implementation 'mine:impls': *{words}*"])
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()


def test_an_interpreter_that_cannot_run_the_kernels_is_a_usage_error_that_says_what_to_change(env, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # the CPU path, on a GPU machine too
    env.makeconftest("from pytest_moeperf.oracle import interpreter\n"  # as Triton 3.6 with NumPy 2.4 answers
                     "interpreter.problem = lambda: 'install numpy<2.4, or Triton 3.9'\n")
    env.makefile(".yaml", small=PLUGIN_SMALL)
    result = env.runpytest_subprocess("--moeperf", "small.yaml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*small.yaml:*: key 'impls': implementation 'customized': *the built-in Triton "
                                 "implementations: install numpy<2.4, or Triton 3.9*"])
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()


def test_the_interpreter_probe_fails_exactly_with_a_triton_that_cannot_loop_up_to_an_argument_under_numpy_2_4():
    import numpy
    import triton

    code = "from pytest_moeperf.oracle import interpreter; print(interpreter.problem())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")).stdout.strip()
    numpy_v, triton_v = (tuple(int(x) for x in m.__version__.split(".")[:2]) for m in (numpy, triton))
    if numpy_v < (2, 4) or triton_v >= (3, 9):  # seen working: Triton 3.6 with NumPy 2.3, Triton 3.9 with 2.4
        assert out == "None"
    elif triton_v <= (3, 6):  # seen failing: Triton 3.6 with NumPy 2.4.6 (here) and 2.5.2 (the H200 image)
        assert "triton-lang/triton#9171" in out and "install numpy<2.4" in out, out
    else:
        pytest.skip(f"Triton {triton.__version__} with NumPy {numpy.__version__} not seen either way")


# --- 7. YAML errors quote little, and alias bombs are refused ---------------------------------------------------------
BOMB = """a: &a ["x","x","x","x","x","x","x","x","x"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
name: *h
"""


def test_an_alias_bomb_is_refused_quickly_and_briefly(tmp_path):
    import time

    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    start = time.perf_counter()
    with pytest.raises(scenario.ScenarioError) as e:
        scenario.load(path)
    assert time.perf_counter() - start < 5
    assert "expands to more than 10000 values" in str(e.value) and len(str(e.value)) < 500


def test_a_long_bad_value_is_quoted_short(tmp_path):
    path = tmp_path / "long.yaml"
    path.write_text("model: mistralai/Mixtral-8x7B-Instruct-v0.1\nseed: [" + ", ".join(["123456789"] * 5000) + "]\n")
    with pytest.raises(scenario.ScenarioError) as e:
        scenario.load(path)
    assert "key 'seed': must be an integer, got [123456789, 123456789" in str(e.value) and len(str(e.value)) < 400


# --- 8. a config.json with topk > experts is the same usage error as the shape form -----------------------------------
def test_a_config_json_with_more_picks_than_experts_is_refused_like_the_shape_form(tmp_path):
    import json

    (tmp_path / "config.json").write_text(json.dumps({"num_local_experts": 4, "num_experts_per_tok": 8,
                                                      "hidden_size": 64, "intermediate_size": 128}))
    (tmp_path / "cfg.yaml").write_text("model: config.json\n")
    with pytest.raises(scenario.ScenarioError, match=r"cfg.yaml:1: key 'model': config file .*config.json: "
                                                     r"topk=8 exceeds num_experts=4"):
        scenario.load(tmp_path / "cfg.yaml")
    (tmp_path / "shape.yaml").write_text("shape: {num_experts: 4, topk: 8, hidden_size: 64, intermediate_size: 1}\n")
    with pytest.raises(scenario.ScenarioError, match="topk=8 exceeds num_experts=4"):
        scenario.load(tmp_path / "shape.yaml")


# --- 10. --update-baselines that writes nothing says why --------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the timing tests run and write baselines")
def test_update_baselines_without_a_gpu_says_it_wrote_nothing_and_why(env):
    env.makefile(".yaml", small=PLUGIN_SMALL)
    result = env.runpytest("--moeperf", "small.yaml", "--update-baselines", "-k", "timing and M1")
    result.stdout.fnmatch_lines(["*pytest-moeperf: --update-baselines wrote nothing: there is no CUDA GPU here, so "
                                 "every timing test was skipped*"])


# --- 9. index inputs: bounded, any width, an empty batch -----------------------------------------------------------
def _routed(device, M=4, H=16, E=8, k=2, ids_dtype=torch.int32):
    torch.manual_seed(9)
    hidden = torch.randn(M, H, device=device).to(torch.bfloat16)
    picks = [torch.randperm(E, device=device)[:k] for _ in range(M)] or [torch.empty(0, k, device=device)]
    ids = torch.stack(picks).reshape(M, k).to(ids_dtype)
    return hidden, ids, torch.rand(M, k, device=device)


@pytest.mark.parametrize("bad", [-3, "rows", 10**6])
def test_an_out_of_range_inverse_index_reads_no_row(bad, device):
    hidden, ids, w = _routed(device)
    permuted, _, offsets, inv, _ = kernels.moe_permute(hidden, None, ids, 8, align_block_size=4)
    bad = permuted.shape[0] if bad == "rows" else bad
    want = torch.empty_like(hidden)
    w_dropped = w.clone()
    w_dropped[0, 0] = 0  # the route with the bad index adds nothing; its neighbours are untouched
    kernels.moe_unpermute(want, permuted, w_dropped, inv, offsets)
    inv[0] = bad
    got = torch.empty_like(hidden)
    kernels.moe_unpermute(got, permuted, w, inv, offsets)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    got2 = torch.empty_like(hidden)
    kernels._moe_unpermute_and_reduce(got2, permuted, inv, w, False)
    assert torch.isfinite(got2.float()).all()
    torch.testing.assert_close(got2[1:], want[1:], rtol=0, atol=0)


def test_an_empty_batch_round_trips_on_both_paths(device):
    hidden, ids, w = _routed(device, M=0)
    permuted, _, offsets, inv, _ = kernels.moe_permute(hidden, None, ids, 8, align_block_size=4)
    out = torch.empty_like(hidden)
    assert kernels.moe_unpermute(out, permuted, w, inv, offsets) is out and out.shape == (0, 16)
    permuted, _, _, _, inv_perm = kernels._moe_permute(hidden, None, ids, 8, None, 4)
    kernels._moe_unpermute_and_reduce(out, permuted, inv_perm, w, False)
    with pytest.raises(ValueError, match=r"inv_perm must be 1-D int32 or int64 with num_tokens\*topk entries"):
        kernels._moe_unpermute_and_reduce(out, permuted, torch.zeros(2, dtype=torch.int32, device=device), w, False)


def test_an_int64_id_past_two_to_the_32_is_no_expert(device):
    hidden, ids, _ = _routed(device, ids_dtype=torch.int64)
    ids[0, 0] = 2**32 + 1  # its low 32 bits are expert 1
    got = kernels.moe_permute(hidden, None, ids, 8, align_block_size=4)
    want = reference.moe_permute(hidden, None, ids, 8, -1, None, 4)
    assert torch.equal(got[2], want[2]), (got[2], want[2])  # expert_first_token_offset: the route counted nowhere
    sorted_ids, expert_ids, _ = kernels.moe_align_block_size(ids, 4, 8)
    want_sorted, want_experts, _ = reference.moe_align_block_size(ids, 4, 8)
    assert torch.equal(sorted_ids, want_sorted) and torch.equal(expert_ids, want_experts)


def test_the_inverse_index_may_be_int64_as_vllms_python_path_makes_it(device):
    hidden, ids, w = _routed(device)
    permuted, _, offsets, inv, _ = kernels.moe_permute(hidden, None, ids, 8, align_block_size=4)
    want, got = torch.empty_like(hidden), torch.empty_like(hidden)
    kernels.moe_unpermute(want, permuted, w, inv, offsets)
    kernels._moe_unpermute_and_reduce(got, permuted, inv.long(), w, False)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
