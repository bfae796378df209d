"""A reference revision of the repository under test (--moeperf-against REF): its tree materialised in a temporary
folder (git archive, nothing written to the repository), and its implementations imported beside the current ones in
the same process under other module names.

Loading twice works for pure Python and Triton: while a package of the reference is imported, sys.modules holds the
reference's copy under the package's own name (so absolute imports, `from kernels import tuning` in revisions
from before the kernels were installed as moeperf_kernels, find the reference's modules), and the current modules
are put back afterwards; the reference's stay alive under an alias.
A compiled extension cannot be imported twice in one process, so an implementation that needs one is refused.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.machinery
import inspect
import io
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from pytest_moeperf.oracle import impls


class RevisionError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class Revision:
    ref: str  # what was asked for: a revision of the repository, or a folder
    commit: str  # the resolved commit ("" for a folder that is no git checkout)
    root: Path  # the tree

    @property
    def label(self) -> str:
        return f"{self.ref} ({self.commit[:10]})" if self.commit else self.ref


def _git(repo: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, **kw)


def materialise(ref: str, repo: Path, into: Path) -> Revision:
    """REF as a tree: a folder is used where it is; a git revision of `repo` is extracted into `into`."""
    folder = Path(ref).expanduser()
    if folder.is_dir():
        head = _git(folder, "rev-parse", "HEAD", text=True)
        return Revision(ref, head.stdout.strip() if head.returncode == 0 else "", folder.resolve())
    found = _git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", text=True)
    if found.returncode != 0:
        raise RevisionError(f"--moeperf-against {ref!r}: neither a folder nor a git revision of {repo}")
    commit = found.stdout.strip()
    tree = _git(repo, "archive", "--format=tar", commit)
    if tree.returncode != 0:
        raise RevisionError(f"--moeperf-against {ref!r}: git archive {commit} failed: "
                            f"{tree.stderr.decode(errors='replace').strip()[:300]}")
    into.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(tree.stdout)) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(into, filter="data")
        else:  # Python without extraction filters: git archive of a commit holds no links out of the tree
            tar.extractall(into)
    return Revision(ref, commit, into.resolve())


_loaded: dict[tuple[str, str], ModuleType] = {}


def _owned(name: str) -> dict[str, ModuleType]:
    return {k: m for k, m in sys.modules.items() if k == name or k.startswith(name + ".")}


@contextlib.contextmanager
def _as_current(root: Path, top: str):
    """Inside: `top` and its submodules import from root, as this revision's; outside, as before."""
    saved = _owned(top)
    for key in saved:
        del sys.modules[key]
    sys.path.insert(0, str(root))
    try:
        yield
    finally:
        sys.path.remove(str(root))
        for key in _owned(top):
            del sys.modules[key]
        sys.modules.update(saved)
        importlib.invalidate_caches()


def import_from(revision: Revision, module: str) -> ModuleType:
    """`module` (dotted) as the revision has it, imported beside the current one; cached per revision."""
    key = (str(revision.root), module)
    if key not in _loaded:
        top = module.partition(".")[0]
        with _as_current(revision.root, top):
            loaded = importlib.import_module(module)
            for name, m in _owned(top).items():  # keep the reference's modules alive under an alias
                sys.modules[f"moeperf_reference_{abs(hash(key[0])):x}.{name}"] = m
        origin = Path(getattr(loaded, "__file__", "") or "")
        if revision.root not in origin.resolve().parents:
            raise RevisionError(f"--moeperf-against {revision.label}: {module} was not found in that revision "
                                f"(imported from {origin or 'a built-in'}), so it cannot be compared with it")
        _loaded[key] = loaded
    return _loaded[key]


def _provider_in(revision: Revision, provider: Callable) -> Callable:
    """The function of the same module and name in the revision (a lambda or a nested function has none)."""
    name = getattr(provider, "__qualname__", "")
    if not name or "<" in name or "." in name:
        raise RevisionError(f"its provider {name or provider!r} is not a module-level function, so the revision's "
                            f"version of it cannot be found")
    found = getattr(import_from(revision, provider.__module__), name, None)
    if found is None:
        raise RevisionError(f"{provider.__module__}.{name} does not exist in that revision")
    return found


def check_loadable_twice(fn: Callable, what: str) -> None:
    """A callable of a compiled extension (or a builtin) cannot be loaded a second time for the reference."""
    module = sys.modules.get(getattr(fn, "__module__", None) or "")
    path = str(getattr(module, "__file__", "") or "")
    if inspect.isbuiltin(fn) or path.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
        raise RevisionError(f"{what} comes from a compiled extension ({path or 'built-in'}), which cannot be loaded a "
                            f"second time in one process for --moeperf-against: gate it against stored baselines "
                            f"instead (--update-baselines on the reference, then a plain run)")


def reference_kernels(revision: Revision) -> ModuleType:
    """The revision's kernels package, sharing the current one's process-wide state: count_kernel's ticket counter
    per device (kernels/_pipeline.py `_tickets`), where the atomics of every call without a scratch go. A process
    runs one copy of the kernels, so has one counter; two copies have two, at other addresses, and where the counter
    lies sets a count-path align's time: on H100s the current side read 0.09 us (0.65%) a call slower than the same
    code as the reference, in every run either way round, and not once the copies shared a counter
    (benchmarks/results/2026-12-06-h100-ticket-bias.md). A revision without that state is left as it is."""
    theirs = import_from(revision, "kernels")
    mine = getattr(getattr(impls.load_kernels(), "_pipeline", None), "_tickets", None)
    pipeline = getattr(theirs, "_pipeline", None)
    if isinstance(mine, dict) and isinstance(getattr(pipeline, "_tickets", None), dict):
        pipeline._tickets = mine
    return theirs


def reference_impls(revision: Revision, scenario, current: list, registry) -> dict:
    """{name: Impl} of the reference revision for the scenario's implementations (the torch oracle aside, which is
    the plugin's own): built-ins from the revision's kernels package, user implementations from the same provider
    path in the revision's tree. Raises RevisionError (or impls.ImplError) naming what could not be loaded."""
    kernels = None
    out = {}
    for spec, impl in zip(impls.specs_of(scenario, registry), current):
        if impl.name == "torch":
            continue
        for fn in impl.functions():
            check_loadable_twice(fn, f"implementation {impl.name!r} ({getattr(fn, '__qualname__', fn)})")
        where = f"{scenario.path}:{spec.line}: key 'impls'" if spec.line else str(scenario.path)
        try:
            entry = registry.get(spec.name) if spec.path is None else None
            if spec.path is not None:
                out[impl.name] = impls.build(spec, registry, import_module=lambda m: import_from(revision, m))
            elif entry.needs_kernels:  # the project's own: from the revision's kernels package
                kernels = kernels or reference_kernels(revision)
                out[impl.name] = impls.from_entry(entry, kernels)
            else:  # registered by a third party: the same provider, as the revision's tree has it
                out[impl.name] = impls.from_entry(entry, provider=_provider_in(revision, entry.provider))
        except (impls.ImplError, RevisionError, ImportError) as e:
            raise RevisionError(f"{where}: the reference's {impl.name!r}: {e}") from None
    return out
