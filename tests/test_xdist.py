"""xdist end to end (a fake timer, tests/fake_gpu.py): workers, their GPUs, what they send the controller."""
import json
import os

import pytest

from tests.fake_gpu import FAKE_TIMER, SMALL, baseline_file

# The torch implementations only: these runs are about xdist, and their workers may see no GPU (gpus_hidden, or a
# worker pinned to a GPU index the machine lacks), where the Triton kernels would run under the interpreter, which
# Triton 3.6 cannot with NumPy >= 2.4 (a GPU machine's image has both; oracle/interpreter.py).
TORCH_ONLY = SMALL.replace("impls: [torch, customized, standard]", "impls: [torch]")


@pytest.fixture
def gpus_hidden(monkeypatch):
    """The subprocess runs see no GPU, as on a CPU machine: with one GPU, -n 2 with --update-baselines is refused
    (test_workers_sharing_a_gpu_are_told_so_and_may_not_record), and the fake timer needs none."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def test_xdist_workers_send_results_to_the_controller_which_writes_once(env, gpus_hidden):
    env.makefile(".yaml", small=TORCH_ONLY)
    env.makeconftest(FAKE_TIMER)
    result = env.runpytest_subprocess("--moeperf", "small.yaml", "-n", "2", "--update-baselines", "-k", "timing",
                                      "--moeperf-json", "out.json")
    result.assert_outcomes(passed=4)
    assert len(json.loads(baseline_file(env).read_text())["entries"]) == 4
    assert len(json.loads((env.path / "out.json").read_text())["results"]) == 4
    result.stdout.fnmatch_lines(["*wrote 4 baseline entries*"])
    again = env.runpytest_subprocess("--moeperf", "small.yaml", "-n", "2", "-k", "timing")
    again.assert_outcomes(passed=4)


def test_the_environment_recorded_under_xdist_is_a_workers_not_the_controllers(env, monkeypatch, gpus_hidden):
    env.makefile(".yaml", small=TORCH_ONLY)
    env.makeconftest(FAKE_TIMER)
    monkeypatch.setenv("FAKE_ENV_WHERE", "1")
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)  # when this test itself runs in an xdist worker
    result = env.runpytest_subprocess("--moeperf", "small.yaml", "-n", "2", "--update-baselines", "-k",
                                      "timing and M1", "--moeperf-json", "out.json")
    result.assert_outcomes(passed=2)
    recorded = json.loads(baseline_file(env).read_text())["environment"]
    assert recorded["measured_in"] in ("gw0", "gw1")
    assert json.loads((env.path / "out.json").read_text())["environments"]["FAKE_GPU"]["measured_in"] in ("gw0", "gw1")
    alone = env.runpytest_subprocess("--moeperf", "small.yaml", "--update-baselines", "-k", "timing and M1")
    alone.assert_outcomes(passed=2)
    assert json.loads(baseline_file(env).read_text())["environment"]["measured_in"] == "controller"


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

    env.makefile(".yaml", small=TORCH_ONLY)  # workers on "GPUs" 1 and 2 see none on a one-GPU machine
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

    env.makefile(".yaml", small=TORCH_ONLY)
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
