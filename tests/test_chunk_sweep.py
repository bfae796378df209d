"""benchmarks/chunk_sweep.py on the CPU: what it compares across chunk counts, and its usage errors (the sweep itself
runs on a GPU only)."""
import pytest
import torch

from benchmarks import chunk_sweep


def test_a_permute_is_compared_by_its_index_and_the_rows_each_route_got():
    permuted = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], dtype=torch.bfloat16)
    offsets, m_indices = torch.tensor([0, 2, 3]), torch.tensor([0, 0, 1])
    inv = torch.tensor([2, 0, 1], dtype=torch.int32)
    got = chunk_sweep.outputs("permute", (permuted, None, offsets, inv, m_indices))
    assert [t is x for t, x in zip(got[:3], (offsets, inv, m_indices))] == [True] * 3
    assert torch.equal(got[3], permuted.view(torch.uint8)[[2, 0, 1]])
    # a dropped route (row 3 >= offsets[-1]) got no copy: its row is not compared
    dropped = chunk_sweep.outputs("permute", (permuted, None, torch.tensor([0, 1, 2]), torch.tensor([3, 0, 1]),
                                              m_indices))
    assert torch.equal(dropped[3], permuted.view(torch.uint8)[[0, 1]])
    align = (torch.arange(4), torch.arange(2), torch.tensor([4]))
    assert chunk_sweep.outputs("align", align) == list(align)


@pytest.mark.parametrize("argv, message", [
    (["--scenarios", "mixtral"], "--scenarios takes name:dtype pairs, got 'mixtral'"),
    (["--chunks", "64,many"], "--chunks and --batch-sizes take comma-separated integers"),
])
def test_bad_arguments_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        chunk_sweep.main(argv)
    assert stop.value.code == 2
    assert message in capsys.readouterr().err
