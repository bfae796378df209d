"""One PNG per scenario and op: median latency against batch size per implementation, on log axes, with the
baseline dashed and regressions marked. Needs matplotlib (pip install 'pytest-moeperf[plot]')."""
from __future__ import annotations

from pathlib import Path

INSTALL_HINT = "--moeperf-plot needs matplotlib: pip install 'pytest-moeperf[plot]' (or pip install matplotlib)"


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def write(folder: str | Path, results: list[dict]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for scenario, op in sorted({(r["scenario"], r["op"]) for r in results}):
        mine = [r for r in results if r["scenario"] == scenario and r["op"] == op]
        fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
        series = sorted({(r["impl"], r["dtype"]) for r in mine})
        for i, (impl, dtype) in enumerate(series):
            pts = sorted((r for r in mine if r["impl"] == impl and r["dtype"] == dtype), key=lambda r: r["M"])
            color = f"C{i % 10}"
            label = impl if len({d for _, d in series}) == 1 else f"{impl} {dtype}"
            ax.plot([r["M"] for r in pts], [r["median_us"] for r in pts], "o-", color=color, ms=3.5, label=label)
            base = [(r["M"], r["baseline_median_us"]) for r in pts if r.get("baseline_median_us")]
            if base:
                ax.plot(*zip(*base), "--", color=color, lw=1, alpha=0.8)
            bad = [(r["M"], r["median_us"]) for r in pts if r["verdict"] == "regression"]
            if bad:
                ax.plot(*zip(*bad), "x", color="red", ms=10, mew=2)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        sizes = sorted({r["M"] for r in mine})
        ax.set_xticks(sizes, [str(m) for m in sizes], rotation=60 if len(sizes) > 8 else 0, fontsize=8)
        ax.xaxis.set_minor_locator(ticker.NullLocator())
        plain = ticker.FuncFormatter(lambda v, _: f"{v:g}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
        ax.tick_params(axis="y", which="minor", labelsize=7)
        ax.set_xlabel("batch size M (tokens)")
        ax.set_ylabel("median latency per call (us)")
        gpu = mine[0].get("gpu") or "?"
        ax.set_title(f"{scenario}: {op} on {gpu}\n(dashed: baseline, red x: regression)", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = folder / f"{scenario}-{op}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written
