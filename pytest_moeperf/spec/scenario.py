"""Scenario files (docs/contract.md section 2): YAML validated up front, every error naming file, line and key."""
from __future__ import annotations

import dataclasses
import re
import reprlib
from pathlib import Path

import yaml

from pytest_moeperf.spec import models
from pytest_moeperf.spec.settings import DEFAULT_THRESHOLD

DTYPES = ("bf16", "fp16", "auto", "fp8_w8a8", "int8_w8a16")
OPS = ("permute", "unpermute", "align", "fused_experts")
DEFAULT_OPS = ("permute", "unpermute", "align")  # a scenario without `ops`: the routing kernels
# vLLM's moe_permute as it is now ("vllm": no align_block_size / fill_invalid_expert, a permuted_idx as 5th output)
# and as it was ("vllm-legacy": both arguments, m_indices); docs/contract.md sections 1.3 and 1.3b.
CONTRACTS = ("vllm", "vllm-legacy")
PERMUTE_ORDERS = ("stable", "any")
VLLM_BATCH_SIZES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 256, 512, 1024, 1536, 2048, 3072, 4096)
DEFAULT_ALIGN_OP_BLOCK = 64  # block size of the `align` op when the scenario sets no align_block_size


class ScenarioError(ValueError):
    def __init__(self, path, line: int | None, key: str | None, message: str):
        where = f"{path}:{line}" if line else str(path)
        what = f"key '{key}': " if key else ""
        super().__init__(f"{where}: {what}{message}")


@dataclasses.dataclass(frozen=True)
class Routing:
    kind: str = "uniform"
    alpha: float = 1.2
    p: float = 0.5
    experts_used: int | None = None

    def label(self) -> str:
        extra = {"zipf": f"(alpha={self.alpha})", "hot": f"(p={self.p})",
                 "sparse": f"(experts_used={self.experts_used})"}.get(self.kind, "")
        return self.kind + extra


@dataclasses.dataclass(frozen=True)
class Timing:
    invocations: int = 10
    samples: int = 100
    warmup: int = 5
    l2: str = "warm"


@dataclasses.dataclass(frozen=True)
class ImplSpec:
    name: str
    path: str | None = None  # "package.module:function" for a user implementation
    line: int | None = dataclasses.field(default=None, compare=False)  # where the scenario names it
    contract: str | None = None  # CONTRACTS; None: read from the permute's signature
    permute_order: str = "stable"  # PERMUTE_ORDERS: "any" compares the rows inside an expert as a set


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    path: Path
    model: str
    shape: models.MoEShape
    dtypes: tuple[str, ...]
    batch_sizes: tuple[int, ...]
    ops: tuple[str, ...]
    impls: tuple[ImplSpec, ...] | None  # None: every implementation that supports the op
    tp_size: int
    ep_size: int
    ep_rank: int
    align_block_size: int | None
    block_quant: tuple[int, int] | None
    routing: Routing
    seed: int
    timing: Timing
    threshold: float

    @property
    def num_local_experts(self) -> int:
        return self.shape.num_experts // self.ep_size

    def resolve_dtype(self, dtype: str) -> str:
        return self.shape.dtype if dtype == "auto" else dtype

    def permute_align(self, dtype: str) -> int | None:
        """align_block_size of moe_permute: the scenario's, else 128 for fp8 block quantization (DeepGEMM)."""
        if self.align_block_size is not None:
            return self.align_block_size
        return 128 if dtype == "fp8_w8a8" and self.block_quant else None

    def block_size(self, dtype: str) -> int:
        """Block size of the align op and of the standard path's block_m."""
        return self.permute_align(dtype) or DEFAULT_ALIGN_OP_BLOCK


_KEYS = {"name", "model", "shape", "dtypes", "batch_sizes", "ops", "impls", "tp_size", "ep_size", "ep_rank",
         "align_block_size", "block_quant", "routing", "seed", "timing", "threshold"}
_SHAPE_KEYS = ("num_experts", "topk", "hidden_size", "intermediate_size")


ROUTINGS = ("uniform", "zipf", "hot", "sparse")  # routing kinds (inputs/routing.py draws them)
MOST_NODES = 10_000  # values a scenario may expand to, aliases counted at each use
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 8
_REPR.maxlevel = 3


