"""benchmarks/index_paths.py on the CPU: the way each permute timing test builds its index on a GPU model, from the
launch decision with the kernels' launches stubbed, and nothing of the stubbing left behind."""
from pathlib import Path

import torch

from benchmarks import index_paths
from moeperf_kernels import _launch, permute, tuning

ROOT = Path(__file__).resolve().parent.parent
H100 = "NVIDIA_H100_80GB_HBM3"


def ways(name: str, device_name: str = H100) -> dict[tuple[str, int], str]:
    return {(p.dtype, p.M): p.way for p in index_paths.paths([ROOT / "scenarios" / f"{name}.yaml"], device_name, 132)}


def test_each_batch_size_of_a_scenario_gets_the_way_its_gpu_would_launch():
    """DeepSeek-V3's padded fp8 permute with the H100's configs: pairwise up to 32 routes, compared ranks up to 1024
    (the H100 A/B gates behind _launch.rank_fits), count_kernel above; over 8 ranks (a 64-column count) the ranks
    stop at 512 routes; Mixtral's unpadded batches count their rows straight from the routes."""
    v3 = ways("deepseek-v3")
    assert [v3[("fp8_w8a8", M)] for M in (1, 4, 8, 128, 256, 4096)] == ["pairs", "pairs", "ranks", "ranks", "count",
                                                                         "count"]
    ep8 = ways("deepseek-v3-ep8")
    assert [ep8[("fp8_w8a8", M)] for M in (1, 64, 96, 256)] == ["ranks", "ranks", "buckets", "count"]
    assert ways("mixtral")[("bf16", 1)] == "direct"
    assert ways("qwen2-57b")[("bf16", 128)] == "buckets"  # 64 comparisons a thread over 128 columns: 1.2 x slower


def test_the_gpu_it_decides_for_is_forgotten_afterwards():
    before = (_launch.INTERPRETED, permute._rows, permute.launch_index, tuning.device_name(torch.device("cpu")))
    ways("deepseek-v3", "Some_Other_GPU")  # no tuned configs: the defaults
    after = (_launch.INTERPRETED, permute._rows, permute.launch_index, tuning.device_name(torch.device("cpu")))
    assert after == before


def test_the_command_line_prints_a_line_per_test(capsys):
    assert index_paths.main([str(ROOT / "scenarios" / "deepseek-v3.yaml")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "deepseek-v3 fp8_w8a8 M=1 routes=8 pairs"
    assert len(lines) == 18
