"""Implementations by name. The built-ins register here through the same hook third parties use:

    # conftest.py, or a module your own pytest plugin (pytest11 entry point) loads
    def pytest_moeperf_register_impls(registry):
        from mypkg import moe
        registry.add("mine", lambda: {"permute": moe.permute, "unpermute": moe.unpermute}, contract="vllm")

A scenario then names it (`impls: [mine, customized]`), and one that names none gates every registered one.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

from pytest_moeperf.oracle import reference, reference_experts
from pytest_moeperf.spec.scenario import CONTRACTS, PERMUTE_ORDERS

KINDS = ("customized", "standard")  # vLLM's fused moe_permute / moe_unpermute, or its Python path (_moe_permute ...)


@dataclasses.dataclass(frozen=True)
class Registered:
    name: str
    provider: Callable  # () -> {op: callable}; with needs_kernels, (kernels package) -> {op: callable}
    kind: str = "customized"
    contract: str | None = None  # None: read from the permute's signature
    permute_order: str = "stable"
    scratch: bool = False  # its permute runs with a pre-allocated MoEPermuteScratch of the kernels package
    align_any_order: bool = True  # its align may order routes freely inside an expert (vLLM's atomics do)
    needs_kernels: bool = False  # the provider takes the kernels package to use (this project's, or a reference's)


class Registry:
    def __init__(self):
        self._entries: dict[str, Registered] = {}

    def add(self, name: str, provider: Callable, *, kind: str = "customized", contract: str | None = None,
            permute_order: str = "stable", scratch: bool = False, align_any_order: bool = True,
            needs_kernels: bool = False) -> None:
        """Register an implementation: `provider()` returns a dict mapping some of the ops to callables with vLLM's
        signatures. A name may be registered once."""
        problems = []
        if not isinstance(name, str) or not name or ":" in name or name != name.strip():
            problems.append(f"a name is a non-empty word without ':', got {name!r}")
        elif name in self._entries:
            problems.append(f"{name!r} is registered already")
        if not callable(provider):
            problems.append(f"the provider must be callable, got {provider!r}")
        if kind not in KINDS:
            problems.append(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if contract is not None and contract not in CONTRACTS:
            problems.append(f"contract must be one of {', '.join(CONTRACTS)}, got {contract!r}")
        if permute_order not in PERMUTE_ORDERS:
            problems.append(f"permute_order must be one of {', '.join(PERMUTE_ORDERS)}, got {permute_order!r}")
        if problems:
            raise ValueError(f"pytest_moeperf_register_impls: {'; '.join(problems)}")
        self._entries[name] = Registered(name, provider, kind, contract, permute_order, scratch, align_any_order,
                                         needs_kernels)

    def names(self) -> list[str]:
        return list(self._entries)

    def get(self, name: str) -> Registered | None:
        return self._entries.get(name)


def _customized(kernels) -> dict:
    return {"permute": kernels.moe_permute, "unpermute": kernels.moe_unpermute, "fused_experts": kernels.fused_experts}


def _customized_scratch(kernels) -> dict:
    return {"permute": kernels.moe_permute}


def _standard(kernels) -> dict:
    return {"permute": kernels._moe_permute, "unpermute": kernels._moe_unpermute_and_reduce,
            "align": kernels.moe_align_block_size}


def _reference() -> dict:
    return {"permute": reference.moe_permute, "unpermute": reference.moe_unpermute,
            "align": reference.moe_align_block_size, "fused_experts": reference_experts.fused_experts}


def add_builtins(registry: Registry) -> None:
    """The project's own: the PyTorch oracle (`torch`), vLLM's Python path on the Triton align kernel (`standard`),
    the fused Triton kernels (`customized`) and the same with a pre-allocated scratch (`customized_scratch`)."""
    registry.add("torch", _reference, contract="vllm-legacy", align_any_order=False)
    registry.add("standard", _standard, kind="standard", needs_kernels=True, align_any_order=False)
    registry.add("customized", _customized, contract="vllm-legacy", needs_kernels=True, align_any_order=False)
    registry.add("customized_scratch", _customized_scratch, contract="vllm-legacy", scratch=True, needs_kernels=True,
                 align_any_order=False)


def builtin() -> Registry:
    """A registry of the built-ins alone (for scripts and tests that run without pytest's hooks)."""
    registry = Registry()
    add_builtins(registry)
    return registry

