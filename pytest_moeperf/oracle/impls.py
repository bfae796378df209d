"""Implementations under test, by name, and how each is called and checked against its own contract.

Built in: `torch` (the reference), `standard` (vLLM's Python path on the Triton align kernel), `customized` (the
fused Triton kernels), `customized_scratch` (the same with a pre-allocated MoEPermuteScratch). A user
implementation is a dotted path 'package.module:function' to a function that takes no argument and returns a dict
with any of 'permute' (vLLM's moe_permute signature), 'unpermute' (moe_unpermute), 'align' (moe_align_block_size)
and 'fused_experts' (vLLM's fused_experts arguments and keywords); its align may order routes freely inside an
expert.
"""
from __future__ import annotations

import hashlib
import importlib
import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from pytest_moeperf.inputs import experts
from pytest_moeperf.inputs.problem import Problem
from pytest_moeperf.oracle import compare, reference, reference_experts
from pytest_moeperf.oracle.registry import Registered, Registry
from pytest_moeperf.oracle.registry import builtin as builtin_registry
from pytest_moeperf.spec.scenario import OPS, ImplSpec


class ImplError(ValueError):
    pass


def load_kernels():
    """The project's kernels package, imported on first use: TRITON_INTERPRET must be set before (pytest_configure
    does it on a CPU machine), and the plugin must load where kernels/ is not importable."""
    try:
        import moeperf_kernels
    except ImportError as e:
        raise ImplError("the built-in Triton implementations need the package moeperf_kernels, which pytest-moeperf "
                        "installs (pip install its checkout or wheel; pip install -e . inside the checkout) "
                        f"({e})") from None
    if os.environ.get("TRITON_INTERPRET") == "1":
        from pytest_moeperf.oracle import interpreter

        if (problem := interpreter.problem()) is not None:
            raise ImplError(f"the built-in Triton implementations: {problem}")
    return moeperf_kernels


def _poison_unowned(rows: torch.Tensor, owned_rows: torch.Tensor) -> torch.Tensor:
    """A copy of the expert output whose rows no route owns hold NaN: unpermute must never read them."""
    out = rows.clone()
    mask = torch.ones(out.shape[0], dtype=torch.bool, device=out.device)
    mask[owned_rows.long()] = False
    out[mask] = float("nan")
    return out


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}, dtype {value.dtype}"
    return f"a {type(value).__name__}"


def _out_buffer(p: Problem) -> torch.Tensor:
    """The [M, H] output an unpermute writes (uninitialised: the timing calls' buffer)."""
    return torch.empty(p.M, p.H, dtype=p.out_dtype, device=p.hidden.device)


def _local_mask(p: Problem) -> torch.Tensor:
    return reference.local_expert_of_routes(p.topk_ids, p.E, p.expert_map) >= 0


def _expected_round_trip(p: Problem, weights_on_input: bool = False) -> torch.Tensor:
    """sum over the token's local routes of w[t, j] * x[t]: permute, an identity expert, unpermute."""
    x = p.hidden.to(p.out_dtype).float()
    local = _local_mask(p).view(p.M, p.k).float()
    w = local if weights_on_input else local * p.topk_weights.float()
    out = torch.zeros_like(x)
    for j in range(p.k):
        out += w[:, j, None] * x
    return out.to(p.out_dtype)


