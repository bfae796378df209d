"""--moeperf-tune end to end (a fake timer that runs some configs faster, tests/fake_gpu.py): the config files it writes
and keeps, for the row kernels and fused_experts."""
import json

import pytest
import torch

from tests.conftest import DEVICE
from tests.fake_gpu import FAKE_TIMER, GEMM, SMALL, run_timed

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
        tuning.default_config("permute", 64, 2, 2, 2)


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
    assert tuning.launch_config("permute", 1, 64, 2, torch.bfloat16, device, E=8) == \
        tuning.default_config("permute", 64, 1, 2, 2)


def test_tuning_runs_alone(env):
    env.makefile(".yaml", small=SMALL)
    env.makeconftest(FAKE_TIMER)
    result = env.runpytest("--moeperf", "small.yaml", "--moeperf-tune", "--update-baselines")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert any("--moeperf-tune runs alone" in line for line in result.errlines)


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
