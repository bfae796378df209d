"""A timing test's result as one typed record: what was measured, against what, and the outcome the gate decided.

Workers send it to the controller as JSON (to_json / from_json); reports, plots, the gate statistics and the
baseline store read its fields and its Outcome, never a verdict string.
"""
from __future__ import annotations

import dataclasses

from pytest_moeperf.gate.verdict import Kind


@dataclasses.dataclass(frozen=True)
class Outcome:
    """The verdict's kind and what the run made of it."""
    kind: Kind
    recorded: bool = False  # --update-baselines: the measurement became the baseline, nothing is gated
    advisory: bool = False  # an eager-timed regression, not gated unless --moeperf-gate-eager
    excuses: tuple[str, ...] = ()  # why a regression is not counted (GPU throttled or shared, timing unstable)
    injected: float | None = None  # --moeperf-inject-slowdown's fraction, when one was added

    @property
    def counted(self) -> bool:
        """A regression that fails the test."""
        return self.kind is Kind.REGRESSION and not (self.recorded or self.advisory or self.excuses)

    @property
    def uncounted_regression(self) -> bool:
        return self.kind is Kind.REGRESSION and not self.counted

    def label(self) -> str:
        """For people: 'regression', 'pass, recorded', 'regression (eager: advisory)', 'regression (not counted:
        GPU throttled)', '... (injected +5%)'."""
        text = self.kind.value
        if self.recorded:
            text += ", recorded"
        elif self.advisory:
            text += " (eager: advisory)"
        elif self.excuses:
            text += f" (not counted: {'; '.join(self.excuses)})"
        if self.injected:
            text += f" (injected +{self.injected:.0%})"
        return text

    def to_json(self) -> dict:
        return {"kind": self.kind.value, "recorded": self.recorded, "advisory": self.advisory,
                "excuses": list(self.excuses), "injected": self.injected}

    @classmethod
    def from_json(cls, data: dict) -> "Outcome":
        return cls(Kind(data["kind"]), bool(data.get("recorded")), bool(data.get("advisory")),
                   tuple(data.get("excuses") or ()), data.get("injected"))

    @classmethod
    def of(cls, result: dict) -> "Outcome":
        """The outcome of a result as JSON: its 'outcome' record, or for reports written before there was one
        (benchmarks/results/*.json of 2026-11) its 'verdict' label read once, here."""
        if "outcome" in result:
            return cls.from_json(result["outcome"])
        label = result["verdict"]
        kind = Kind(label.split(" ", 1)[0].split(",", 1)[0])
        label, _, injected = label.partition(" (injected +")
        excuses = ()
        if "(not counted: " in label:  # "(not counted: a; b)", whose excuses may hold parentheses themselves
            excuses = tuple(label.split("(not counted: ", 1)[1].removesuffix(")").split("; "))
        return cls(kind, recorded=", recorded" in label, advisory="(eager: advisory)" in label, excuses=excuses,
                   injected=float(injected.split("%", 1)[0]) / 100 if injected else None)


def decide(kind: Kind, *, recording: bool, eager: bool, gate_eager: bool, excuses: list[str],
           injected: float | None) -> Outcome:
    """The outcome of a verdict: recorded when recording; an eager regression is advisory unless eager timings are
    gated; a regression on a disturbed GPU or measurement carries its excuses."""
    if recording:
        return Outcome(kind, recorded=True, injected=injected)
    if kind is Kind.REGRESSION and eager and not gate_eager:
        return Outcome(kind, advisory=True, injected=injected)
    if kind is Kind.REGRESSION and excuses:
        return Outcome(kind, excuses=tuple(excuses), injected=injected)
    return Outcome(kind, injected=injected)


BASELINE_FIELDS = ("median_us", "iqr_us", "min_us", "samples_us", "gbps", "ceiling_pct", "mode", "l2", "routing",
                   "input_sets", "invocations")
JUNIT_FIELDS = ("median_us", "iqr_us", "min_us", "gbps", "ceiling_pct", "tflops", "matmul_pct", "relative_error",
                "baseline_median_us", "change_pct", "machine_band", "verdict", "mode", "gpu")


@dataclasses.dataclass
class TimingResult:
    scenario: str
    file: str
    key: str
    nodeid: str
    op: str
    impl: str
    dtype: str
    M: int
    gpu: str
    gpu_uuid: str
    worker_gpu: str | None
    median_us: float
    iqr_us: float
    min_us: float
    samples_us: list[float]
    mode: str  # "graph", or "eager" when the calls could not be captured
    note: str
    invocations: int
    input_sets: int
    l2: str
    routing: str
    bytes: int
    extra_bytes: int
    gbps: float
    ceiling_gbps: float
    ceiling_pct: float
    threshold: float
    outcome: Outcome
    verdict_detail: str
    confirmed: bool | None  # None: no second measurement was needed
    injected: dict | None  # what --moeperf-inject-slowdown added
    health: dict | None  # the GPU's state, read when a regression was found
    baseline_median_us: float | None
    change_pct: float | None
    # fused_experts only
    tflops: float | None = None
    matmul_ceiling_tflops: float | None = None
    matmul_pct: float | None = None
    relative_error: float | None = None
    tolerance: float | None = None
    # --moeperf-against: {"ref", "commit", "median_us", "ratio", "low", "high"} of the reference revision
    reference: dict | None = None
    # the least slowdown allowed because the baseline was timed on another GPU (--moeperf-machine-band); None: on
    # this GPU, or no stored baseline
    machine_band: float | None = None

    @property
    def verdict(self) -> str:
        return self.outcome.label()

    @property
    def samples_kept(self) -> int:
        return len(self.samples_us)

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        data["outcome"] = self.outcome.to_json()
        data.update(verdict=self.verdict, samples_kept=self.samples_kept)
        return data

    @classmethod
    def from_json(cls, data: dict) -> "TimingResult":
        names = {f.name for f in dataclasses.fields(cls)}
        fields = {k: v for k, v in data.items() if k in names}
        fields["outcome"] = Outcome.of(data)
        return cls(**fields)

    def baseline_entry(self) -> dict:
        """What --update-baselines stores for this test."""
        return {k: getattr(self, k) for k in BASELINE_FIELDS}

    def junit_properties(self) -> list[tuple[str, object]]:
        props = [(f"moeperf_{k}", getattr(self, k)) for k in JUNIT_FIELDS if getattr(self, k) is not None]
        if self.reference:
            props += [(f"moeperf_reference_{k}", self.reference[k]) for k in ("ref", "commit", "median_us", "ratio",
                                                                              "low", "high", "graph_pairs")]
        return props