class Impl:
    """One implementation: `prepare(op, p)` binds a call for timing; `check(op, p)` runs it and compares."""

    name: str
    ops: tuple[str, ...]

    def prepare(self, op: str, p: Problem) -> Callable[[], object]:
        raise NotImplementedError

    align_any_order = False  # whether this align may order routes freely inside an expert

    keeps_buffers = False  # whether its calls keep buffers made once for several calls (a scratch)

    def renew_buffers(self) -> None:
        """Calls prepared from now on use buffers of their own, not those kept from earlier calls (none here)."""

    def functions(self) -> list[Callable]:
        """The callables this implementation runs (what its source digest covers)."""
        raise NotImplementedError

    def check(self, op: str, p: Problem) -> float | None:
        """Run the op and compare it with the reference under this implementation's contract; fused_experts returns
        its relative error (the others are exact or within a fixed rounding bound)."""
        if op == "unpermute":
            self._check_unpermute(p)
        elif op == "fused_experts":
            args, kwargs = experts.call_args(p)
            err = reference_experts.relative_error(self.prepare(op, p)(), reference_experts.fused_experts(*args,
                                                                                                        **kwargs))
            limit = reference_experts.TOLERANCE[p.dtype]
            assert err <= limit, f"fused_experts: relative error {err:.2e} against the oracle, allowed {limit:.0e}"
            return err
        elif op == "align":
            want = reference.moe_align_block_size(p.topk_ids, p.block_size, p.E, p.expert_map)
            compare.assert_align_matches(self.prepare(op, p)(), want, p.topk_ids, p.block_size, p.E,
                                         any_order=self.align_any_order)
        else:
            self._check_permute(p, self.prepare(op, p)())

    def _check_permute(self, p: Problem, got) -> None:
        raise NotImplementedError

    def _check_unpermute(self, p: Problem) -> None:
        raise NotImplementedError


