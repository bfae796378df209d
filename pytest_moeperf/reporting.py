"""The controller's plugin: gathers the workers' results and environments, writes tuned configs as they come, then
the reports and (with --update-baselines) the baselines, and prints the summary. Registered only where it runs: in
the controller, or in the one process of a run without xdist."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_moeperf.gate.result import TimingResult
from pytest_moeperf.inputs import experts
from pytest_moeperf.measure import timing
from pytest_moeperf.report import summary
from pytest_moeperf.run_state import ENVIRONMENT_KEY, MoePerfRun
from pytest_moeperf.store import baselines


class Reporter:
    def __init__(self, run: MoePerfRun):
        self.run = run
        self.settings = run.settings
        self.results: list[TimingResult] = []
        self.environments: dict[str, dict] = {}  # gpu slug -> environment, from the workers (or this process)
        self.baseline_notes: list[str] = []  # how the baselines' environments differ from this run's (not failures)
        self.written: list[tuple[Path, int]] = []
        self.plots: list[Path] = []
        self.skipped: dict[str, int] = {}  # "correctness" / "timing" / "tuning" -> tests skipped
        self.tuned: list[dict] = []  # results of the tuning tests
        self.tuned_written: dict[Path, list[int]] = {}  # per file: [entries written, batch sizes keeping the default]
        self.tune_errors: list[str] = []

    @property
    def timer(self):
        return self.run.timer

    @property
    def gpu_slug(self) -> str | None:
        return self.run.gpu_slug

    def pytest_sessionstart(self, session):
        """Read every scenario's baseline file for this GPU now: a corrupted one stops the run before any test. An A/B
        run (--moeperf-against) reads none."""
        if self.timer is not None and self.settings.against is None:
            try:
                self.run.store.load_all(s.name for s in self.run.scenarios())
            except baselines.BaselineError as e:
                raise pytest.UsageError(str(e)) from None

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node, error):
        """An xdist worker is done: keep the environment of the GPU it timed on."""
        for slug, environment in (getattr(node, "workeroutput", {}) or {}).get(ENVIRONMENT_KEY, {}).items():
            if environment:
                self.environments.setdefault(slug, environment)

    def pytest_runtest_logreport(self, report):
        if report.when != "call":
            return
        kind = next((k for k in ("timing", "correctness", "tuning") if f"::{k}::" in report.nodeid), None)
        if report.skipped and kind:
            self.skipped[kind] = self.skipped.get(kind, 0) + 1
        for name, value in report.user_properties:
            if name == "moeperf":
                self.results.append(TimingResult.from_json(json.loads(value)))
            elif name == "moeperf_tune":
                self.tuned.append(json.loads(value))
                self._write_tuned(self.tuned[-1])

    def _compare_environments(self, current: dict) -> list[str]:
        """One line per distinct difference between the baselines this run was judged against and this run."""
        keys: dict[str, list[str]] = {}
        for r in self.results:
            keys.setdefault(r.scenario, []).append(r.key)
        by_difference: dict[str, list[str]] = {}
        for name in sorted(keys):
            recorded = self.run.store.environments(name, keys[name])
            for environment, count in recorded:
                found = baselines.differences(environment, current, self.run.sources(name))
                if found:
                    which = name if len(recorded) == 1 else f"{name} ({count} of its entries)"
                    by_difference.setdefault("; ".join(found), []).append(which)
        return [f"baselines of {', '.join(names)} ({self.gpu_slug}) differ from this run: {what}"
                for what, names in sorted(by_difference.items())]

    def _machine_band_note(self) -> list[str]:
        """One line when tests were judged against baselines timed on another GPU (with the machine band)."""
        bands = sorted({r.machine_band for r in self.results if r.machine_band is not None})
        if not bands:
            return []
        count = sum(r.machine_band is not None for r in self.results)
        return [f"{count} timing test(s) judged against baselines timed on another GPU, allowing at least "
                f"{' / '.join(f'{100 * b:g}%' for b in bands)} (--moeperf-machine-band: two GPUs of one model run a "
                f"kernel a few percent apart); on the recording GPU the threshold applies"]

    def _write_tuned(self, result: dict) -> None:
        """Each winner is written as soon as its test reports, so a tuning run that is stopped keeps what it found."""
        from pytest_moeperf.store import tuned  # imports the kernels: only once they are known to be importable

        written, errors = tuned.write_all([result])
        for path, kept, default in written:
            counts = self.tuned_written.setdefault(path, [0, 0])
            counts[0] += kept
            counts[1] += default
        self.tune_errors += errors

    def pytest_sessionfinish(self, session):
        self._report_errors(session, self.tune_errors)
        if not self.results and not self.tuned:
            return
        for slug in {r.gpu for r in self.results if r.gpu} - set(self.environments):
            if self.timer is not None:  # no worker sent it: this process timed on this GPU
                self.environments[slug] = self.timer.environment()
        if self.run.reference is not None:
            self.baseline_notes = [f"judged against {self.run.reference.label} in this process: the same inputs, "
                                   f"replays interleaved, verdicts on the paired ratios (no stored baseline)"]
        elif self.gpu_slug in self.environments:
            self.baseline_notes = self._compare_environments(self.environments[self.gpu_slug])
        self.baseline_notes += self._machine_band_note()
        # Reports first, each on its own: nothing measured may be lost because one write (a baseline file on a
        # read-only disk, a plot folder that is a file) failed; every failure is reported and fails the session.
        errors = []

        def attempt(what: str, write) -> None:
            try:
                write()
            except (OSError, ValueError) as e:
                errors.append(f"could not write {what}: {e}")

        if self.settings.json_path:
            attempt(f"the JSON report {self.settings.json_path}",
                    lambda: summary.write_json(self.settings.json_path, self.results, self.environments, self.tuned))
        attempt(f"the markdown summary {self.settings.markdown_path or '$GITHUB_STEP_SUMMARY'}",
                lambda: summary.write_markdown(self.settings.markdown_path, self.results, self.environments, self.tuned,
                                              self.baseline_notes))
        if self.settings.plot_dir and self.results:
            from pytest_moeperf.report import plots

            def write_plots():
                self.plots = plots.write(self.settings.plot_dir, self.results)
            attempt(f"the plots in {self.settings.plot_dir}", write_plots)
        if self.settings.update_baselines:
            written, failed = self.run.store.write(self.results, self.environments, self.run.sources)
            self.written += written
            errors += failed
        self._report_errors(session, errors)

    def _report_errors(self, session, errors: list[str]) -> None:
        if errors:
            tr = session.config.pluginmanager.get_plugin("terminalreporter")
            for e in errors:
                tr.write_line(f"pytest-moeperf: {e}", red=True)
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter):
        tr = terminalreporter
        if self.results:
            tr.section("pytest-moeperf timing")
            ceilings = sorted({round(r.ceiling_gbps) for r in self.results if r.ceiling_gbps})
            tr.write_line(f"GPU {self.gpu_slug or '?'}; worst first; GB/s counts M*H*b*(1+k) bytes "
                          f"(local routes only under expert parallelism); % ceiling is of "
                          f"{'/'.join(map(str, ceilings)) or '?'} GB/s: {timing.CEILING_METHOD}")
            for line in summary.table(self.results).splitlines():
                tr.write_line(line)
        for note in self.baseline_notes:
            tr.write_line(f"pytest-moeperf: {note}", yellow=True)
        for path, n in self.written:
            tr.write_line(f"pytest-moeperf: wrote {n} baseline entries to {path}")
        if self.settings.update_baselines and not self.written:
            why = ("there is no CUDA GPU here, so every timing test was skipped" if self.timer is None else
                   "no timing test ran (see the selection: -k, -m, --deselect) or none passed")
            tr.write_line(f"pytest-moeperf: --update-baselines wrote nothing: {why}", yellow=True)
        if self.tuned:
            tr.section("pytest-moeperf tuning")
            for line in summary.tuning_table(self.tuned).splitlines():
                tr.write_line(line)
        for path, (kept, default) in sorted(self.tuned_written.items()):
            tr.write_line(f"pytest-moeperf: wrote {kept} tuned configs to {path}"
                          + (f" ({default} batch sizes keep the default: no config beat it)" if default else ""))
        if self.plots:
            tr.write_line(f"pytest-moeperf: wrote {len(self.plots)} plots to {self.settings.plot_dir}")
        if self.timer is None:
            gemm = ""
            if any("fused_experts" in scenario.ops for scenario in self.run.scenarios()):
                gemm = (f"; fused_experts with hidden and intermediate sizes cut to <= {experts.CPU_MOST_DIM} and at "
                        f"most {experts.CPU_MOST_ROUTES} routes")
            tr.write_line("pytest-moeperf: no CUDA GPU here - correctness ran under the Triton interpreter "
                          f"(batch sizes <= {self.settings.cpu_max_batch}{gemm}); skipped "
                          f"{self.skipped.get('timing', 0)} "
                          f"timing tests and {self.skipped.get('correctness', 0)} correctness tests above those caps. "
                          "Run on a GPU for those (pytest -rs lists them).")


