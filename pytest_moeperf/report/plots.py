"""One PNG per scenario and op: median latency against batch size per implementation, on log axes, with the
baseline dashed and regressions marked. Needs matplotlib (pip install 'pytest-moeperf[plot]')."""
from __future__ import annotations

import dataclasses
from pathlib import Path

INSTALL_HINT = "--moeperf-plot needs matplotlib: pip install 'pytest-moeperf[plot]' (or pip install matplotlib)"


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


@dataclasses.dataclass
class Series:
    """One line of a plot: an implementation and dtype over batch sizes, its baseline, its counted regressions."""
    label: str
    points: list[tuple[int, float]]  # (M, median us)
    baseline: list[tuple[int, float]]
    regressions: list[tuple[int, float]]  # counted regressions, injected ones included


def series(results: list) -> dict[tuple[str, str], list[Series]]:
    """{(scenario, op): its lines} from TimingResults."""
    out = {}
    for scenario, op in sorted({(r.scenario, r.op) for r in results}):
        mine = [r for r in results if r.scenario == scenario and r.op == op]
        keys = sorted({(r.impl, r.dtype) for r in mine})
        lines = []
        for impl, dtype in keys:
            pts = sorted((r for r in mine if r.impl == impl and r.dtype == dtype), key=lambda r: r.M)
            lines.append(Series(impl if len({d for _, d in keys}) == 1 else f"{impl} {dtype}",
                                [(r.M, r.median_us) for r in pts],
                                [(r.M, r.baseline_median_us) for r in pts if r.baseline_median_us],
                                [(r.M, r.median_us) for r in pts if r.outcome.counted]))
        out[(scenario, op)] = lines
    return out


def write(folder: str | Path, results: list) -> list[Path]:
    """One PNG per scenario and op of these TimingResults."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    gpu = next((r.gpu for r in results if r.gpu), "?")
    written = []
    for (scenario, op), lines in series(results).items():
        fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
        for i, line in enumerate(lines):
            color = f"C{i % 10}"
            ax.plot(*zip(*line.points), "o-", color=color, ms=3.5, label=line.label)
            if line.baseline:
                ax.plot(*zip(*line.baseline), "--", color=color, lw=1, alpha=0.8)
            if line.regressions:
                ax.plot(*zip(*line.regressions), "x", color="red", ms=10, mew=2)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        sizes = sorted({m for line in lines for m, _ in line.points})
        ax.set_xticks(sizes, [str(m) for m in sizes], rotation=60 if len(sizes) > 8 else 0, fontsize=8)
        ax.xaxis.set_minor_locator(ticker.NullLocator())
        plain = ticker.FuncFormatter(lambda v, _: f"{v:g}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
        ax.tick_params(axis="y", which="minor", labelsize=7)
        ax.set_xlabel("batch size M (tokens)")
        ax.set_ylabel("median latency per call (us)")
        ax.set_title(f"{scenario}: {op} on {gpu}\n(dashed: baseline, red x: regression)", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = folder / f"{scenario}-{op}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written