class CustomizedContract(Impl):
    """vLLM's customized signatures: moe_permute / moe_unpermute, plus moe_align_block_size."""

    def __init__(self, name, permute=None, unpermute=None, align=None, *, fused_experts=None, scratch=False,
                 align_any_order=False, kernels=None, contract="vllm-legacy", permute_order="stable"):
        self.name = name
        self.contract = contract  # which vintage of vLLM's moe_permute the permute has (spec.scenario.CONTRACTS)
        self.permute_order = permute_order  # "any": rows inside an expert may come in any order
        self.kernels = kernels  # the kernels package whose MoEPermuteScratch a scratch run uses (None: the current)
        self.fns = {"permute": permute, "unpermute": unpermute, "align": align, "fused_experts": fused_experts}
        self.ops = tuple(op for op, fn in self.fns.items() if fn is not None)
        self.scratch = scratch
        self._last_scratch = None
        self.align_any_order = align_any_order

    provider = None  # a user implementation's provider function (its module is part of its sources)

    def functions(self):
        return [fn for fn in [*self.fns.values(), self.provider] if fn is not None]

    def _scratch_for(self, p: Problem):
        """One MoEPermuteScratch per shape, as a server keeps one: the input sets of a cold-L2 timing test share it
        (only the last shape's is kept, so a run does not hold one per test)."""
        key = (p.M, p.k, p.E, p.n_local, p.hidden.device, p.H, p.hidden.dtype, p.align)
        if self._last_scratch is None or self._last_scratch[0] != key:
            self._last_scratch = None  # free the previous one first
            self._last_scratch = (key, (self.kernels or load_kernels()).MoEPermuteScratch(p.M, p.k, p.E, p.n_local,
                                                                                           p.hidden.device,
                                                                    p.H, p.hidden.dtype, p.align))
        return self._last_scratch[1]

    @property
    def keeps_buffers(self) -> bool:
        return self.scratch

    def renew_buffers(self) -> None:
        """The next call prepared gets a new MoEPermuteScratch (the calls prepared before keep theirs): a
        confirmation, or the next pair of A/B graphs, measures with the outputs at other addresses."""
        self._last_scratch = None

    @property
    def aligns(self) -> bool:
        """Whether its permute takes align_block_size (the legacy vintage); the current one never aligns rows."""
        return self.contract == "vllm-legacy"

    def _permute(self, p: Problem, **kw):
        """Its permute called for problem p as its contract's vintage calls it."""
        if self.aligns:
            return self.fns["permute"](p.hidden, p.scale, p.topk_ids, p.E, p.n_local, p.expert_map, p.align, **kw)
        return self.fns["permute"](p.hidden, p.scale, p.topk_ids, p.E, p.n_local, p.expert_map, **kw)

    def _permute_call(self, p: Problem):
        kw = {"scratch": self._scratch_for(p)} if self.scratch else {}
        return lambda: self._permute(p, **kw)

    def _unpermute_inputs(self, p: Problem):
        permuted, _, offsets, inv, _ = reference.moe_permute(p.hidden, p.scale, p.topk_ids, p.E, p.n_local,
                                                             p.expert_map, p.align)
        rows = _poison_unowned(permuted.to(p.out_dtype), inv[_local_mask(p)])
        return rows, inv, offsets

    def _unpermute_call(self, p: Problem):
        rows, inv, offsets = p.shared("unpermute inputs", lambda: self._unpermute_inputs(p))
        out = p.shared("unpermute out", lambda: _out_buffer(p))
        return lambda: self.fns["unpermute"](out, rows, p.topk_weights, inv, offsets)

    def _unpermuted(self, p: Problem, rows, inv, offsets) -> torch.Tensor:
        """What unpermute wrote into `out` (filled with NaN first). The contract writes `out` in place, as vLLM's
        moe_unpermute does (it returns None); a returned tensor is accepted only when it is `out` itself."""
        out = torch.full((p.M, p.H), float("nan"), dtype=p.out_dtype, device=p.hidden.device)
        returned = self.fns["unpermute"](out, rows, p.topk_weights, inv, offsets)
        if returned is not None and not (isinstance(returned, torch.Tensor) and returned.shape == out.shape
                                         and returned.data_ptr() == out.data_ptr()):
            what = _describe(returned)
            raise AssertionError(f"unpermute returned {what}, not `out`: it must write its result into `out` in "
                                 f"place (returning None, as vLLM's moe_unpermute does, or `out` itself)")
        return out

    def prepare(self, op, p):
        if op == "permute":
            return self._permute_call(p)
        if op == "unpermute":
            return self._unpermute_call(p)
        if op == "fused_experts":
            args, kwargs = p.shared("fused_experts args", lambda: experts.call_args(p))
            return lambda: self.fns["fused_experts"](*args, **kwargs)
        return lambda: self.fns["align"](p.topk_ids, p.block_size, p.E, p.expert_map)

    def _check_permute(self, p, got):
        want = reference.moe_permute(p.hidden, p.scale, p.topk_ids, p.E, p.n_local, p.expert_map,
                                     p.align if self.aligns else None)
        compare.assert_permute_matches(got, want, p.hidden, p.scale, p.topk_ids,
                                       reference.local_expert_of_routes(p.topk_ids, p.E, p.expert_map),
                                       fifth="m_indices" if self.aligns else "permuted_idx",
                                       any_order=self.permute_order == "any")

    def _check_unpermute(self, p: Problem) -> None:
        rows, inv, offsets = self._unpermute_inputs(p)
        got = self._unpermuted(p, rows, inv, offsets)
        want = torch.empty(p.M, p.H, dtype=p.out_dtype, device=p.hidden.device)
        reference.moe_unpermute(want, rows, p.topk_weights, inv, offsets)
        compare.assert_close("unpermute (read from out)", got, want)
        # End to end with this implementation's own permute where it has one.
        if self.fns["permute"] is not None:
            permuted, _, offsets, inv, _ = self._permute(p)
        else:
            permuted, _, offsets, inv, _ = reference.moe_permute(p.hidden, p.scale, p.topk_ids, p.E, p.n_local,
                                                                 p.expert_map, p.align)
        out = self._unpermuted(p, permuted.to(p.out_dtype), inv, offsets)
        compare.assert_close("permute -> identity expert -> unpermute", out, _expected_round_trip(p))


