"""Is the GPU fit to time on? Throttle reasons and other processes, read with nvidia-smi (never changed).

A confirmed regression measured while the GPU was throttled or shared is reported as such and not counted: the
slowdown may be the machine's, not the kernel's. Clocks are recorded but not judged: read between measurements they
show the idle clock, whatever the clock was while the kernel ran.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from pytest_moeperf.measure import env

# clocks_event_reasons bits that slow a running kernel down (GPU idle, 0x1, and the clock settings are left out).
SLOWDOWN_REASONS = {0x4: "software power cap", 0x8: "hardware slowdown", 0x20: "software thermal slowdown",
                    0x40: "hardware thermal slowdown", 0x80: "hardware power brake"}


def slowdown_reasons(mask: str) -> list[str]:
    """Names of the slowing reasons in an nvidia-smi clocks_event_reasons.active value such as '0x0000000000000024'."""
    try:
        bits = int(mask, 16)
    except (TypeError, ValueError):
        return []
    return [name for bit, name in SLOWDOWN_REASONS.items() if bits & bit]


def parse_pids(text: str) -> list[int]:
    """PIDs from `nvidia-smi --query-compute-apps=pid --format=csv,noheader` output."""
    return [int(line.strip()) for line in text.splitlines() if line.strip().isdigit()]


def _compute_pids(index: int) -> list[int] | None:
    try:
        out = subprocess.run(["nvidia-smi", f"--id={index}", "--query-compute-apps=pid", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_pids(out.stdout) if out.returncode == 0 else None


RUN_ID_VAR = "PYTEST_XDIST_TESTRUNUID"  # pytest-xdist sets it in every worker of a run, the same in all of them
WORKERS_PER_GPU_VAR = "MOEPERF_WORKERS_PER_GPU"  # set by the plugin in each xdist worker: the workers on its GPU


def _run_folder(run_id: str) -> Path:
    return Path(tempfile.gettempdir()) / f"pytest-moeperf-run-{run_id}"


def register_worker(run_id: str) -> None:
    """Put this process on the list of the xdist workers of run `run_id`. Workers that share one GPU do so on
    purpose (they time one at a time, under the GPU lock): they are this run, not another process on the GPU, and a
    regression measured beside them must count (else, with more workers than GPUs, none ever would)."""
    folder = _run_folder(run_id)
    try:
        folder.mkdir(exist_ok=True)
        (folder / str(os.getpid())).touch()
    except OSError:  # unlisted, the workers only excuse each other's regressions, as before
        pass


def forget_run(run_id: str) -> None:
    """Remove run `run_id`'s list of workers (the controller does, once its workers are done)."""
    shutil.rmtree(_run_folder(run_id), ignore_errors=True)


def run_workers(run_id: str | None = None) -> set[int]:
    """PIDs of the xdist workers registered for run `run_id` (this process's run by default; none outside xdist)."""
    run_id = run_id or os.environ.get(RUN_ID_VAR)
    if not run_id:
        return set()
    try:
        return {int(f.name) for f in _run_folder(run_id).iterdir() if f.name.isdigit()}
    except OSError:
        return set()


def snapshot(device_index: int, own_pids: set[int] | None = None) -> dict:
    """Clocks, temperature, slowing reasons and the other processes on the GPU; {} where nvidia-smi is missing.

    Other processes are the compute processes other than `own_pids` (this one and its run's xdist workers by
    default); inside a container nvidia-smi may list none, so an empty list is not proof that the GPU is free.
    """
    if shutil.which("nvidia-smi") is None:
        return {}
    physical = env.physical_index(device_index)
    smi = env.nvidia_smi(physical)
    pids = _compute_pids(physical)
    own = own_pids or {os.getpid()} | run_workers()
    return {
        "sm_clock_mhz": smi.get("clocks.sm"), "max_sm_clock_mhz": smi.get("clocks.max.sm"),
        "temperature_c": smi.get("temperature.gpu"),
        "slowdown": slowdown_reasons(smi.get("clocks_event_reasons.active", "")),
        "other_processes": None if pids is None else [p for p in pids if p not in own],
    }


def problems(h: dict) -> list[str]:
    """Why a measurement taken in this state may not be the kernel's fault ([] when nothing is known against it)."""
    out = []
    if h.get("slowdown"):
        out.append("GPU throttled (" + ", ".join(h["slowdown"]) + ")")
    if h.get("other_processes"):
        out.append("GPU shared with process(es) " + ", ".join(map(str, h["other_processes"])))
    return out
