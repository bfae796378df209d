"""Which way each permute timing test of the scenarios builds its index on a GPU model, from that model's tuned
configs: moe_permute's launch decision run on the CPU, its kernel launches recorded instead of run. Nothing is timed.

    python benchmarks/index_paths.py [--device-name NVIDIA_H100_80GB_HBM3] [--sms 132] [SCENARIO.yaml ...]

One line per scenario, dtype and batch size: the routes and the way. One launch: direct (unpadded rows counted
straight from the routes), pairs (the routes compared pairwise), ranks (one histogram, each route compared with the
routes before it), buckets (two histograms and a square); or count (count_kernel, then the copy). Run it before and
after a change of the rules in kernels/_launch.py: the tests whose way changed are those the A/B gate
(--moeperf-against) must reach. On 2026-12-06 a first rule for the ranks, A/B-gated on the fp8 permutes only, also
sent three unpadded bf16 shapes the new way, 1.10-1.23 x slower (benchmarks/results/2026-12-06-h100-permute-ranks.md).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import types
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from moeperf_kernels import _launch, permute, tuning  # noqa: E402
from pytest_moeperf.inputs import problem  # noqa: E402
from pytest_moeperf.spec import scenario  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class TestWay:
    scenario: str
    dtype: str
    M: int
    routes: int
    way: str


class _Launches:
    """Stands in for a kernel: `kernel[grid](*args, **meta)` keeps the meta-parameters of the last launch."""

    def __init__(self):
        self.meta: dict | None = None

    def __getitem__(self, grid):
        return self._launch

    def _launch(self, *args, **meta):
        self.meta = meta


def way_of(fused_meta: dict | None) -> str:
    """The way from the meta-parameters permute_fused_kernel was launched with (None: it was not; count_kernel ran)."""
    if fused_meta is None:
        return "count"
    for way in ("DIRECT", "PAIRS", "RANKS"):
        if fused_meta[way]:
            return way.lower()
    return "buckets"


@contextlib.contextmanager
def as_gpu(device_name: str, sms: int):
    """moe_permute on CPU tensors decides as on a GPU named device_name with `sms` SMs (its tuned configs, the
    compiled kernels' rules), and launches nothing: yields the stand-in of permute_fused_kernel."""
    fused = _Launches()
    kernels = types.SimpleNamespace(permute_fused_kernel=fused, permute_rows_kernel=_Launches())
    tuning.clear_cache()  # configs chosen for "cpu" must not answer for the GPU, nor the other way round
    try:
        with mock.patch.object(tuning, "device_name", lambda device: device_name), \
                mock.patch.object(_launch, "INTERPRETED", False), \
                mock.patch.object(_launch, "require_runnable", lambda tensor, name: None), \
                mock.patch.object(_launch, "_most_programs", lambda device: sms), \
                mock.patch.object(permute, "_rows", kernels), \
                mock.patch.object(permute, "launch_index", lambda *args, **kw: (dict(base=None, sub=None, table=None),
                                                                                  1)):
            yield fused
    finally:
        tuning.clear_cache()


def paths(files: list[Path], device_name: str, sms: int) -> list[TestWay]:
    """The way of every permute timing test of these scenario files (inputs of the tests' shapes, left unfilled)."""
    out = []
    with as_gpu(device_name, sms) as fused:
        for f in files:
            sc = scenario.load(f)
            if "permute" not in sc.ops:
                continue
            for dtype in sc.dtypes:
                one = problem.build(sc, dtype, 1, "cpu")  # the tensors' layout, taken from one token
                for M in sc.batch_sizes:
                    hidden = torch.empty((M, one.hidden.shape[1]), dtype=one.hidden.dtype)
                    scale = None if one.scale is None else torch.empty((M, one.scale.shape[1]), dtype=one.scale.dtype)
                    ids = torch.zeros((M, one.topk_ids.shape[1]), dtype=one.topk_ids.dtype)
                    fused.meta = None
                    permute.moe_permute(hidden, scale, ids, one.E, one.n_local, one.expert_map, one.align)
                    out.append(TestWay(sc.name, dtype, M, ids.numel(), way_of(fused.meta)))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scenarios", nargs="*", type=Path, help="scenario files (default: every scenarios/*.yaml)")
    ap.add_argument("--device-name", default="NVIDIA_H100_80GB_HBM3",
                    help="the GPU model as in tuned config file names")
    ap.add_argument("--sms", type=int, default=132, help="its SM count")
    args = ap.parse_args(argv)
    files = args.scenarios or sorted((ROOT / "scenarios").glob("*.yaml"))
    for p in paths(files, args.device_name, args.sms):
        print(f"{p.scenario} {p.dtype} M={p.M} routes={p.routes} {p.way}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
