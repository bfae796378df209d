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
