"""Baseline files: baselines/<gpu-slug>/<scenario>.json, merged and written atomically (docs/contract.md section 4)."""
from __future__ import annotations

import collections
import dataclasses
import datetime
import json
import math
from pathlib import Path

from pytest_moeperf.spec.scenario import check_name
from pytest_moeperf.store import files

SCHEMA = 1


class BaselineError(ValueError):
    pass


def path_for(root: Path, gpu_slug: str, scenario: str) -> Path:
    """root/<gpu-slug>/<scenario>.json; both names must be plain file names, so the path stays inside root."""
    for what, name in (("GPU name", gpu_slug), ("scenario name", scenario)):
        why = check_name(str(name))
        if why:
            raise BaselineError(f"{what} {why}")
    return Path(root) / gpu_slug / f"{scenario}.json"


def load(path: Path) -> dict:
    """The file's entries ({} when there is no file). A file that cannot be read or parsed is an error."""
    return load_file(path).entries


# What a baseline's environment is compared with when it is read back: (key, what to call it).
COMPARED = (("device", "GPU model"), ("uuid", "GPU"), ("driver_version", "driver"), ("cuda", "CUDA"),
            ("torch", "torch"), ("triton", "triton"), ("pytest_processes", "pytest processes on the GPU"))


def differences(recorded: dict, current: dict, sources: str | None = None) -> list[str]:
    """How the environment a baseline was recorded in differs from this run's ("driver 580.1 -> 590.2"), and
    whether the implementations' sources changed since (their digest, impls.source_digest, differs)."""
    out = [f"{name} {recorded[key]} -> {current[key]}" for key, name in COMPARED
           if recorded.get(key) and current.get(key) and str(recorded[key]) != str(current[key])]
    if current.get("timing_method") and recorded.get("timing_method") != current["timing_method"]:
        out.append("timed by another method (" + (recorded.get("timing_method") or "before the host's launch of "
                   "each replay was kept out of the timing") + ")")
    if sources and recorded.get("sources") and recorded["sources"] != sources:
        out.append("kernels changed since it was recorded")
    elif sources and not recorded.get("sources"):
        out.append("kernels of unknown age (recorded before sources were tracked)")
    return out


def timed_on(environment: dict, gpu_uuid: str) -> bool:
    """Whether a baseline recorded in `environment` was timed on the GPU `gpu_uuid` (nvidia-smi writes "GPU-<uuid>",
    torch "<uuid>"); a baseline that does not say where it was timed was not timed here."""
    def bare(uuid) -> str:
        return str(uuid or "").strip().lower().removeprefix("gpu-")
    return bool(bare(gpu_uuid)) and bare(environment.get("uuid")) == bare(gpu_uuid)


MIN_SAMPLES = 3  # the rank test and the noise band need a few samples


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def entry_problem(entry) -> str | None:
    """Why an entry cannot serve as a baseline (None when it can): the verdict needs a positive finite median and at
    least MIN_SAMPLES positive finite samples."""
    if not isinstance(entry, dict):
        return f"must be a mapping with median_us and samples_us, got {type(entry).__name__}"
    if not _positive(entry.get("median_us")):
        return f"median_us must be a positive finite number, got {str(entry.get('median_us'))[:40]}"
    samples = entry.get("samples_us")
    if not isinstance(samples, list) or len(samples) < MIN_SAMPLES:
        return f"samples_us must be a list of at least {MIN_SAMPLES} timings"
    bad = next((x for x in samples if not _positive(x)), None)
    if bad is not None:
        return f"samples_us must hold positive finite numbers, got {str(bad)[:40]}"
    return None


# A file holds one environment, the last writer's ("environment"). When a run re-records only some entries (-k, or a
# run cut short), the entries it kept from another environment point to it by index ("recorded_in") in
# "earlier_environments" (each with the date it was written), so that every entry says where it was timed.
EARLIER = "earlier_environments"
RECORDED_IN = "recorded_in"


@dataclasses.dataclass
class BaselineFile:
    entries: dict[str, dict]
    environment: dict  # the last writer's, and that of every entry without RECORDED_IN
    earlier: list[dict]  # the environments of the entries with RECORDED_IN (an index into this list)
    updated: str | None = None

    def environment_of(self, key: str) -> dict:
        return self._environment_at(self.entries[key].get(RECORDED_IN))

    def _environment_at(self, index: int | None) -> dict:
        return self.environment if index is None else self.earlier[index]

    def environments(self, keys) -> list[tuple[dict, int]]:
        """The environments the entries `keys` were recorded in, each with how many of them it holds."""
        held = collections.Counter(self.entries[k].get(RECORDED_IN) for k in keys if k in self.entries)
        return [(self._environment_at(index), count) for index, count in held.items()]