class StandardContract(Impl):
    """vLLM's standard Python path: _moe_permute / _moe_unpermute_and_reduce, and the Triton align kernel."""

    ops = ("permute", "unpermute", "align")

    def __init__(self, fns: dict, name: str = "standard"):
        self.name = name
        self.permute, self.reduce, self.align = fns["permute"], fns["unpermute"], fns["align"]

    def functions(self):
        return [self.permute, self.reduce, self.align]

    def _expert_rows(self, permuted, expert_per_row, p):
        """Identity expert that, like vLLM's, writes zeros for blocks of non-local experts."""
        rows = permuted.to(p.out_dtype)
        return torch.where((expert_per_row >= 0)[:, None], rows, torch.zeros_like(rows))

    def _unpermute_inputs(self, p: Problem, permute):
        permuted, _, _, per_row, inv = permute(p.hidden, p.scale, p.topk_ids, p.E, p.expert_map, p.block_size)
        return self._expert_rows(permuted, per_row, p), inv

    def _reduce_call(self, p: Problem, rows, inv, out=None):
        out = _out_buffer(p) if out is None else out

        def call():
            self.reduce(out, rows, inv, p.topk_weights, False)
            return out
        return call

    def prepare(self, op, p):
        if op == "permute":
            return lambda: self.permute(p.hidden, p.scale, p.topk_ids, p.E, p.expert_map, p.block_size)
        if op == "align":
            return lambda: self.align(p.topk_ids, p.block_size, p.E, p.expert_map)
        rows, inv = p.shared("standard unpermute inputs", lambda: self._unpermute_inputs(p, reference._moe_permute))
        return self._reduce_call(p, rows, inv, p.shared("unpermute out", lambda: _out_buffer(p)))

    def _check_permute(self, p, got):
        want = reference._moe_permute(p.hidden, p.scale, p.topk_ids, p.E, p.expert_map, p.block_size)
        names = ("permuted", "a1q_scale", "sorted_token_ids", "expert_ids_per_row", "inv_perm")
        for name, g, w in zip(names, got, want):
            if name == "a1q_scale" and (p.scale is None or p.scale.dim() < 2):
                continue
            compare.assert_equal(name, g, w)

    def _check_unpermute(self, p: Problem) -> None:
        rows, inv = self._unpermute_inputs(p, reference._moe_permute)
        got = self._reduce_call(p, rows, inv)()
        want = torch.empty(p.M, p.H, dtype=p.out_dtype, device=p.hidden.device)
        reference._moe_unpermute_and_reduce(want, rows, inv, p.topk_weights, False)
        compare.assert_close("unpermute", got, want)
        out = self._reduce_call(p, *self._unpermute_inputs(p, self.permute))()
        compare.assert_close("permute -> identity expert -> unpermute", out, _expected_round_trip(p))


def _user_impl(spec: ImplSpec, import_module: Callable[[str], object]) -> Impl:
    module_name, _, attr = spec.path.partition(":")
    try:
        provider = getattr(import_module(module_name), attr)
    except (Exception, SystemExit) as e:  # the user's module: a missing name, a SyntaxError, whatever it raised
        raise ImplError(f"implementation {spec.name!r}: cannot import {spec.path!r}: {type(e).__name__}: "
                        f"{str(e)[:300]}") from None
    entry = Registered(spec.name, provider, contract=spec.contract, permute_order=spec.permute_order)
    return from_entry(entry, what=f"{spec.path}()")


def contract_of(permute) -> str:
    """The vintage of vLLM's moe_permute a function has, read from its signature: the legacy one takes
    align_block_size; the current one does not (and a function whose signature cannot be read is taken as legacy,
    the vintage this project's kernels have)."""
    if permute is None:
        return "vllm-legacy"
    try:
        names = inspect.signature(permute).parameters
    except (TypeError, ValueError):
        return "vllm-legacy"
    return "vllm-legacy" if "align_block_size" in names else "vllm"


