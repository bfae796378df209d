"""Is a timing slower than its baseline for real? (docs/contract.md section 4)

A run regresses only when all of these hold:
- its median is slower than the baseline's by more than max(threshold, noise band), where the noise band is the
  larger relative spread (IQR / median) of the two runs (a kernel that jitters by 8% cannot be gated at 5%), at
  least an absolute floor in microseconds over the baseline median (a few-microsecond kernel differs by several
  percent between two GPUs of one model; the floor leaves kernels of >= floor/threshold microseconds untouched), and,
  when the baseline was timed on another GPU of the model, at least the machine band (two GPUs of one model run the
  same kernel steadily apart: on two H100s, up to 4.5% on memory-bound ops and 5.5% on the expert GEMMs);
- a one-sided Mann-Whitney U test says its samples are larger than the baseline's with p < 0.01, so a shift of
  the median alone, without the whole distribution moving, is not enough;
- a second measurement of the same test says the same (the caller re-measures and asks again).
Faster beyond the same band (and significant) is "improved"; anything else is "pass".
"""
from __future__ import annotations

import dataclasses
import enum
import math
import statistics

from pytest_moeperf.measure import timing

P_VALUE = 0.01


class Kind(str, enum.Enum):
    REGRESSION = "regression"
    IMPROVED = "improved"
    PASS = "pass"
    NEW = "new"


@dataclasses.dataclass
class Verdict:
    kind: Kind
    ratio: float | None = None  # new median / baseline median
    band: float | None = None  # the slowdown allowed: max(threshold, noise band, floor, machine band)
    p_value: float | None = None
    other_gpu: bool = False  # the baseline was timed on another GPU: the machine band applied

    def describe(self) -> str:
        if self.ratio is None:
            return self.kind.value
        where = ", baseline from another GPU" if self.other_gpu else ""
        return (f"{self.kind.value}: median {100 * (self.ratio - 1):+.1f}% vs baseline "
                f"(allowed +/-{100 * self.band:.1f}%{where}, Mann-Whitney p={self.p_value:.2g})")


def mann_whitney_greater(a: list[float], b: list[float]) -> float:
    """One-sided p-value that values of `a` tend to exceed those of `b` (normal approximation, tie-corrected)."""
    n1, n2 = len(a), len(b)
    pooled = sorted([(v, 0) for v in a] + [(v, 1) for v in b])
    ranks = [0.0] * len(pooled)
    tie_term = 0.0
    i = 0
    while i < len(pooled):
        j = i
        while j + 1 < len(pooled) and pooled[j + 1][0] == pooled[i][0]:
            j += 1
        for m in range(i, j + 1):
            ranks[m] = (i + j) / 2 + 1
        t = j - i + 1
        tie_term += t ** 3 - t
        i = j + 1
    rank_sum_a = sum(r for r, (_, group) in zip(ranks, pooled) if group == 0)
    u = rank_sum_a - n1 * (n1 + 1) / 2
    n = n1 + n2
    var = n1 * n2 / 12 * ((n + 1) - tie_term / (n * (n - 1)))
    if var <= 0:
        return 1.0
    z = (u - n1 * n2 / 2 - 0.5) / math.sqrt(var)  # continuity-corrected
    return 0.5 * math.erfc(z / math.sqrt(2))


def judge(samples: list[float], baseline: list[float] | None, threshold: float, floor_us: float = 0.0,
          machine_band: float | None = None) -> Verdict:
    """machine_band: None when the baseline was timed on this GPU, else the band of another GPU of the model."""
    if not baseline:
        return Verdict(Kind.NEW)
    base_median = statistics.median(baseline)
    ratio = statistics.median(samples) / base_median
    band = max(threshold, timing.relative_iqr(samples), timing.relative_iqr(baseline), floor_us / base_median,
               machine_band or 0.0)
    other_gpu = machine_band is not None
    if ratio > 1 + band:
        p = mann_whitney_greater(samples, baseline)
        return Verdict(Kind.REGRESSION if p < P_VALUE else Kind.PASS, ratio, band, p, other_gpu)
    if ratio < 1 - band:
        p = mann_whitney_greater(baseline, samples)
        return Verdict(Kind.IMPROVED if p < P_VALUE else Kind.PASS, ratio, band, p, other_gpu)
    return Verdict(Kind.PASS, ratio, band, min(mann_whitney_greater(samples, baseline), 1.0), other_gpu)


@dataclasses.dataclass
class PairedVerdict:
    """A/B in one process: the current code against a reference revision, replays interleaved."""
    kind: Kind
    ratio: float  # median of the per-pair ratios current / reference
    low: float  # a distribution-free 95% interval of that median
    high: float

    def describe(self) -> str:
        return (f"{self.kind.value}: median {100 * (self.ratio - 1):+.1f}% vs the reference, 95% interval "
                f"[{100 * (self.low - 1):+.1f}%, {100 * (self.high - 1):+.1f}%]")


def median_interval(values: list[float], coverage: float = 0.95) -> tuple[float, float, float]:
    """(median, low, high): the median of `values` and the widest-apart order statistics x[j], x[n-1-j] that hold
    the true median with at least `coverage` whatever the distribution (the sign test's interval, exact binomial:
    ten values give x[1], x[8]). Fewer than six values cannot reach 95%: their interval is the whole range."""
    ordered = sorted(values)
    n = len(ordered)
    j = 0
    while j + 1 <= (n - 1) // 2 and 1 - 2 * _binomial_cdf(n, j + 1) >= coverage:
        j += 1
    return statistics.median(ordered), ordered[j], ordered[n - 1 - j]


def _binomial_cdf(n: int, j: int) -> float:
    """P(Binomial(n, 1/2) <= j): the chance that at most j of n values lie under the median."""
    return sum(math.comb(n, i) for i in range(j + 1)) / 2 ** n


def judge_paired(current: list[float], reference: list[float], threshold: float, instances: int = 1
                 ) -> PairedVerdict:
    """Samples taken in turns (pair i = current[i], reference[i]), from `instances` pairs of graphs in equal
    consecutive groups (timing.measure_instances): a regression when the median ratio is above 1 + threshold and its
    95% interval lies above 1; improved when the mirror image holds; else a pass. With several instances the unit is
    the pair of graphs (each one's median ratio): two graphs of the same code replay steadily apart, so pairs of
    replays of one pair of graphs are not independent evidence. No floor in microseconds: both sides share the
    process, the GPU, the inputs and every drift of the clocks."""
    ratios = [a / b for a, b in zip(current, reference)]
    ratio, low, high = median_interval(timing.instance_medians(ratios, instances) if instances > 1 else ratios)
    if ratio > 1 + threshold and low > 1:
        return PairedVerdict(Kind.REGRESSION, ratio, low, high)
    if ratio < 1 - threshold and high < 1:
        return PairedVerdict(Kind.IMPROVED, ratio, low, high)
    return PairedVerdict(Kind.PASS, ratio, low, high)
