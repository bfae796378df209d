"""Implementations by name: the built-ins and third parties register through one hook."""
import json

import pytest

from pytest_moeperf.oracle import impls, registry
from tests.fake_gpu import FAKE_TIMER, SMALL, run_timed

REGISTERING = FAKE_TIMER + '''
import mykernel
def pytest_moeperf_register_impls(registry):
    registry.add("mine", mykernel.provider, contract="vllm")
'''
MYKERNEL = """
import torch
from moeperf_kernels import moe_permute, moe_unpermute
def permute(hidden_states, a1q_scale, topk_ids, n_expert, n_local_expert=-1, expert_map=None,
            permuted_hidden_states=None, scratch=None):
    perm, scale, offs, inv, _ = moe_permute(hidden_states, a1q_scale, topk_ids, n_expert, n_local_expert, expert_map)
    R, P = inv.numel(), perm.shape[0]
    owner = torch.full((P,), R, dtype=torch.int32, device=inv.device)
    local = inv < offs[-1]
    owner[inv[local].long()] = torch.arange(R, dtype=torch.int32, device=inv.device)[local]
    return perm, scale, offs, inv, owner
def provider():
    return {"permute": permute, "unpermute": moe_unpermute}
"""


def test_the_built_ins_are_registered_like_anyone_else():
    reg = registry.builtin()
    assert reg.names() == ["torch", "standard", "customized", "customized_scratch"]
    assert reg.get("standard").kind == "standard" and reg.get("customized_scratch").scratch
    with pytest.raises(ValueError, match="'customized' is registered already"):
        reg.add("customized", lambda: {})
    with pytest.raises(ValueError, match="kind must be one of customized, standard, got 'cuda'; contract must be one "
                                         "of vllm, vllm-legacy, got 'v9'"):
        reg.add("x", lambda: {}, kind="cuda", contract="v9")


def test_an_unknown_name_lists_the_registered_ones(tmp_path):
    from pytest_moeperf.spec import scenario

    (tmp_path / "s.yaml").write_text(SMALL.replace("impls: [torch, customized, standard]", "impls: [cuda]"))
    with pytest.raises(impls.ImplError, match=r"s.yaml:5: key 'impls': unknown implementation 'cuda'; registered: "
                                              r"torch, standard, customized, customized_scratch"):
        impls.for_scenario(scenario.load(tmp_path / "s.yaml"))


def test_a_third_party_registers_through_the_hook_and_every_scenario_gates_it(env):
    env.makepyfile(mykernel=MYKERNEL)
    env.makeconftest(REGISTERING)
    env.makefile(".yaml", named=SMALL.replace("impls: [torch, customized, standard]", "impls: [mine]"),
                 every=SMALL.replace("impls: [torch, customized, standard]\n", ""))
    result = env.runpytest("--moeperf", "named.yaml", "every.yaml", "-k", "correctness and mine")
    result.assert_outcomes(passed=4)  # permute at M = 1 and 3, in both scenarios (the one naming none too)
    listed = env.runpytest("--moeperf", "every.yaml", "--collect-only", "-q").stdout.str()
    assert "correctness::permute[mine-bf16-M1]" in listed and "correctness::permute[customized-bf16-M1]" in listed


def test_a_bad_registration_is_a_usage_error(env):
    env.makeconftest(FAKE_TIMER + '''
def pytest_moeperf_register_impls(registry):
    registry.add("mine", "not callable")
''')
    env.makefile(".yaml", small=SMALL)
    result = env.runpytest("--moeperf", "small.yaml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*pytest_moeperf_register_impls: the provider must be callable, got 'not callable'*"])


def test_a_registered_implementation_is_compared_with_the_revisions_provider(env):
    import subprocess

    env.makepyfile(mykernel=MYKERNEL)
    env.makeconftest(REGISTERING)
    env.makefile(".yaml", small=SMALL.replace("impls: [torch, customized, standard]", "impls: [mine]"))
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "r"]):
        subprocess.run(["git", "-C", str(env.path), "-c", "user.email=t@t", "-c", "user.name=t", *args], check=True)
    result = run_timed(env, "-k", "timing", "--moeperf-against", "HEAD", "--moeperf-json", "o.json")
    result.assert_outcomes(passed=2)
    assert {r["impl"] for r in json.loads((env.path / "o.json").read_text())["results"]} == {"mine"}