def from_entry(entry: Registered, kernels=None, provider: Callable | None = None,
               what: str = "its provider") -> Impl:
    """A registered implementation (or a provider path's, `what` naming it in errors), its callables from its
    provider (or `provider`, another revision's), its built-in callables from `kernels` (None: this checkout's)."""
    provider = provider or entry.provider
    try:
        fns = provider(kernels or load_kernels()) if entry.needs_kernels else provider()
    except (Exception, SystemExit) as e:  # a third party's code, sys.exit included: report whatever it raised
        raise ImplError(f"implementation {entry.name!r}: {what} raised {type(e).__name__}: {str(e)[:300]}") from None
    if not isinstance(fns, dict) or not fns or set(fns) - set(OPS) or not all(callable(f) for f in fns.values()):
        raise ImplError(f"implementation {entry.name!r}: {what} must return a dict mapping some of "
                        f"{', '.join(map(repr, OPS))} to callables, got {fns!r}")
    if entry.kind == "standard":
        return StandardContract(fns, entry.name)
    impl = CustomizedContract(entry.name, fns.get("permute"), fns.get("unpermute"), fns.get("align"),
                              fused_experts=fns.get("fused_experts"), scratch=entry.scratch,
                              align_any_order=entry.align_any_order, kernels=kernels,
                              contract=entry.contract or contract_of(fns.get("permute")),
                              permute_order=entry.permute_order)
    if not entry.needs_kernels:  # a third party's provider module is part of what its baselines were taken with
        impl.provider = provider
    return impl


def build(spec: ImplSpec, registry: Registry, kernels=None,
          import_module: Callable[[str], object] = importlib.import_module) -> Impl:
    """The implementation `spec` names: a registered one, or a provider path; with `kernels` (a kernels package) and
    `import_module`, as another revision of the repository has it (oracle/revision.py)."""
    if spec.path is not None:
        return _user_impl(spec, import_module)
    entry = registry.get(spec.name)
    if entry is None:
        raise ImplError(f"unknown implementation {spec.name!r}; registered: {', '.join(registry.names())} (or give "
                        f"'package.module:function')")
    return from_entry(entry, kernels)


def specs_of(scenario, registry: Registry) -> list[ImplSpec]:
    """The implementations a scenario names, or every registered one when it names none."""
    return list(scenario.impls or [ImplSpec(n) for n in registry.names()])


def for_scenario(scenario, registry: Registry | None = None) -> list[Impl]:
    """The scenario's implementations (specs_of), built; without a registry, the built-ins'."""
    registry = registry or builtin_registry()
    out = []
    for spec in specs_of(scenario, registry):
        try:
            out.append(build(spec, registry))
        except ImplError as e:
            where = f"{scenario.path}:{spec.line}: key 'impls'" if spec.line else str(scenario.path)
            raise ImplError(f"{where}: {e}") from None
    return out


def _source_files(fn: Callable, device_name: str) -> set[Path]:
    """The files a function's behaviour on `device_name` comes from: every .py of its top-level package and the
    .json files (tuned configs) named for that GPU or for none, or its module's file when that is no package."""
    module = sys.modules.get(getattr(fn, "__module__", None) or "")
    top = sys.modules.get(module.__name__.partition(".")[0]) if module else None
    if top is not None and getattr(top, "__path__", None):
        root = Path(list(top.__path__)[0])
        return {f for f in root.rglob("*") if "__pycache__" not in f.parts and (
            f.suffix == ".py" or (f.suffix == ".json" and (f"device_name={device_name}" in f.name
                                                           or "device_name=" not in f.name)))}
    try:
        return {Path(inspect.getsourcefile(fn))}
    except (TypeError, OSError):  # a compiled extension or a builtin: nothing to read
        return set()


def source_digest(impls: list[Impl], device_name: str) -> str:
    """A short digest of the source files and this GPU's tuned configs of these implementations: a baseline records
    it, and a later run that finds another says that the kernels changed since the baseline was taken."""
    files = set()
    for impl in impls:
        for fn in impl.functions():
            files |= _source_files(fn, device_name)
    h = hashlib.sha256()
    for f in sorted(files, key=lambda f: (f.name, str(f))):
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]
