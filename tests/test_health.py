"""Reading nvidia-smi's answers about throttling and other processes (pytest_moeperf/health.py)."""
from pytest_moeperf.measure import health


def test_slowdown_reasons_name_only_the_bits_that_slow_a_kernel():
    assert health.slowdown_reasons("0x0000000000000000") == []
    assert health.slowdown_reasons("0x0000000000000001") == []  # GPU idle: not a slowdown
    assert health.slowdown_reasons("0x0000000000000024") == ["software power cap", "software thermal slowdown"]
    assert health.slowdown_reasons("0x0000000000000048") == ["hardware slowdown", "hardware thermal slowdown"]
    assert health.slowdown_reasons("[N/A]") == []


def test_compute_pids_are_parsed_from_nvidia_smi_output():
    assert health.parse_pids("1234\n 5678 \n\n") == [1234, 5678]
    assert health.parse_pids("No running processes found\n") == []


def test_problems_say_why_a_measurement_may_not_be_the_kernels_fault():
    assert health.problems({}) == []
    assert health.problems({"slowdown": [], "other_processes": None}) == []
    assert health.problems({"slowdown": ["hardware slowdown"], "other_processes": [7, 9]}) == [
        "GPU throttled (hardware slowdown)", "GPU shared with process(es) 7, 9"]


def test_the_runs_own_xdist_workers_are_not_other_processes(monkeypatch, tmp_path):
    # with more workers than GPUs every worker saw its siblings as "other processes" and excused every regression
    monkeypatch.setattr(health.tempfile, "gettempdir", lambda: str(tmp_path))
    monkeypatch.setenv(health.RUN_ID_VAR, "run-a")
    health.register_worker("run-a")
    (tmp_path / "pytest-moeperf-run-run-a" / "4242").touch()  # a sibling worker
    (tmp_path / "pytest-moeperf-run-run-b").mkdir()
    (tmp_path / "pytest-moeperf-run-run-b" / "77").touch()  # a worker of another run on the same machine
    assert health.run_workers() == {health.os.getpid(), 4242}
    monkeypatch.setattr(health.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    monkeypatch.setattr(health.env, "physical_index", lambda index: index)
    monkeypatch.setattr(health.env, "nvidia_smi", lambda index: {"clocks_event_reasons.active": "0x0"})
    monkeypatch.setattr(health, "_compute_pids", lambda index: [health.os.getpid(), 4242, 77])
    h = health.snapshot(0)
    assert h["other_processes"] == [77]
    assert health.problems(h) == ["GPU shared with process(es) 77"]
    monkeypatch.delenv(health.RUN_ID_VAR)
    assert health.run_workers() == set()  # outside xdist: this process only


def test_the_environment_a_worker_sends_crosses_execnet():
    """An xdist worker sends its GPU's environment to the controller through execnet, which refuses str subclasses
    such as torch.__version__ (on an H200 every `-n 4` worker hung at the end of its session before this)."""
    import torch
    from execnet import gateway_base

    from pytest_moeperf.measure import env, timing

    sent = timing.CudaTimer().environment() if torch.cuda.is_available() else env.snapshot()
    assert gateway_base.loads_internal(gateway_base.dumps_internal(sent)) == sent