def load_file(path: Path) -> BaselineFile:
    """A baseline file (empty when there is none). A file that cannot be read or parsed is an error."""
    path = Path(path)
    if not path.exists():
        return BaselineFile({}, {}, [])
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        why = "nested too deeply" if isinstance(e, RecursionError) else str(e)[:200]
        raise BaselineError(f"baseline file {path} is unreadable or corrupted ({why}); fix or delete it - it will "
                            f"not be overwritten") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or not isinstance(data.get("entries"), dict):
        raise BaselineError(f"baseline file {path} is not a pytest-moeperf baseline (schema {SCHEMA} with "
                            f"'entries'); fix or delete it - it will not be overwritten")
    earlier = data.get(EARLIER, [])
    if not isinstance(earlier, list) or not all(isinstance(e, dict) for e in earlier):
        raise BaselineError(f"baseline file {path}: {EARLIER} must be a list of mappings; fix or delete it - it will "
                            f"not be overwritten")
    for key, entry in data["entries"].items():
        why = entry_problem(entry)
        index = entry.get(RECORDED_IN) if isinstance(entry, dict) else None
        if not why and index is not None and not (type(index) is int and 0 <= index < len(earlier)):
            why = f"{RECORDED_IN} must index {EARLIER} (0 to {len(earlier) - 1}), got {str(index)[:40]}"
        if why:
            raise BaselineError(f"baseline file {path}: entry {str(key)[:100]!r}: {why}; fix or delete it - it will "
                                f"not be overwritten")
    environment = data.get("environment")
    return BaselineFile(data["entries"], environment if isinstance(environment, dict) else {}, earlier,
                        data.get("updated"))


def _rounded(entry: dict) -> dict:
    out = {}
    for k, v in entry.items():
        if isinstance(v, float):
            out[k] = round(v, 4)
        elif isinstance(v, list):
            out[k] = [round(x, 4) if isinstance(x, float) else x for x in v]
        else:
            out[k] = v
    return out


def _undated(environment: dict) -> dict:
    return {k: v for k, v in environment.items() if k != "updated"}


def update(path: Path, entries: dict[str, dict], environment: dict, scenario: str) -> None:
    """Write or replace `entries`, keep every other entry, atomically (temp file + rename, under a lock). The file's
    environment becomes `environment`; a kept entry timed in another one points to it (RECORDED_IN)."""
    path = Path(path)
    with files.file_lock(path):
        old = load_file(path)
        merged, earlier = {}, []
        for key, entry in old.entries.items():
            if key in entries:
                continue
            index = entry.get(RECORDED_IN)
            was = old.environment_of(key)
            entry = {k: v for k, v in entry.items() if k != RECORDED_IN}
            if _undated(was) != _undated(environment):
                if index is None and old.environment:  # the last writer's: keep when it wrote
                    was = dict(was, updated=old.updated)
                if was not in earlier:
                    earlier.append(was)
                entry[RECORDED_IN] = earlier.index(was)
            merged[key] = entry
        merged.update({k: _rounded(v) for k, v in entries.items()})
        data = {
            "schema": SCHEMA,
            "scenario": scenario,
            "environment": environment,
            "updated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "entries": merged,
        }
        if earlier:
            data[EARLIER] = earlier
        files.write_json_atomic(path, data)


class BaselineStore:
    """The baseline files of one GPU model under one folder: their paths, a cache of what was read, and the update
    of the files a run recorded (docs/contract.md section 4)."""

    def __init__(self, root: Path, gpu_slug: str | None):
        self.root, self.gpu_slug = Path(root), gpu_slug
        self._files: dict[str, BaselineFile] = {}

    def path(self, scenario: str) -> Path:
        return path_for(self.root, self.gpu_slug, scenario)

    def _load(self, scenario: str) -> None:
        self._files[scenario] = load_file(self.path(scenario))

    def load_all(self, scenarios) -> None:
        """Read these scenarios' files now: a corrupted one stops the run before any test (BaselineError)."""
        for name in scenarios:
            self._load(name)

    def _file(self, scenario: str) -> BaselineFile:
        """The scenario's file, read on first use."""
        if scenario not in self._files:
            self._load(scenario)
        return self._files[scenario]

    def entry(self, scenario: str, key: str) -> dict | None:
        return self._file(scenario).entries.get(key)

    def environment_of(self, scenario: str, key: str) -> dict:
        """The environment the scenario's entry `key` was recorded in (the entry must exist)."""
        return self._file(scenario).environment_of(key)

    def environments(self, scenario: str, keys) -> list[tuple[dict, int]]:
        """BaselineFile.environments of the scenario's file ([] when it was not read)."""
        f = self._files.get(scenario)
        return f.environments(keys) if f is not None else []

    def write(self, results, environments: dict[str, dict], sources) -> tuple[list[tuple[Path, int]], list[str]]:
        """Merge the results' baseline entries into their files (one per GPU and scenario), each with the environment
        of its GPU and the digest `sources(scenario)` of the implementations it timed: ([(path, entries)], errors);
        a file that cannot be written is an error, the others are written all the same."""
        by_file: dict[tuple[str, str], dict] = {}
        for r in results:
            by_file.setdefault((r.gpu, r.scenario), {})[r.key] = r.baseline_entry()
        written, errors = [], []
        for (gpu, scenario), entries in sorted(by_file.items()):
            environment = dict(environments.get(gpu, {}), sources=sources(scenario))
            try:
                path = path_for(self.root, gpu, scenario)
                update(path, entries, environment, scenario)
            except (BaselineError, OSError) as e:
                errors.append(f"baselines of {scenario} ({len(entries)} entries) not written: {e}")
            else:
                written.append((path, len(entries)))
        return written, errors