def _quote(value) -> str:
    """A user value as an error message quotes it: at most about 100 characters, however large or deep it is."""
    return _clip(_REPR.repr(value))


def _clip(text: str, most: int = 200) -> str:
    return text if len(text) <= most else text[:most] + f"... ({len(text)} characters)"


def _first_node_past(root, most: int):
    """The node at which a walk of the document, aliases expanded, passes `most` values (None when it does not)."""
    count, stack = 0, [root] if root is not None else []
    while stack:
        node = stack.pop()
        count += 1
        if count > most:
            return node
        if isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                stack += [k, v]
    return None


def check_name(name: str) -> str | None:
    """Why a scenario name cannot name a baseline file (None when it can): 1-100 letters, digits, '.', '_' or '-',
    starting with a letter or digit (so no path, no hidden file, nothing that leaves the baselines folder)."""
    if not NAME_PATTERN.fullmatch(name):
        return (f"{_quote(name)} cannot name a baseline file: use 1-100 letters, digits, '.', '_' or '-', starting "
                f"with a letter or digit")
    return None


class _Reader:
    """Constructs values from a composed YAML node tree, keeping each node's line for error messages."""

    def __init__(self, path: Path, text: str):
        self.path = path
        loader = yaml.SafeLoader(text)
        try:
            self.root = loader.get_single_node()
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            raise ScenarioError(path, mark.line + 1 if mark else None, None,
                                f"invalid YAML: {_clip(str(e))}") from None
        finally:
            loader.dispose()
        self._loader = yaml.SafeLoader("")
        big = _first_node_past(self.root, MOST_NODES)
        if big is not None:
            raise self.error(big, None, f"the document expands to more than {MOST_NODES} values (YAML aliases "
                                        f"repeating aliases?): a scenario needs a few dozen")

    def error(self, node, key, message):
        return ScenarioError(self.path, node.start_mark.line + 1 if node is not None else None, key, message)

    def value(self, node):
        return self._loader.construct_object(node, deep=True)

    def mapping(self, node, key, allowed) -> dict:
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, key, f"must be a mapping with keys {', '.join(sorted(allowed))}")
        out = {}
        for k_node, v_node in node.value:
            k = self.value(k_node)
            full = f"{key}.{k}" if key else str(k)
            if k not in allowed:
                raise self.error(k_node, full, f"unknown key; allowed: {', '.join(sorted(allowed))}")
            if k in out:
                raise self.error(k_node, full, "given twice")
            out[k] = v_node
        return out

    def integer(self, node, key, minimum=None, maximum=None) -> int:
        v = self.value(node)
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.error(node, key, f"must be an integer, got {_quote(v)}")
        if minimum is not None and v < minimum:
            raise self.error(node, key, f"must be >= {minimum}, got {v}")
        if maximum is not None and v > maximum:
            raise self.error(node, key, f"must be <= {maximum}, got {v}")
        return v

    def number(self, node, key, low, high) -> float:
        v = self.value(node)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise self.error(node, key, f"must be a number, got {_quote(v)}")
        if not low < v < high:
            raise self.error(node, key, f"must lie strictly between {low} and {high}, got {v}")
        return float(v)

    def string(self, node, key, choices=None) -> str:
        v = self.value(node)
        if not isinstance(v, str):
            raise self.error(node, key, f"must be a string, got {_quote(v)}")
        if choices is not None and v not in choices:
            raise self.error(node, key, f"unknown value {_quote(v)}; expected one of {', '.join(choices)}")
        return v

    def sequence(self, node, key) -> list:
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            raise self.error(node, key, f"must be a non-empty list, got {_quote(self.value(node))}")
        return node.value


