"""State of one pytest --moeperf run, and the hooks that gather results and write baselines and reports.

Under pytest-xdist the workers measure; their results reach the controller as report.user_properties, and only the
controller writes baseline files and reports.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from pytest_moeperf import baselines, experts, options, report, timing, verdict
from pytest_moeperf.result import TimingResult

RUN_KEY = pytest.StashKey()


def is_worker(config) -> bool:
    return hasattr(config, "workerinput")


class MoePerfRun:
    def __init__(self, config, entries: dict, device: str, pinned_gpu: str | None = None):
        self.config = config
        self.pinned_gpu = pinned_gpu  # the GPU this xdist worker was given
        self.entries = entries  # resolved scenario path -> (Scenario, [Impl])
        self.device = device
        opt = config.getoption

        def setting(name: str, parse):  # the command line wins over the ini option; both are checked alike
            value = opt(name)
            return value if value is not None else options.ini_value(config, name, parse)

        try:
            self.update_baselines = opt("update_baselines")
            self.strict = opt("moeperf_strict") or options.ini_bool(config, "moeperf_strict")
            self.gate_eager = opt("moeperf_gate_eager") or options.ini_bool(config, "moeperf_gate_eager")
            self.threshold_override = setting("moeperf_threshold", options.THRESHOLD)
            floor = setting("moeperf_noise_floor_us", options.NOISE_FLOOR_US)
            cpu_max_batch = setting("moeperf_cpu_max_batch", options.CPU_MAX_BATCH)
        except ValueError as e:
            raise pytest.UsageError(str(e)) from None
        self.noise_floor_us = verdict.DEFAULT_NOISE_FLOOR_US if floor is None else floor
        self.cpu_max_batch = 64 if cpu_max_batch is None else cpu_max_batch
        self.inject_slowdown = opt("moeperf_inject_slowdown")
        if self.inject_slowdown and self.update_baselines:
            raise pytest.UsageError("--moeperf-inject-slowdown cannot be used with --update-baselines: an injected "
                                    "slowdown must never become a baseline")
        self.tune = opt("moeperf_tune")
        self.tune_max_configs = opt("moeperf_tune_max_configs")
        if self.tune and (self.update_baselines or self.inject_slowdown):
            raise pytest.UsageError("--moeperf-tune runs alone: tune first, then time and record baselines with the "
                                    "tuned configs in a second run")
        root = opt("moeperf_baselines") or config.getini("moeperf_baselines") or "baselines"
        self.baselines_root = Path(root) if Path(root).is_absolute() else Path(config.rootpath) / root
        self.json_path = opt("moeperf_json") or config.getini("moeperf_json") or None
        self.markdown_path = opt("moeperf_markdown") or config.getini("moeperf_markdown") or None
        self.plot_dir = opt("moeperf_plot") or config.getini("moeperf_plot") or None
        self.plots: list[Path] = []
        self.timer = timing.CudaTimer() if device == "cuda" else None  # None: timing tests are skipped
        self._baselines: dict[str, dict] = {}
        self._baseline_envs: dict[str, dict] = {}  # scenario -> environment its baseline file was recorded in
        self.baseline_notes: list[str] = []  # how those environments differ from this run's (not failures)
        self.results: list[TimingResult] = []
        self.environments: dict[str, dict] = {}
        self.written: list[tuple[Path, int]] = []
        self.skipped: dict[str, int] = {}  # "correctness" / "timing" / "tuning" -> tests skipped
        self.tuned: list[dict] = []  # winners of the tuning tests
        self.tuned_written: dict[Path, list[int]] = {}  # per file: [entries written, batch sizes keeping the default]
        self.tune_errors: list[str] = []

    @classmethod
    def load(cls, config, paths, device: str, pinned_gpu: str | None) -> "MoePerfRun":
        """Read and check every scenario and implementation up front; any problem is one usage error."""
        from pytest_moeperf import impls, plots, scenario

        entries, names = {}, {}
        try:
            for f in scenario.expand_paths(paths):
                s = scenario.load(f)
                if s.name.lower() in names:  # one baseline file each, also on a case-insensitive file system
                    raise scenario.ScenarioError(
                        f, None, "name", f"scenario name {s.name!r} is also used by {names[s.name.lower()]} "
                                         f"(baseline files are named after it)")
                names[s.name.lower()] = f
                entries[f.resolve()] = (s, impls.for_scenario(s))
        except (scenario.ScenarioError, impls.ImplError) as e:
            raise pytest.UsageError(str(e)) from None
        run = cls(config, entries, device, pinned_gpu)
        if run.plot_dir and not plots.available():
            raise pytest.UsageError(plots.INSTALL_HINT)
        return run

    # --- baselines -------------------------------------------------------------------------------------------
    def baseline_path(self, scenario) -> Path:
        return baselines.path_for(self.baselines_root, self.gpu_slug, scenario.name)

    def load_all_baselines(self) -> None:
        """Read every scenario's baseline file for this GPU now: a corrupted one stops the run before any test."""
        for scenario, _ in self.entries.values():
            self._load_baseline(scenario)

    def _load_baseline(self, scenario) -> None:
        entries, environment = baselines.load_file(self.baseline_path(scenario))
        self._baselines[scenario.name], self._baseline_envs[scenario.name] = entries, environment

    def baseline_entry(self, scenario, key: str) -> dict | None:
        if scenario.name not in self._baselines:
            self._load_baseline(scenario)
        return self._baselines[scenario.name].get(key)

    def sources(self, scenario_name: str) -> str:
        """Digest of the timed implementations' sources of a scenario (the reference, `torch`, is the plugin)."""
        from pytest_moeperf import impls

        for scenario, built in self.entries.values():
            if scenario.name == scenario_name:
                return impls.source_digest([i for i in built if i.name != "torch"], self.gpu_slug)
        return ""

    def _compare_environments(self, current: dict) -> list[str]:
        """One line per distinct difference between the baselines this run was judged against and this run."""
        timed = sorted({r.scenario for r in self.results})
        by_difference: dict[str, list[str]] = {}
        for name in timed:
            recorded = self._baseline_envs.get(name)
            if recorded:
                found = baselines.differences(recorded, current, self.sources(name))
                if found:
                    by_difference.setdefault("; ".join(found), []).append(name)
        return [f"baselines of {', '.join(names)} ({self.gpu_slug}) differ from this run: {what}"
                for what, names in sorted(by_difference.items())]

    @property
    def gpu_slug(self) -> str | None:
        return self.timer.gpu_slug if self.timer else None

    # --- hooks (registered as a plugin object) -----------------------------------------------------------------
    def pytest_sessionstart(self, session):
        if self.timer is not None and not is_worker(self.config):
            try:
                self.load_all_baselines()
            except baselines.BaselineError as e:
                raise pytest.UsageError(str(e)) from None

    def pytest_runtest_logreport(self, report):
        if report.when != "call":
            return
        kind = next((k for k in ("timing", "correctness", "tuning") if f"::{k}::" in report.nodeid), None)
        if report.skipped and kind:
            self.skipped[kind] = self.skipped.get(kind, 0) + 1
        for name, value in report.user_properties:
            if name == "moeperf":
                result = TimingResult.from_json(json.loads(value))
                self.results.append(result)
                if result.gpu and result.gpu not in self.environments:
                    self.environments[result.gpu] = {}
            elif name == "moeperf_tune":
                self.tuned.append(json.loads(value))
                if not is_worker(self.config):
                    self._write_tuned(self.tuned[-1])

    def _write_tuned(self, result: dict) -> None:
        """Each winner is written as soon as its test reports, so a tuning run that is stopped keeps what it found."""
        from pytest_moeperf import tuned  # imports the kernels: only once they are known to be importable

        written, errors = tuned.write_all([result])
        for path, kept, default in written:
            counts = self.tuned_written.setdefault(path, [0, 0])
            counts[0] += kept
            counts[1] += default
        self.tune_errors += errors

    def pytest_sessionfinish(self, session):
        if is_worker(self.config):
            return
        self._report_errors(session, self.tune_errors)
        if not self.results and not self.tuned:
            return
        if self.timer is not None:
            self.environments[self.gpu_slug] = self.timer.environment()
            self.baseline_notes = self._compare_environments(self.environments[self.gpu_slug])
        # Reports first, each on its own: nothing measured may be lost because one write (a baseline file on a
        # read-only disk, a plot folder that is a file) failed; every failure is reported and fails the session.
        errors = []

        def attempt(what: str, write) -> None:
            try:
                write()
            except (OSError, ValueError) as e:
                errors.append(f"could not write {what}: {e}")

        if self.json_path:
            attempt(f"the JSON report {self.json_path}",
                    lambda: report.write_json(self.json_path, self.results, self.environments, self.tuned))
        attempt(f"the markdown summary {self.markdown_path or '$GITHUB_STEP_SUMMARY'}",
                lambda: report.write_markdown(self.markdown_path, self.results, self.environments, self.tuned,
                                              self.baseline_notes))
        if self.plot_dir and self.results:
            from pytest_moeperf import plots

            def write_plots():
                self.plots = plots.write(self.plot_dir, self.results)
            attempt(f"the plots in {self.plot_dir}", write_plots)
        if self.update_baselines:
            errors += self._write_baselines()
        self._report_errors(session, errors)

    def _report_errors(self, session, errors: list[str]) -> None:
        if errors:
            tr = self.config.pluginmanager.get_plugin("terminalreporter")
            for e in errors:
                tr.write_line(f"pytest-moeperf: {e}", red=True)
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def _write_baselines(self) -> list[str]:
        by_file: dict[tuple[str, str], dict] = {}
        for r in self.results:
            by_file.setdefault((r.gpu, r.scenario), {})[r.key] = r.baseline_entry()
        errors = []
        for (gpu, scenario), entries in sorted(by_file.items()):
            environment = dict(self.environments.get(gpu, {}), sources=self.sources(scenario))
            try:
                path = baselines.path_for(self.baselines_root, gpu, scenario)
                baselines.update(path, entries, environment, scenario)
            except (baselines.BaselineError, OSError) as e:
                errors.append(f"baselines of {scenario} ({len(entries)} entries) not written: {e}")
            else:
                self.written.append((path, len(entries)))
        return errors

    def pytest_terminal_summary(self, terminalreporter):
        if is_worker(self.config):
            return
        tr = terminalreporter
        if self.results:
            tr.section("pytest-moeperf timing")
            ceilings = sorted({round(r.ceiling_gbps) for r in self.results if r.ceiling_gbps})
            tr.write_line(f"GPU {self.gpu_slug or '?'}; worst first; GB/s counts M*H*b*(1+k) bytes "
                          f"(local routes only under expert parallelism); % ceiling is of "
                          f"{'/'.join(map(str, ceilings)) or '?'} GB/s: {timing.CEILING_METHOD}")
            for line in report.table(self.results).splitlines():
                tr.write_line(line)
        for note in self.baseline_notes:
            tr.write_line(f"pytest-moeperf: {note}", yellow=True)
        for path, n in self.written:
            tr.write_line(f"pytest-moeperf: wrote {n} baseline entries to {path}")
        if self.update_baselines and not self.written:
            why = ("there is no CUDA GPU here, so every timing test was skipped" if self.timer is None else
                   "no timing test ran (see the selection: -k, -m, --deselect) or none passed")
            tr.write_line(f"pytest-moeperf: --update-baselines wrote nothing: {why}", yellow=True)
        if self.tuned:
            tr.section("pytest-moeperf tuning")
            for line in report.tuning_table(self.tuned).splitlines():
                tr.write_line(line)
        for path, (kept, default) in sorted(self.tuned_written.items()):
            tr.write_line(f"pytest-moeperf: wrote {kept} tuned configs to {path}"
                          + (f" ({default} batch sizes keep the default: no config beat it)" if default else ""))
        if self.plots:
            tr.write_line(f"pytest-moeperf: wrote {len(self.plots)} plots to {self.plot_dir}")
        if self.timer is None:
            gemm = ""
            if any("fused_experts" in scenario.ops for scenario, _ in self.entries.values()):
                gemm = (f"; fused_experts with hidden and intermediate sizes cut to <= {experts.CPU_MOST_DIM} and at "
                        f"most {experts.CPU_MOST_ROUTES} routes")
            tr.write_line("pytest-moeperf: no CUDA GPU here - correctness ran under the Triton interpreter "
                          f"(batch sizes <= {self.cpu_max_batch}{gemm}); skipped {self.skipped.get('timing', 0)} "
                          f"timing tests and {self.skipped.get('correctness', 0)} correctness tests above those caps. "
                          "Run on a GPU for those (pytest -rs lists them).")


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries (indices when the variable is unset)."""
    if not torch.cuda.is_available():
        return []
    listed = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    count = torch.cuda.device_count()
    return listed[:count] if len(listed) >= count else [str(i) for i in range(count)]


def gpu_uuids() -> dict[str, str]:
    """CUDA_VISIBLE_DEVICES entry -> uuid of each visible GPU."""
    return {gpu: str(torch.cuda.get_device_properties(i).uuid) for i, gpu in enumerate(visible_gpus())}
