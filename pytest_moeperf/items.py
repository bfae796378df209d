"""Collectors and test items: a scenario file expands to correctness and timing tests of op x impl x dtype x M."""
from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import random
import statistics

import pytest

from pytest_moeperf.gate import verdict
from pytest_moeperf.gate.result import TimingResult, decide
from pytest_moeperf.gate.verdict import Kind
from pytest_moeperf.inputs import experts, problem
from pytest_moeperf.measure import health
from pytest_moeperf.measure.timing import pair_timing
from pytest_moeperf.oracle import reference_experts
from pytest_moeperf.oracle.impls import load_kernels
from pytest_moeperf.run_state import RUN_KEY

# A measurement whose IQR exceeds MAX_SPREAD of its median is taken again, up to TRIES times, and the tightest kept;
# one still spread by more than UNSTABLE_SPREAD was disturbed (an H100 run showed a 2.9 us kernel at 4-27 us in one
# measurement with clocks and processes normal): its regression is reported but not counted.
MAX_SPREAD = 0.05
TRIES = 3
UNSTABLE_SPREAD = 0.2
# Samples of the reference's one plain measurement in an A/B test (what sizes its graphs and an injected slowdown).
PROBE_SAMPLES = 20


class ScenarioFile(pytest.File):
    def collect(self):
        run = self.config.stash[RUN_KEY]
        for kind in ("correctness", "tuning" if run.settings.tune else "timing"):
            yield Group.from_parent(self, name=kind, entry=run.entries[self.path.resolve()])


class Group(pytest.Collector):
    def __init__(self, *, entry, **kw):
        super().__init__(**kw)
        self.entry = entry

    def collect(self):
        scenario, impls = self.entry
        cls = {"correctness": CorrectnessItem, "timing": TimingItem, "tuning": TuneItem}[self.name]
        named = {s.name for s in scenario.impls or ()}
        for op in scenario.ops:
            for impl in impls:
                if op not in impl.ops:
                    continue
                if cls is TuneItem and (impl.name != TuneItem.IMPL or op not in load_kernels().tuning.OPS):
                    continue  # the tuned configs belong to the kernels: one impl that calls them tunes them
                if cls is TimingItem and impl.name == "torch" and "torch" not in named:
                    continue  # the oracle is timed only on request: it syncs, so it runs eagerly and host-bound
                for dtype in scenario.dtypes:
                    resolved = scenario.resolve_dtype(dtype)
                    for M in scenario.batch_sizes:
                        yield cls.from_parent(self, name=f"{op}[{impl.name}-{resolved}-M{M}]", scenario=scenario,
                                              impl=impl, op=op, dtype=resolved, M=M)


class _Item(pytest.Item):
    def __init__(self, *, scenario, impl, op, dtype, M, **kw):
        super().__init__(**kw)
        self.scenario, self.impl, self.op, self.dtype, self.M = scenario, impl, op, dtype, M
        self.run_state = self.config.stash[RUN_KEY]
        self.key = f"{op}[{impl.name}-{dtype}-M{M}]"

    def reportinfo(self):
        return self.path, None, f"{self.scenario.name}::{self.parent.name}::{self.name}"

    def repr_failure(self, excinfo, style=None):
        if excinfo.errisinstance(AssertionError):
            return f"{self.scenario.name} {self.parent.name} {self.key}: {excinfo.value}"
        return super().repr_failure(excinfo, style)

    def problem(self, input_set=0):
        return problem.build(self.scenario, self.dtype, self.M, self.run_state.device, input_set)


class CorrectnessItem(_Item):
    def runtest(self):
        cap = self.run_state.settings.cpu_max_batch
        if self.run_state.device == "cpu" and self.M > cap:
            pytest.skip(f"M={self.M} is above --moeperf-cpu-max-batch={cap} for the Triton interpreter on the CPU; "
                        f"run on a GPU or raise the cap")
        routes = self.M * self.scenario.shape.topk
        if self.run_state.device == "cpu" and self.op == "fused_experts" and routes > experts.CPU_MOST_ROUTES:
            pytest.skip(f"fused_experts checks at most {experts.CPU_MOST_ROUTES} routes (here {routes}) under the "
                        f"Triton interpreter; run on a GPU for the rest")
        error = self.impl.check(self.op, self.problem())
        if error is not None:
            self.user_properties.append(("moeperf_relative_error", f"{error:.3e}"))