def _model(r: _Reader, fields: dict):
    if ("model" in fields) == ("shape" in fields):
        raise r.error(r.root, "model", "give exactly one of 'model' (a built-in id or a config.json path) and "
                                       "'shape'")
    if "shape" in fields:
        node = fields["shape"]
        given = r.mapping(node, "shape", set(_SHAPE_KEYS))
        missing = [k for k in _SHAPE_KEYS if k not in given]
        if missing:
            raise r.error(node, "shape", f"missing {', '.join(missing)}")
        shape = models.MoEShape(**{k: r.integer(given[k], f"shape.{k}", minimum=1) for k in _SHAPE_KEYS})
        if shape.problem():
            raise r.error(given["topk"], "shape.topk", shape.problem())
        return "custom", shape
    node = fields["model"]
    name = r.string(node, "model")
    if name in models.BUILTIN:
        return name, models.BUILTIN[name]
    candidate = Path(name) if Path(name).is_absolute() else r.path.parent / name
    if not (name.endswith(".json") or candidate.exists()):
        raise r.error(node, "model", f"unknown model {_quote(name)}: neither a built-in id "
                                     f"({', '.join(models.BUILTIN)}) "
                                     f"nor a path to a config.json")
    try:
        return name, models.shape_from_config(candidate)
    except models.ConfigError as e:
        raise r.error(node, "model", str(e)) from None


