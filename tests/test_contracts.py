"""Contracts by name: vLLM's current moe_permute (no alignment, a permuted_idx as 5th output) beside the legacy one,
told apart by the signature or named in the scenario, and permutes whose rows inside an expert come in any order."""
import sys

import pytest
import torch

import moeperf_kernels as kernels
from pytest_moeperf.inputs import problem
from pytest_moeperf.oracle import impls, reference
from pytest_moeperf.spec import scenario

SMALL = """
shape: {num_experts: 8, topk: 2, hidden_size: 64, intermediate_size: 128}
batch_sizes: [5]
"""


@pytest.fixture(params=["none", "ep"])
def p(request, tmp_path, device):
    text = SMALL + ("ep_size: 2\nep_rank: 1\n" if request.param == "ep" else "")
    (tmp_path / "s.yaml").write_text(text)
    return problem.build(scenario.load(tmp_path / "s.yaml"), "bf16", 5, device)


def wrong_owner_permute(*args, **kwargs):
    """The project's current-vintage permute with row 0 claimed by no route: a wrong permuted_idx."""
    perm, scale, offs, inv, owner = kernels.current.moe_permute(*args, **kwargs)
    owner = owner.clone()
    owner[0] = inv.numel()
    return perm, scale, offs, inv, owner


def shuffled_permute(hidden_states, a1q_scale, topk_ids, n_expert, n_local_expert=-1, expert_map=None,
                     align_block_size=None, fill_invalid_expert=-1, permuted_hidden_states=None, scratch=None):
    """The legacy signature, but each expert's rows in reverse route order (as an atomics-based sort may leave
    them): the same rows, elsewhere inside the expert."""
    perm, scale, offs, inv, m = kernels.moe_permute(hidden_states, a1q_scale, topk_ids, n_expert, n_local_expert,
                                                    expert_map, align_block_size, fill_invalid_expert)
    perm, inv = perm.clone(), inv.clone()
    V = int(offs[-1])
    local = torch.nonzero(inv < V).flatten()
    rows = inv[local].long()
    for e in range(offs.numel() - 1):
        mine = (rows >= int(offs[e])) & (rows < int(offs[e + 1]))
        routes, their_rows = local[mine], rows[mine]
        order = torch.argsort(their_rows)
        new_rows = their_rows[order].flip(0)
        inv[routes[order]] = new_rows.to(inv.dtype)
        perm[new_rows] = hidden_states[routes[order] // topk_ids.shape[1]].to(perm.dtype)
    return perm, scale, offs, inv, m


def test_the_contract_is_read_from_the_permute_signature():
    assert impls.contract_of(kernels.moe_permute) == "vllm-legacy"
    assert impls.contract_of(kernels.current.moe_permute) == "vllm"
    assert impls.contract_of(None) == "vllm-legacy"


def test_the_projects_kernels_pass_both_contracts(p):
    """The legacy signature (moeperf_kernels) and vLLM's current one (moeperf_kernels.current), each checked against
    its own contract, with the unpermute both share."""
    impls.CustomizedContract("legacy", kernels.moe_permute, kernels.moe_unpermute).check("permute", p)
    impl = impls.CustomizedContract("current", kernels.current.moe_permute, kernels.current.moe_unpermute,
                                    contract="vllm")
    impl.check("permute", p)
    impl.check("unpermute", p)  # end to end through its own (unaligned) permute
    wrong = impls.CustomizedContract("wrong", wrong_owner_permute, contract="vllm")
    with pytest.raises(AssertionError, match="permuted_idx: rows \\[0\\] do not name the route that owns them"):
        wrong.check("permute", p)


def test_the_current_contract_called_the_legacy_way_or_the_reverse_fails(p):
    # the harness calls a legacy permute with align_block_size positionally: the current one would take it as
    # permuted_hidden_states; named wrongly, each fails clearly instead of passing
    with pytest.raises(AssertionError):
        impls.CustomizedContract("as-current", kernels.moe_permute, contract="vllm").check("permute", p)


def test_rows_in_any_order_inside_an_expert_pass_only_when_declared(p):
    impls.CustomizedContract("free", shuffled_permute, permute_order="any").check("permute", p)
    local = reference.local_expert_of_routes(p.topk_ids, p.E, p.expert_map)
    if torch.bincount(local[local >= 0]).max() < 2:
        pytest.skip("no local expert got two routes: nothing to reorder")
    with pytest.raises(AssertionError, match="inv_permuted_idx of local routes"):
        impls.CustomizedContract("strict", shuffled_permute).check("permute", p)


def test_rows_outside_their_expert_fail_even_in_any_order(p):
    def crossing(*args, **kwargs):
        perm, scale, offs, inv, m = kernels.moe_permute(*args, **kwargs)
        inv = inv.clone()
        V = int(offs[-1])
        local = torch.nonzero(inv < V).flatten()
        first, last = local[inv[local].argmin()], local[inv[local].argmax()]  # the first and the last expert's
        inv[first], inv[last] = inv[last].clone(), inv[first].clone()
        return perm, scale, offs, inv, m

    local = reference.local_expert_of_routes(p.topk_ids, p.E, p.expert_map)
    if torch.unique(local[local >= 0]).numel() < 2:
        pytest.skip("one local expert only: no row can leave its expert")
    with pytest.raises(AssertionError, match="outside their expert's region"):
        impls.CustomizedContract("crossing", crossing, permute_order="any").check("permute", p)


@pytest.mark.parametrize("entry, words", [
    ("{name: x, path: 'mine:impls', contract: vllm-2024}", "key 'impls[].contract': unknown value 'vllm-2024'"),
    ("{name: x, path: 'mine:impls', permute_order: random}", "key 'impls[].permute_order': unknown value 'random'"),
])
def test_contract_and_permute_order_take_only_their_values(tmp_path, entry, words):
    (tmp_path / "s.yaml").write_text(SMALL + f"impls: [{entry}]\n")
    with pytest.raises(scenario.ScenarioError, match=words.replace("[", "\\[").replace("]", "\\]")):
        scenario.load(tmp_path / "s.yaml")


@pytest.fixture
def forget_contracts_mine():
    yield
    sys.modules.pop("contracts_mine", None)  # in-process pytester runs of other tests may import a 'mine' of theirs


def test_a_named_contract_wins_over_the_signature(tmp_path, monkeypatch, forget_contracts_mine):
    (tmp_path / "contracts_mine.py").write_text("from moeperf_kernels import moe_permute\n"
                                                "def impls():\n    return {'permute': moe_permute}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "s.yaml").write_text(SMALL + "impls: [{name: x, path: 'contracts_mine:impls', permute_order: any}]\n")
    (built,) = impls.for_scenario(scenario.load(tmp_path / "s.yaml"))
    assert (built.contract, built.permute_order) == ("vllm-legacy", "any")
    (tmp_path / "t.yaml").write_text(SMALL + "impls: [{name: x, path: 'contracts_mine:impls', contract: vllm}]\n")
    (built,) = impls.for_scenario(scenario.load(tmp_path / "t.yaml"))
    assert built.contract == "vllm"
