"""Our permute / unpermute beside the public Triton peers, in one process, timed the way the gate times (CUDA graph of
10 calls, median of 60 replays; warm L2, or cold: input sets rotated past twice the L2), each checked by a round trip
first.

    python benchmarks/peers.py [--te PATH] [--moe-ops PATH] [--shapes mixtral,deepseek-v3]
        [--batch-sizes 1,8,64,256,1024,4096,16384] [--dtypes bf16,fp8_w8a8] [--l2 warm,cold] [--markdown F] [--json F]

Peers, called natively:
- TransformerEngine's Triton permutation (--te: a transformer_engine wheel, e.g. 2.20.2, or a folder with its files):
  make_row_id_map + permute_with_mask_map given its routing mask, unpermute_with_mask_map with merging probs. The
  wheel's package imports TransformerEngine's CUDA libraries, so only its two pure-Triton `permutation` modules are
  loaded, from the wheel's files, under empty parent packages; nothing else of TransformerEngine runs.
- moe-ops (--moe-ops: its wheel or folder, else the installed package): permute_countsort (rows inside an expert in
  atomic order) and unpermute_forward.
Ours: moeperf_kernels.moe_permute (unaligned) and moe_unpermute. Uniform routing, shapes of the scenarios. fp8_w8a8:
float8 rows with 1x128 scales (every shape), which ours and TransformerEngine permute with the rows; moe-ops takes no
scales, so its fp8 permute moves the rows only; the unpermute reads bf16 expert outputs, as after fp8 experts.
Bytes: problem.moved_bytes (M*H*b*(1+k) here, contract section 3), and % of the device-copy ceiling measured in the
same process. GPU only (TransformerEngine's functions allocate on "cuda"); the table and the loader are tested on the
CPU.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import itertools
import json
import sys
import tempfile
import types
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pytest_moeperf.inputs import problem  # noqa: E402
from pytest_moeperf.measure import timing  # noqa: E402
from pytest_moeperf.spec import scenario  # noqa: E402
from pytest_moeperf.spec.scenario import Timing  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TE_FILES = ("transformer_engine/common/triton/permutation.py", "transformer_engine/pytorch/triton/permutation.py")
PEERS = ("ours", "te", "moe_ops")
# Every call allocates its outputs, ours included (the peers' functions give no way to pass them): inside the timed CUDA
# graph each call's outputs then take the block the previous call freed, so with a cold L2 the outputs are written to
# one place for all implementations alike. (Until 2026-12-06 our unpermute wrote a buffer per input set, cold, while
# the peers' outputs stayed in L2: on an H100 that made it read 0.82 x moe-ops at Mixtral 1024 tokens, 1.01 x after.)
TIMING = Timing(invocations=10, samples=60, warmup=5)


def _files_of(path: Path, names: list[str] | None, into: Path) -> Path:
    """A folder holding the package files: `path` itself, or `names` (all when None) extracted from the wheel."""
    if path.is_dir():
        return path
    with zipfile.ZipFile(path) as wheel:
        wheel.extractall(into, members=names or None)
    return into


def load_te(path: Path, into: Path) -> types.ModuleType:
    """TransformerEngine's pytorch/triton/permutation module, loaded from a wheel or folder with its common Triton
    kernels, its parent packages replaced by empty ones (their __init__ would load the CUDA libraries)."""
    folder = _files_of(path, list(TE_FILES), into)
    for name in ("transformer_engine", "transformer_engine.common", "transformer_engine.common.triton",
                 "transformer_engine.pytorch", "transformer_engine.pytorch.triton"):
        package = types.ModuleType(name)
        package.__path__ = [str(folder / name.replace(".", "/"))]
        sys.modules.setdefault(name, package)
    module = None
    for file in TE_FILES:
        name = file[:-3].replace("/", ".")
        spec = importlib.util.spec_from_file_location(name, folder / file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return module


def load_moe_ops(path: Path | None, into: Path) -> types.ModuleType:
    if path is not None:
        sys.path.insert(0, str(_files_of(path, None, into)))
    import moe_ops.permute_ops
    import moe_ops.unpermute_ops
    return moe_ops


def calls(peer: str, p, te=None, moe_ops=None) -> tuple[Callable, Callable[[], Callable]]:
    """(permute call, make the unpermute call) of one peer for problem p: the permute returns what its unpermute
    needs, and the unpermute call is built on one permute's outputs."""
    M, k, E, H = p.M, p.k, p.E, p.H
    expert_out = (lambda rows: rows.to(p.out_dtype))  # an identity expert (fp8 experts write bf16)
    if peer == "ours":
        import moeperf_kernels as kernels

        def permute():
            return kernels.moe_permute(p.hidden, p.scale, p.topk_ids, E)

        def unpermute_call():
            permuted, _, offsets, inv, _ = permute()
            rows = expert_out(permuted)

            def unpermute():  # its output allocated in the call, as the peers' are (see under PEERS)
                out = torch.empty(M, H, dtype=p.out_dtype, device=p.hidden.device)
                return kernels.moe_unpermute(out, rows, p.topk_weights, inv, offsets)
            return unpermute
        return permute, unpermute_call
    if peer == "te":
        ids = p.topk_ids.long()
        routing_map = torch.zeros(M, E, dtype=torch.bool, device=ids.device).scatter_(1, ids, True)
        merging = torch.zeros(M, E, dtype=torch.float32, device=ids.device).scatter_(1, ids, p.topk_weights.float())
        scale_cols = 0 if p.scale is None else p.scale.shape[1]

        def permute():
            row_id_map = te.make_row_id_map(routing_map, M, E)
            permuted = te.permute_with_mask_map(p.hidden, row_id_map, None, p.scale, None, M, E, M * k, H,
                                                scale_cols)[0]
            return permuted, row_id_map

        def unpermute_call():
            permuted, row_id_map = permute()
            rows = expert_out(permuted)
            return lambda: te.unpermute_with_mask_map(rows, row_id_map, merging, None, None, M, E, H)[0]
        return permute, unpermute_call

    def permute():  # no scale operand
        return moe_ops.permute_ops.permute_countsort(p.hidden, p.topk_ids, 0, E)

    def unpermute_call():
        permuted, row_id_map, _ = permute()
        rows = expert_out(permuted)
        return lambda: moe_ops.unpermute_ops.unpermute_forward(rows, row_id_map, p.topk_weights.float(), M, k)
    return permute, unpermute_call


