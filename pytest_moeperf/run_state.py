"""The state of one pytest --moeperf run that every process shares: settings, scenarios and their implementations,
the timer and the baseline store. Test items read it through config.stash[RUN_KEY].

Under pytest-xdist the workers measure; their results reach the controller as report.user_properties and their
GPUs' environments as workeroutput, and only the controller's reporting plugin (reporting.Reporter, registered
only there, as pytest-xdist registers its DSession) writes baseline files, tuned configs and reports.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from pytest_moeperf.measure import timing
from pytest_moeperf.spec.settings import Settings
from pytest_moeperf.store import baselines

RUN_KEY = pytest.StashKey()
ENVIRONMENT_KEY = "moeperf_environment"  # workeroutput: {gpu slug: environment} of the GPU a worker timed on
AGAINST_KEY = "moeperf_against"  # workerinput: the reference revision the controller materialised


def is_worker(config) -> bool:
    return hasattr(config, "workerinput")


class MoePerfRun:
    def __init__(self, config, settings: Settings, registry, entries: dict, device: str,
                 pinned_gpu: str | None = None):
        self.config = config
        self.settings = settings
        self.registry = registry  # the implementations registered for this run (oracle/registry.py)
        self.entries = entries  # resolved scenario path -> (Scenario, [Impl])
        self.device = device
        self.pinned_gpu = pinned_gpu  # the GPU this xdist worker was given
        self.timer = timing.CudaTimer() if device == "cuda" else None  # None: timing tests are skipped
        self._store = None
        self._sources: dict[str, str] = {}  # scenario name -> digest (sources())
        self.reference = None  # --moeperf-against: the Revision
        self.reference_impls: dict = {}  # resolved scenario path -> {impl name: the reference's Impl}
        self._reference_tmp = None  # the folder the reference was extracted into (removed at the end)

    @classmethod
    def load(cls, config, paths, device: str, pinned_gpu: str | None) -> "MoePerfRun":
        """Read and check the settings, every scenario and implementation up front; any problem is one usage
        error."""
        from pytest_moeperf.oracle import impls
        from pytest_moeperf.oracle.registry import Registry
        from pytest_moeperf.report import plots
        from pytest_moeperf.spec import scenario

        try:
            settings = Settings.from_config(config)
        except ValueError as e:
            raise pytest.UsageError(str(e)) from None
        registry = Registry()
        try:
            config.hook.pytest_moeperf_register_impls(registry=registry)
        except ValueError as e:  # a bad registration: the message names the hook
            raise pytest.UsageError(str(e)) from None
        entries, names = {}, {}
        try:
            for f in scenario.expand_paths(paths):
                s = scenario.load(f)
                if s.name.lower() in names:  # one baseline file each, also on a case-insensitive file system
                    raise scenario.ScenarioError(
                        f, None, "name", f"scenario name {s.name!r} is also used by {names[s.name.lower()]} "
                                         f"(baseline files are named after it)")
                names[s.name.lower()] = f
                entries[f.resolve()] = (s, impls.for_scenario(s, registry))
        except (scenario.ScenarioError, impls.ImplError) as e:
            raise pytest.UsageError(str(e)) from None
        if settings.plot_dir and not plots.available():
            raise pytest.UsageError(plots.INSTALL_HINT)
        run = cls(config, settings, registry, entries, device, pinned_gpu)
        if settings.against is not None:
            run._load_reference()
        return run

    def _load_reference(self) -> None:
        """--moeperf-against: the controller extracts the revision once and hands it to the workers; every process
        imports the reference's implementations of every scenario up front, so a failure is one usage error."""
        from pytest_moeperf.oracle import impls, revision

        try:
            given = getattr(self.config, "workerinput", {}).get(AGAINST_KEY)
            if given:
                self.reference = revision.Revision(given["ref"], given["commit"], Path(given["root"]))
            else:
                self._reference_tmp = Path(tempfile.mkdtemp(prefix="moeperf-reference-"))
                self.reference = revision.materialise(self.settings.against, Path(self.config.rootpath),
                                                      self._reference_tmp)
            for path, (scenario, built) in self.entries.items():
                self.reference_impls[path] = revision.reference_impls(self.reference, scenario, built,
                                                                      self.registry)
        except (revision.RevisionError, impls.ImplError) as e:
            self.remove_reference()
            raise pytest.UsageError(str(e)) from None

    def reference_for_workers(self) -> dict:
        r = self.reference
        return {"ref": r.ref, "commit": r.commit, "root": str(r.root)} if r else {}

    def remove_reference(self) -> None:
        if self._reference_tmp is not None:
            shutil.rmtree(self._reference_tmp, ignore_errors=True)
            self._reference_tmp = None

    @property
    def gpu_slug(self) -> str | None:
        return self.timer.gpu_slug if self.timer else None

    @property
    def store(self) -> baselines.BaselineStore:
        """This GPU's baseline files (made on first use: a test's conftest may replace the timer before)."""
        if self._store is None or self._store.gpu_slug != self.gpu_slug:
            self._store = baselines.BaselineStore(self.settings.baselines_root, self.gpu_slug)
        return self._store

    def baseline_path(self, scenario):
        return self.store.path(scenario.name)

    def baseline_entry(self, scenario, key: str) -> dict | None:
        return self.store.entry(scenario.name, key)

    def machine_band(self, scenario, key: str, gpu_uuid: str) -> float | None:
        """None when the scenario's baseline entry `key` was timed on this GPU (or the band is 0: judged as if it
        were), else the least slowdown allowed against another GPU of the model (--moeperf-machine-band)."""
        if not self.settings.machine_band or baselines.timed_on(self.store.environment_of(scenario.name, key),
                                                                   gpu_uuid):
            return None
        return self.settings.machine_band

    def scenarios(self) -> list:
        return [scenario for scenario, _ in self.entries.values()]

    def sources(self, scenario_name: str) -> str:
        """Digest of the timed implementations' sources of a scenario (the reference, `torch`, is the plugin), read
        once per scenario: the environment check and the baseline writer both ask."""
        from pytest_moeperf.oracle import impls

        if scenario_name not in self._sources:
            built = next((b for s, b in self.entries.values() if s.name == scenario_name), None)
            self._sources[scenario_name] = "" if built is None else impls.source_digest(
                [i for i in built if i.name != "torch"], self.gpu_slug)
        return self._sources[scenario_name]

    def pytest_sessionfinish(self, session):
        """In an xdist worker: send the controller the environment of the GPU this worker timed on."""
        if is_worker(self.config) and self.timer is not None:
            self.config.workeroutput[ENVIRONMENT_KEY] = {self.gpu_slug: self.timer.environment()}


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