def _routing(r: _Reader, node, E: int, k: int) -> Routing:
    if isinstance(node, yaml.ScalarNode):
        kind = r.string(node, "routing", ROUTINGS)
        params = {}
    else:
        given = r.mapping(node, "routing", {"kind", "alpha", "p", "experts_used"})
        if "kind" not in given:
            raise r.error(node, "routing", "a routing mapping needs 'kind'")
        kind = r.string(given["kind"], "routing.kind", ROUTINGS)
        allowed = {"uniform": set(), "zipf": {"alpha"}, "hot": {"p"}, "sparse": {"experts_used"}}[kind]
        params = {}
        for key, v in given.items():
            if key == "kind":
                continue
            if key not in allowed:
                raise r.error(v, f"routing.{key}", f"does not apply to routing kind {_quote(kind)}")
            if key == "alpha":
                params["alpha"] = r.number(v, "routing.alpha", 0.0, 100.0)
            elif key == "p":
                params["p"] = r.number(v, "routing.p", 0.0, 1.0)
            else:
                params["experts_used"] = r.integer(v, "routing.experts_used", minimum=k, maximum=E)
    if kind == "sparse" and "experts_used" not in params:
        params["experts_used"] = max(k, E // 8)
    return Routing(kind=kind, **params)


def _timing(r: _Reader, node) -> Timing:
    given = r.mapping(node, "timing", {"invocations", "samples", "warmup", "l2"})
    values = {}
    for key, low in (("invocations", 1), ("samples", 5), ("warmup", 0)):
        if key in given:
            values[key] = r.integer(given[key], f"timing.{key}", minimum=low, maximum=100000)
    if "l2" in given:
        values["l2"] = r.string(given["l2"], "timing.l2", ("warm", "cold"))
    return Timing(**values)


def _impls(r: _Reader, node) -> tuple[ImplSpec, ...]:
    out = []
    for item in r.sequence(node, "impls"):
        if isinstance(item, yaml.MappingNode):
            given = r.mapping(item, "impls[]", {"name", "path", "contract", "permute_order"})
            if not {"name", "path"} <= set(given):
                raise r.error(item, "impls[]", "a user implementation needs 'name' and 'path' "
                                               "('package.module:function')")
            spec = ImplSpec(r.string(given["name"], "impls[].name"), r.string(given["path"], "impls[].path"),
                            item.start_mark.line + 1,
                            r.string(given["contract"], "impls[].contract", CONTRACTS) if "contract" in given
                            else None,
                            r.string(given["permute_order"], "impls[].permute_order", PERMUTE_ORDERS)
                            if "permute_order" in given else "stable")
            if ":" not in spec.path:
                raise r.error(given["path"], "impls[].path",
                              f"{_quote(spec.path)} must look like 'package.module:function'")
        else:
            text = r.string(item, "impls")
            if ":" in text:
                spec = ImplSpec(text, text, item.start_mark.line + 1)
            elif text.strip() == text and text:  # a registered name (oracle/registry.py), checked when built
                spec = ImplSpec(text, line=item.start_mark.line + 1)
            else:
                raise r.error(item, "impls", f"{_quote(text)} is neither a registered implementation's name nor "
                                             f"'package.module:function'")
        if any(s.name == spec.name for s in out):
            raise r.error(item, "impls", f"implementation {_quote(spec.name)} listed twice")
        out.append(spec)
    return tuple(out)


def _string_list(r: _Reader, node, key, choices) -> tuple[str, ...]:
    values = tuple(r.string(n, key, choices) for n in r.sequence(node, key))
    if len(set(values)) != len(values):
        raise r.error(node, key, f"lists a value twice: {list(values)}")
    return values


def load(path: str | Path) -> Scenario:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ScenarioError(path, None, None, f"cannot read the file: {e.strerror}") from None
    r = _Reader(path, text)
    if r.root is None:
        raise ScenarioError(path, None, None, "the file is empty")
    fields = r.mapping(r.root, "", _KEYS)
    model, shape = _model(r, fields)
    E, k = shape.num_experts, shape.topk

    def get(key, parse, default):
        return parse(fields[key]) if key in fields else default

    name = get("name", lambda n: r.string(n, "name"), path.stem)
    why = check_name(name)
    if why:
        where = "name" if "name" in fields else None
        raise r.error(fields.get("name"), where, why if where else f"the file name {why}; rename the file or give "
                                                                      f"the scenario a 'name'")
    dtypes = get("dtypes", lambda n: _string_list(r, n, "dtypes", DTYPES), ("bf16",))
    batch_sizes = get("batch_sizes", lambda n: tuple(r.integer(x, "batch_sizes", minimum=1)
                                                     for x in r.sequence(n, "batch_sizes")), VLLM_BATCH_SIZES)
    if len(set(batch_sizes)) != len(batch_sizes):
        raise r.error(fields["batch_sizes"], "batch_sizes", f"lists a size twice: {list(batch_sizes)}")
    ops = get("ops", lambda n: _string_list(r, n, "ops", OPS), DEFAULT_OPS)
    impls = get("impls", lambda n: _impls(r, n), None)
    tp_size = get("tp_size", lambda n: r.integer(n, "tp_size", minimum=1), 1)
    ep_size = get("ep_size", lambda n: r.integer(n, "ep_size", minimum=1), 1)
    if E % ep_size:
        raise r.error(fields["ep_size"], "ep_size", f"num_experts={E} is not divisible by ep_size={ep_size}")
    ep_rank = get("ep_rank", lambda n: r.integer(n, "ep_rank", minimum=0, maximum=ep_size - 1), 0)
    align = fields.get("align_block_size")
    align = None if align is None or r.value(align) is None else r.integer(align, "align_block_size", minimum=1)
    block_quant = None
    if "block_quant" in fields and r.value(fields["block_quant"]) is not None:
        node = fields["block_quant"]
        bq = tuple(r.integer(x, "block_quant", minimum=1) for x in r.sequence(node, "block_quant"))
        if bq != (128, 128):
            raise r.error(node, "block_quant", f"only [128, 128] (DeepSeek's 1x128 activation blocks) is supported, "
                                               f"got {list(bq)}")
        if "fp8_w8a8" not in dtypes:
            raise r.error(node, "block_quant", "applies to dtype fp8_w8a8, which 'dtypes' does not list")
        block_quant = bq
    route = get("routing", lambda n: _routing(r, n, E, k), Routing())
    if route.kind == "sparse" and not k <= route.experts_used <= E:
        raise r.error(fields.get("routing"), "routing.experts_used", f"must lie in [topk={k}, num_experts={E}]")
    seed = get("seed", lambda n: r.integer(n, "seed", minimum=0), 0)
    timing = get("timing", lambda n: _timing(r, n), Timing())
    threshold = get("threshold", lambda n: r.number(n, "threshold", 0.0, 10.0), DEFAULT_THRESHOLD)
    return Scenario(name=name, path=path, model=model, shape=shape, dtypes=dtypes, batch_sizes=batch_sizes,
                    ops=ops, impls=impls, tp_size=tp_size, ep_size=ep_size, ep_rank=ep_rank,
                    align_block_size=align, block_quant=block_quant, routing=route, seed=seed, timing=timing,
                    threshold=threshold)


def expand_paths(paths) -> list[Path]:
    """Scenario files named directly, or every *.yaml / *.yml under a named folder (sorted)."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.suffix in (".yaml", ".yml") and q.is_file())
            if not found:
                raise ScenarioError(p, None, None, "folder holds no .yaml scenario files")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise ScenarioError(p, None, None, "no such scenario file or folder")
    return out