def problems(sc, dtype: str, M: int, l2: str, device) -> list:
    """The input sets of one row of scenario `sc`'s shape: one (warm L2), or as many as rotate past twice the L2
    (cold). fp8_w8a8 with 1x128 scales on every shape."""
    if dtype == "fp8_w8a8":
        sc = dataclasses.replace(sc, block_quant=(128, 128))
    first = problem.build(sc, dtype, M, device)
    if l2 == "warm":
        return [first]
    sets = timing.input_sets_for_cold_l2(sum(problem.moved_bytes(op, first)[0] for op in ("permute", "unpermute")),
                                         device)
    return [first] + [problem.build(sc, dtype, M, device, i) for i in range(1, sets)]


def round_trip_error(p, unpermute_call: Callable[[], Callable]) -> float:
    """Largest |unpermute(permute(x)) - x * sum_j w_j| (an identity expert; fp8 rows as they are, unscaled), relative
    to max |x|."""
    got = unpermute_call()().float()
    want = p.hidden.float() * p.topk_weights.float().sum(1, keepdim=True)
    return float((got - want).abs().max() / want.abs().max().clamp(min=1e-6))


def table(rows: list[dict], tablefmt: str = "github") -> str:
    """The issue's layout: per shape and batch size, each peer's median us per op, ours with % of the ceiling, and
    each peer's time over ours (> 1: ours is faster)."""
    out = []
    for r in rows:
        line = [r["shape"], r["dtype"], r["l2"], r["M"]]
        for op in ("permute", "unpermute"):
            ours = r[op].get("ours")
            line.append("-" if ours is None else f"{ours:.2f} ({r[op + '_pct']:.0f}%)")
            for peer in PEERS[1:]:
                theirs = r[op].get(peer)
                line.append("-" if theirs is None else f"{theirs:.2f}")
                line.append("-" if theirs is None or ours is None else f"{theirs / ours:.2f}")
        out.append(line)
    headers = ["shape", "dtype", "L2", "M"] + [h for op in ("permute", "unpermute") for h in
                                (f"ours {op} us (% ceiling)", "TE us", "TE / ours", "moe-ops us", "moe-ops / ours")]
    return tabulate(out, headers, tablefmt=tablefmt, disable_numparse=True)


