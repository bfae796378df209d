"""benchmarks/peers.py on the CPU: TransformerEngine's permutation modules load from its files alone, the table puts
each peer beside ours with the ratio, and our adapter round-trips (the peers themselves run on a GPU only)."""
import sys
import zipfile

import pytest

from benchmarks import peers
from pytest_moeperf.inputs import problem
from pytest_moeperf.spec import scenario

COMMON = "KERNEL = 'common'\n"
TORCH_SIDE = ("from transformer_engine.common.triton.permutation import KERNEL\n\n"
              "def make_row_id_map(routing_map, num_tokens, num_experts):\n    return KERNEL\n")


def fake_te(root):
    files = {"transformer_engine/__init__.py": "raise ImportError('loads the CUDA libraries')\n",
             "transformer_engine/common/triton/permutation.py": COMMON,
             "transformer_engine/pytorch/triton/permutation.py": TORCH_SIDE}
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return files


@pytest.mark.parametrize("packed", [False, True])
def test_only_the_permutation_modules_of_transformer_engine_are_loaded(tmp_path, packed):
    files = fake_te(tmp_path / "te")
    source = tmp_path / "te"
    if packed:
        source = tmp_path / "transformer_engine-0-py3-none-any.whl"
        with zipfile.ZipFile(source, "w") as wheel:
            for name, text in files.items():
                wheel.writestr(name, text)
    before = set(sys.modules)
    try:
        module = peers.load_te(source, tmp_path / "extracted")
        assert module.make_row_id_map(None, 1, 1) == "common"  # its import of the common kernels resolved
        assert module.__name__ == "transformer_engine.pytorch.triton.permutation"
    finally:
        for name in set(sys.modules) - before:
            del sys.modules[name]


def test_the_table_puts_each_peer_beside_ours_with_the_ratio():
    rows = [{"shape": "mixtral", "M": 64, "permute": {"ours": 2.0, "te": 6.0}, "unpermute": {"ours": 2.5, "te": 2.0,
             "moe_ops": 5.0}, "permute_pct": 12.0, "unpermute_pct": 9.6}]
    line = peers.table(rows, "plain").splitlines()[-1].split()
    assert line == ["mixtral", "64", "2.00", "(12%)", "6.00", "3.00", "-", "-",
                    "2.50", "(10%)", "2.00", "0.80", "5.00", "2.00"]


def test_our_adapter_round_trips(tmp_path, device):
    (tmp_path / "s.yaml").write_text("shape: {num_experts: 8, topk: 2, hidden_size: 64, intermediate_size: 128}\n"
                                     "batch_sizes: [5]\n")
    p = problem.build(scenario.load(tmp_path / "s.yaml"), "bf16", 5, device)
    permute, unpermute_call = peers.calls("ours", p)
    assert permute()[0].shape == (10, 64)
    assert peers.round_trip_error(p, unpermute_call) < 0.02