class TimingItem(_Item):
    def runtest(self):
        run, timer = self.run_state, self.run_state.timer
        settings = run.settings
        if timer is None:
            pytest.skip("timing needs a CUDA GPU: run `pytest --moeperf <scenarios>` on a GPU machine (on the CPU "
                        "only the correctness tests run, under the Triton interpreter)")
        first = self.problem()
        try:
            error = self.impl.check(self.op, first)
        except AssertionError as e:
            pytest.skip(f"correctness failed, not timed: {str(e).splitlines()[0]}")
        payload, extra = problem.moved_bytes(self.op, first)
        input_sets = 1
        if self.scenario.timing.l2 == "cold":
            input_sets = timer.input_sets_for_cold_l2(payload + extra, first.hidden.device)

        def inputs(fresh: bool) -> list:
            """The input sets of one measurement: the checked `first` and the others, or (fresh) all made anew."""
            return [first if i == 0 and not fresh else self.problem(i) for i in range(input_sets)]

        def calls_on(sets: list, impl=self.impl, fresh: bool = False) -> list:
            """impl's calls on these input sets; fresh: with buffers of their own too (a scratch), not the kept ones."""
            if fresh:
                impl.renew_buffers()
            return [impl.prepare(self.op, p) for p in sets]

        ceiling = timer.ceiling_gbps(first.hidden.device)
        threshold = self.scenario.threshold if settings.threshold_override is None else settings.threshold_override
        reference, machine_band = None, None
        if run.reference is not None:
            ref_impl = self._reference_impl(first)
            m, ref, v, confirmed, injected = self._measure_against(timer, ref_impl, inputs, calls_on, threshold,
                                                                   first.hidden.device)
            base = {"median_us": ref.median}
            reference = {"ref": run.reference.ref, "commit": run.reference.commit, "median_us": ref.median,
                         "ratio": v.ratio, "low": v.low, "high": v.high, "graph_pairs": m.instances}
        else:
            base = run.baseline_entry(self.scenario, self.key)
            machine_band = run.machine_band(self.scenario, self.key, timer.gpu_uuid()) if base else None

            def make_calls(fresh: bool) -> list:
                return calls_on(inputs(fresh), fresh=fresh)
            m, v, confirmed, injected = self._measure_and_judge(timer, make_calls, base, threshold, machine_band,
                                                                first.hidden.device)

        gpu_health, excuses = None, []
        advisory = m.mode == "eager" and not settings.gate_eager
        if v.kind is Kind.REGRESSION and not settings.update_baselines and not advisory:
            gpu_health = timer.health()
            excuses = health.problems(gpu_health)
            if m.spread > UNSTABLE_SPREAD:
                excuses.append(f"timing unstable, IQR {100 * m.spread:.0f}% of the median after {TRIES} tries")
        outcome = decide(v.kind, recording=settings.update_baselines, eager=m.mode == "eager",
                         gate_eager=settings.gate_eager, excuses=excuses, injected=injected and injected["fraction"])
        gbps = payload / m.median / 1e3
        result = TimingResult(
            scenario=self.scenario.name, file=str(self.scenario.path), key=self.key, nodeid=self.nodeid, op=self.op,
            impl=self.impl.name, dtype=self.dtype, M=self.M, gpu=run.gpu_slug, gpu_uuid=timer.gpu_uuid(),
            worker_gpu=run.pinned_gpu, median_us=m.median, iqr_us=m.iqr, min_us=m.min, samples_us=m.samples_us,
            mode=m.mode, note=m.note, invocations=m.invocations, input_sets=m.input_sets, l2=self.scenario.timing.l2,
            routing=self.scenario.routing.label(), bytes=payload, extra_bytes=extra, gbps=gbps, ceiling_gbps=ceiling,
            ceiling_pct=100 * gbps / ceiling, threshold=threshold, outcome=outcome, verdict_detail=v.describe(),
            confirmed=confirmed, injected=injected, health=gpu_health, baseline_median_us=base and base["median_us"],
            change_pct=None if v.ratio is None else 100 * (v.ratio - 1), reference=reference,
            machine_band=machine_band)
        if self.op == "fused_experts":  # compute-bound at large batches: also against a matmul ceiling
            tflops = experts.flops(first) / m.median / 1e6
            mm = timer.matmul_ceiling_tflops(first.hidden.device, "fp8" if self.dtype == "fp8_w8a8" else "bf16")
            result = dataclasses.replace(result, tflops=tflops, matmul_ceiling_tflops=mm, matmul_pct=100 * tflops / mm,
                                         relative_error=error, tolerance=reference_experts.TOLERANCE[self.dtype])
        if self.dtype == "int8_w8a16" and self.op != "fused_experts":
            result.note = " ".join(filter(None, [m.note, "int8_w8a16 moves 16-bit activations: it matches bf16 by "
                                                         "construction"]))
        self.user_properties.append(("moeperf", json.dumps(result.to_json())))
        self.user_properties.extend(result.junit_properties())
        if outcome.counted:
            what = f" (an injected slowdown of {injected['fraction']:.0%})" if injected else ""
            against = f"the reference {run.reference.label}" if reference else f"the {run.gpu_slug} baseline"
            pytest.fail(f"{self.key}: slower than {against}{what}, confirmed by a second measurement: "
                        f"{v.describe()}", pytrace=False)
        if outcome.kind is Kind.NEW and not outcome.recorded and settings.strict:
            pytest.fail(f"{self.key}: no baseline for {run.gpu_slug} in {run.baseline_path(self.scenario)} "
                        f"(--moeperf-strict); record one with --update-baselines", pytrace=False)

    def _reference_impl(self, first):
        """The reference revision's implementation of this test, checked for correctness on the same inputs."""
        run = self.run_state
        ref_impl = run.reference_impls.get(self.scenario.path.resolve(), {}).get(self.impl.name)
        if ref_impl is None or self.op not in ref_impl.ops:
            pytest.skip(f"{run.reference.label} has no {self.op} of {self.impl.name!r} to compare with")
        try:
            ref_impl.check(self.op, first)
        except AssertionError as e:
            pytest.skip(f"the reference {run.reference.label} is not correct here, not compared: "
                        f"{str(e).splitlines()[0]}")
        return ref_impl

    def _measure_against(self, timer, ref_impl, inputs, calls_on, threshold, device):
        """--moeperf-against: the current implementation and the reference's on the same input sets (the very same
        tensors: Impl.prepare shares what it derives from a problem, so neither side's data lies elsewhere), replays
        interleaved, judged on the paired ratios, a regression confirmed as _confirm says. An injected slowdown (of
        the reference's median) slows the current side only. Returns (current, reference, verdict, confirmed,
        injected)."""
        injected, slow = None, (lambda calls: calls)
        with timer.lock():
            first = inputs(False)
            current, reference = calls_on(first), calls_on(first, ref_impl)
            # the reference timed the usual way once: what sets the pairs' graph length and an injection's size
            ref_us = timer.measure(reference, dataclasses.replace(self.scenario.timing, samples=PROBE_SAMPLES)).median
            timing = pair_timing(ref_us, self.scenario.timing, len(reference))
            fraction = self.run_state.settings.inject_slowdown
            if fraction:
                slow, injected = timer.slow_down(current, fraction * ref_us, device, timing)
                injected["fraction"] = fraction

            def sides_on(sets: list, k: int) -> list:
                """Both sides' calls on these input sets with buffers of their own made anew (a scratch), the
                current side's made first for even k, the reference's for odd k."""
                order = (self.impl, ref_impl) if k % 2 == 0 else (ref_impl, self.impl)
                made = {impl: calls_on(sets, impl, fresh=True) for impl in order}
                return [slow(made[self.impl]), made[ref_impl]]

            def once(fresh: bool):
                # Each measurement captures the sides' graphs anew several times (timer.interleave); the
                # confirmation also gives both sides new inputs (shared by both again). A side whose calls keep
                # buffers (a scratch) keeps its outputs at addresses of its own, which alone set A/A scratch sides
                # 2-3% apart for a whole test (benchmarks/results/2026-12-05-h100-h200.md): such calls are made
                # anew for every pair of graphs, the sides in turns, and for the confirmation the reference's first.
                sets = inputs(True) if fresh else first
                mine, theirs = sides_on(sets, 1) if fresh else [slow(current), reference]

                def renew(k: int) -> list:
                    return sides_on(sets, k + fresh)
                keeps = self.impl.keeps_buffers or ref_impl.keeps_buffers
                a, b = timer.interleave([mine, theirs], timing, renew=renew if keeps else None)
                return (a, b), verdict.judge_paired(a.samples_us, b.samples_us, threshold, a.instances)
            (a, b), v, confirmed = _confirm(once)
        return a, b, v, confirmed, injected

    def _measure_and_judge(self, timer, make_calls, base, threshold, machine_band, device):
        """Measure and judge against the stored baseline (make_calls(fresh): the calls on the test's inputs, or on
        inputs made anew; machine_band: None, or the band of a baseline from another GPU), a regression confirmed as
        _confirm says.

        Each measurement is repeated while its spread exceeds MAX_SPREAD (up to TRIES), keeping the tightest: a
        disturbed run must neither become a baseline nor fail a test. With --moeperf-inject-slowdown every call is
        first made slower by that fraction of the baseline median (of a clean measurement where there is no
        baseline); the last value returned says what was added.
        """
        baseline_samples = base and base["samples_us"]
        floor = self.run_state.settings.noise_floor_us
        timing = self.scenario.timing
        injected, slow = None, (lambda calls: calls)
        with timer.lock():
            calls = make_calls(False)
            fraction = self.run_state.settings.inject_slowdown
            if fraction:
                ref_us = base["median_us"] if base else timer.measure(calls, timing).median
                slow, injected = timer.slow_down(calls, fraction * ref_us, device, timing)
                injected["fraction"] = fraction

            def once(fresh: bool):
                m = self._steady_measure(timer, slow(make_calls(True) if fresh else calls))
                return m, verdict.judge(m.samples_us, baseline_samples, threshold, floor, machine_band)
            m, v, confirmed = _confirm(once)
        return m, v, confirmed, injected

    def _steady_measure(self, timer, calls):
        m = timer.measure(calls, self.scenario.timing)
        for _ in range(TRIES - 1):
            if m.spread <= MAX_SPREAD:
                break
            m = min(m, timer.measure(calls, self.scenario.timing), key=lambda x: x.spread)
        return m