def bench(shapes: list[str], batches: list[int], dtypes: list[str], l2s: list[str], te, moe_ops,
          device: str) -> list[dict]:
    ceiling = timing.copy_ceiling_gbps(device)
    peers = {"ours": True, "te": te is not None, "moe_ops": moe_ops is not None}
    loaded = {shape: scenario.load(ROOT / "scenarios" / f"{shape}.yaml") for shape in shapes}
    rows = []
    for shape, dtype, l2, M in itertools.product(shapes, dtypes, l2s, batches):
        sets = problems(loaded[shape], dtype, M, l2, device)
        row = {"shape": shape, "dtype": dtype, "l2": l2, "M": M, "input_sets": len(sets), "permute": {},
               "unpermute": {}, "error": {}}
        for peer in (name for name, there in peers.items() if there):
            per_set = [calls(peer, p, te, moe_ops) for p in sets]
            row["error"][peer] = round_trip_error(sets[0], per_set[0][1])
            if row["error"][peer] > 0.02:
                print(f"{shape} {dtype} M={M} {peer}: round trip off by {row['error'][peer]:.3g}; not timed")
                continue
            row["permute"][peer] = timing.measure([permute for permute, _ in per_set], TIMING).median
            row["unpermute"][peer] = timing.measure([make() for _, make in per_set], TIMING).median
        for op in ("permute", "unpermute"):
            ours = row[op].get("ours")
            payload = problem.moved_bytes(op, sets[0])[0]  # M*H*b*(1+k) here: every route local
            row[op + "_pct"] = 0.0 if not ours else 100 * payload / ours / 1e3 / ceiling
        rows.append(row)
        print(table(rows[-1:], "plain").splitlines()[-1], flush=True)
    return rows


def listed(allowed: tuple[str, ...]) -> Callable[[str], list[str]]:
    """An argparse type: a comma-separated list of some of `allowed`."""
    def parse(text: str) -> list[str]:
        values = text.split(",")
        wrong = [v for v in values if v not in allowed]
        if wrong:
            raise argparse.ArgumentTypeError(f"{', '.join(wrong)}: not one of {', '.join(allowed)}")
        return values
    return parse


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--te", type=Path, help="a transformer_engine wheel, or a folder with its files")
    ap.add_argument("--moe-ops", type=Path, help="a moe_ops wheel or folder (default: the installed package)")
    ap.add_argument("--shapes", default="mixtral,deepseek-v3")
    ap.add_argument("--batch-sizes", default="1,8,64,256,1024,4096,16384")
    ap.add_argument("--dtypes", type=listed(("bf16", "fp8_w8a8")), default=["bf16"],
                    help="bf16, fp8_w8a8 (1x128 scales), comma-separated")
    ap.add_argument("--l2", type=listed(("warm", "cold")), default=["warm"], help="warm, cold, comma-separated")
    ap.add_argument("--markdown", type=Path)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("peers.py times on a GPU; none is visible", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        te = load_te(args.te, Path(tmp) / "te") if args.te else None
        try:
            moe_ops = load_moe_ops(args.moe_ops, Path(tmp) / "moe_ops")
        except ImportError as e:
            print(f"moe-ops not timed: {e}", file=sys.stderr)
            moe_ops = None
        rows = bench(args.shapes.split(","), [int(b) for b in args.batch_sizes.split(",")], args.dtypes, args.l2, te,
                     moe_ops, "cuda")
    text = table(rows)
    print(text)
    if args.markdown:
        args.markdown.write_text(f"Ceiling: {timing.CEILING_METHOD}; timing: {timing.TIMING_METHOD}\n\n{text}\n")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
