"""benchmarks/peers.py on the CPU: TransformerEngine's permutation modules load from its files alone, the table puts
each peer beside ours with the ratio, and our adapter round-trips (the peers themselves run on a GPU only)."""
import sys
import zipfile

import pytest
import torch

from benchmarks import peers
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
    rows = [{"shape": "mixtral", "dtype": "fp8_w8a8", "l2": "cold", "M": 64, "permute": {"ours": 2.0, "te": 6.0},
             "unpermute": {"ours": 2.5, "te": 2.0, "moe_ops": 5.0}, "permute_pct": 12.0, "unpermute_pct": 9.6}]
    line = peers.table(rows, "plain").splitlines()[-1].split()
    assert line == ["mixtral", "fp8_w8a8", "cold", "64", "2.00", "(12%)", "6.00", "3.00", "-", "-",
                    "2.50", "(10%)", "2.00", "0.80", "5.00", "2.00"]


@pytest.fixture
def small_shape(tmp_path, monkeypatch):
    (tmp_path / "small.yaml").write_text(
        "shape: {num_experts: 8, topk: 2, hidden_size: 256, intermediate_size: 128}\nbatch_sizes: [5]\n")
    monkeypatch.setattr(peers.timing, "input_sets_for_cold_l2", lambda nbytes, device: 3)  # no L2 on a CPU
    return scenario.load(tmp_path / "small.yaml")


@pytest.mark.parametrize("dtype", ["bf16", "fp8_w8a8"])
def test_our_adapter_round_trips(small_shape, device, dtype):
    (p,) = peers.problems(small_shape, dtype, 5, "warm", device)
    permute, unpermute_call = peers.calls("ours", p)
    permuted, scale = permute()[:2]
    assert permuted.shape == (10, 256) and permuted.dtype == p.hidden.dtype
    if dtype == "fp8_w8a8":  # 1x128 scales on every shape, permuted with the rows
        assert p.scale.shape == (5, 2) and scale.shape == (10, 2)
    assert peers.round_trip_error(p, unpermute_call) < 0.02


def test_our_unpermute_allocates_its_output_per_call_as_the_peers_do(small_shape, device):
    """Inside a timed graph the peers' outputs reuse one freed block; ours must not write a buffer of its own per input
    set instead (cold, that alone cost it up to 18% on an H100)."""
    (p,) = peers.problems(small_shape, "bf16", 5, "warm", device)
    unpermute = peers.calls("ours", p)[1]()
    first, second = unpermute(), unpermute()
    assert first.data_ptr() != second.data_ptr() and torch.equal(first, second)


def test_cold_rows_rotate_input_sets_made_apart(small_shape, device):
    sets = peers.problems(small_shape, "bf16", 5, "cold", device)
    assert len(sets) == 3 and len({p.hidden.data_ptr() for p in sets}) == 3
    assert not torch.equal(sets[0].hidden, sets[1].hidden)


def test_a_dtype_or_l2_it_does_not_know_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        peers.main(["--dtypes", "bf16,fp4"])
    assert e.value.code == 2 and "fp4: not one of bf16, fp8_w8a8" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        peers.main(["--l2", "lukewarm"])
    assert "lukewarm: not one of warm, cold" in capsys.readouterr().err