def _confirm(once):
    """`once(fresh)` measures and judges, on the test's first inputs or (fresh) on inputs made anew, at other
    addresses: a layout that happens to be slow in one process must not fail the test. Only a regression that the
    second measurement confirms stays one: (what was measured, its verdict, confirmed: None when no second
    measurement was needed)."""
    measured, v = once(False)
    if v.kind is not Kind.REGRESSION:
        return measured, v, None
    again, v2 = once(True)
    if v2.kind is Kind.REGRESSION:
        return measured, v, True
    return again, v2, False


class TuneItem(_Item):
    """--moeperf-tune: time every config of the kernel's search space for this shape with the CUDA-graph timer (a
    few samples each), re-time the fastest few as the timing tests do, confirm the winner against the default in
    paired timings, check it against the reference, and hand it to the controller, which writes kernels/configs/ (the
    winner, or the removal of this batch size's entry when the default was not beaten)."""

    IMPL = "customized"
    QUICK_SAMPLES = 20
    QUICK_BUDGET_US = 50_000  # GPU time one candidate's quick timing may take (large-batch GEMMs take ms a call)
    FINALISTS = 3
    # A tuned entry is written only when it beats the default by MIN_GAIN in the median of 1 + CONFIRM_ROUNDS paired
    # timings; otherwise the batch size keeps (and a rerun restores) the default. Lookups are by exact batch size
    # (kernels/tuning.py), so no batch size runs a config that was not shown faster there.
    MIN_GAIN = 0.03
    CONFIRM_ROUNDS = 2

    def runtest(self):
        timer = self.run_state.timer
        if timer is None:
            pytest.skip("tuning needs a CUDA GPU")
        tuning = load_kernels().tuning
        p = self.problem()
        call = self.impl.prepare(self.op, p)
        with tuning.recording() as read:
            call()
        asked = {r for r in read if r.op == self.op}
        if len(asked) != 1:
            pytest.skip(f"{self.impl.name} {self.op} reads {len(asked)} tuned configs per call, not one")
        lookup = asked.pop()
        space = whole = tuning.candidates(lookup)
        cap = self.run_state.settings.tune_max_configs
        if cap is not None and len(whole) > cap:  # the default, and a seeded draw of the rest
            space = whole[:1] + random.Random(self.key).sample(whole[1:], cap - 1)
        runnable, failed = self._compile(space, call, tuning)
        with timer.lock():
            quick = self._quick_timing(timer, call, space[0], tuning)
            timed = []
            for config in runnable:
                with tuning.forced(config, self.op):
                    timed.append((timer.measure([call], quick).median, config))
            finalists = [c for _, c in sorted(timed, key=lambda t: t[0])[:self.FINALISTS]]
            if space[0] not in finalists:
                finalists.append(space[0])  # the default, timed as the winner is
            final = []
            for config in finalists:
                with tuning.forced(config, self.op):
                    final.append((timer.measure([call], self.scenario.timing).median, config))
            best_us, best = min(final, key=lambda t: t[0])
            default_us = next(us for us, c in final if c == space[0])
            ratios = [best_us / default_us]
            if best != space[0] and ratios[0] <= 1 - self.MIN_GAIN:
                ratios += self._paired_ratios(timer, call, best, space[0], tuning)
        ratio = statistics.median(ratios)
        kept = best != space[0] and ratio <= 1 - self.MIN_GAIN
        with tuning.forced(best, self.op):
            self.impl.check(self.op, p)
        result = {"file": lookup.name, "op": self.op, "M": self.M, "config": best, "kept": kept, "ratio": ratio,
                  "median_us": best_us, "default_us": default_us, "candidates": len(space), "space": len(whole),
                  "failed": failed, "key": self.key, "scenario": self.scenario.name}
        self.user_properties.append(("moeperf_tune", json.dumps(result)))

    def _paired_ratios(self, timer, call, config: dict, default: dict, tuning) -> list[float]:
        """CONFIRM_ROUNDS more ratios config / default, each from fresh captures of both replayed in turns: a winner
        is kept only when the median of all its ratios shows it MIN_GAIN faster."""
        ratios = []
        for _ in range(self.CONFIRM_ROUNDS):
            a, b = timer.compare([call], self.scenario.timing, [lambda: tuning.forced(config, self.op),
                                                                lambda: tuning.forced(default, self.op)])
            ratios.append(a.median / b.median)
        return ratios

    def _compile(self, space: list, call, tuning) -> tuple[list, list]:
        """(candidates that ran, why the others did not): each candidate called once, in threads (Triton compiles
        mostly outside the GIL), before the GPU's timing lock is taken, so workers sharing a GPU compile together."""
        def attempt(config):
            try:
                with tuning.forced(config, self.op):
                    call()
                return None
            except Exception as e:  # a candidate Triton cannot compile or launch here: left out, and said so
                if config == space[0]:
                    raise
                return f"{config}: {type(e).__name__}: {str(e).splitlines()[0][:120]}"

        threads = max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
        if os.environ.get("TRITON_INTERPRET") == "1":  # the interpreter compiles nothing, and it patches
            threads = 1  # triton.language while a kernel runs: two kernels in two threads break each other
        order = compile_order(space)
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            why = dict(zip(map(json.dumps, order), pool.map(attempt, order)))
        runnable = [c for c in space if why[json.dumps(c)] is None]
        return runnable, [w for w in why.values() if w is not None]

    def _quick_timing(self, timer, call, default: dict, tuning):
        """The scenario's timing cut to about QUICK_BUDGET_US per candidate, from one short timing of the default:
        fewer calls per graph and samples where a call takes long, the scenario's own (up to QUICK_SAMPLES
        samples) for microsecond kernels."""
        timing = self.scenario.timing
        with tuning.forced(default, self.op):
            call_us = max(timer.measure([call], dataclasses.replace(timing, invocations=1, samples=3,
                                                                    warmup=1)).median, 0.01)
        invocations = max(1, min(timing.invocations, round(200 / call_us)))
        samples = max(3, min(self.QUICK_SAMPLES, int(self.QUICK_BUDGET_US / (invocations * call_us))))
        return dataclasses.replace(timing, invocations=invocations, samples=samples, warmup=min(timing.warmup, 2))


def compile_order(space: list) -> list:
    """The search space rotated by this xdist worker's share: workers tuning the same kernel at other batch sizes
    start their compiles at different candidates, and then find the rest in Triton's cache."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    start = int(worker.removeprefix("gw") or 0) * len(space) // max(count, 1)
    return space[start:] + space[:start]
