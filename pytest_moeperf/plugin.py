"""pytest hooks of pytest-moeperf (registered through the pytest11 entry point). Inert without --moeperf."""
from __future__ import annotations

import os

import pytest
import torch

from pytest_moeperf.measure import health
from pytest_moeperf.run_state import AGAINST_KEY, RUN_KEY, MoePerfRun, gpu_uuids, is_worker, visible_gpus
from pytest_moeperf.spec import settings

INI = (
    ("moeperf_baselines", "folder of baseline files (default: baselines/ under the rootdir)"),
    ("moeperf_threshold", "allowed slowdown for every scenario, overriding theirs (e.g. 0.05)"),
    ("moeperf_noise_floor_us", "smallest slowdown in microseconds that can fail a test (default "
                               f"{settings.DEFAULT_NOISE_FLOOR_US:g})"),
    ("moeperf_machine_band", "least slowdown allowed against a baseline timed on another GPU of the model (default "
                             f"{settings.DEFAULT_MACHINE_BAND:g})"),
    ("moeperf_strict", "true: a timing test without a baseline for this GPU fails"),
    ("moeperf_cpu_max_batch", "largest batch size checked under the Triton interpreter on the CPU (default 64)"),
    ("moeperf_json", "write every figure and the environment to this JSON file"),
    ("moeperf_markdown", "write a markdown summary to this file (also appended to $GITHUB_STEP_SUMMARY when set)"),
    ("moeperf_plot", "write one PNG per scenario and op into this folder (needs matplotlib)"),
    ("moeperf_gate_eager", "true: eager-timed results (not capturable in a CUDA graph) fail on a regression too"),
)


def pytest_addhooks(pluginmanager):
    from pytest_moeperf import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


def pytest_moeperf_register_impls(registry):
    """The built-ins, through the hook every other implementation uses."""
    from pytest_moeperf.oracle.registry import add_builtins

    add_builtins(registry)


def pytest_addoption(parser):
    group = parser.getgroup("moeperf", "MoE kernel correctness and timing gates")
    group.addoption("--moeperf", nargs="+", metavar="PATH", default=None,
                    help="scenario YAML files or folders: turns the plugin on")
    group.addoption("--update-baselines", action="store_true", default=False,
                    help="record the timings of the selected tests as this GPU's baselines (other entries kept)")
    group.addoption("--moeperf-strict", action="store_true", default=False,
                    help="fail timing tests that have no baseline for this GPU")
    group.addoption("--moeperf-gate-eager", action="store_true", default=False,
                    help="let eager-timed results (calls that cannot be captured in a CUDA graph) fail on a "
                         "regression; by default their verdict is advisory, host noise dominates them")
    group.addoption("--moeperf-threshold", type=settings.THRESHOLD, default=None, metavar="FRACTION",
                    help="allowed slowdown for every scenario, overriding theirs")
    group.addoption("--moeperf-noise-floor-us", type=settings.NOISE_FLOOR_US, default=None, metavar="US",
                    help="smallest slowdown in microseconds that can fail a timing test (default "
                         f"{settings.DEFAULT_NOISE_FLOOR_US:g})")
    group.addoption("--moeperf-machine-band", type=settings.MACHINE_BAND, default=None, metavar="FRACTION",
                    help="least slowdown allowed against a baseline timed on another GPU of the same model (its "
                         f"uuid differs): two GPUs of one model run a kernel steadily apart (default "
                         f"{settings.DEFAULT_MACHINE_BAND:g}; 0: judge as on the recording GPU)")
    group.addoption("--moeperf-baselines", default=None, metavar="DIR", help="folder of baseline files")
    group.addoption("--moeperf-inject-slowdown", type=settings.INJECT_SLOWDOWN, default=None, metavar="FRACTION",
                    help="PROVING THE GATE ONLY: make every timed call slower by this fraction of its baseline "
                         "median (a GPU spin added to them); results are labelled 'injected'")
    group.addoption("--moeperf-against", default=None, metavar="REF",
                    help="the pull-request gate: time each test against a reference revision of this repository "
                         "(a git revision, e.g. origin/main, or a folder with another checkout), both in this process "
                         "on the same inputs, replays interleaved, judged on the paired ratios (no stored baseline)")
    group.addoption("--moeperf-tune", action="store_true", default=False,
                    help="instead of timing against baselines, time every launch config of the search space per "
                         "(op, dtype, batch size) and write the fastest to kernels/configs/ (GPU only)")
    group.addoption("--moeperf-tune-max-configs", type=settings.TUNE_MAX_CONFIGS, default=None, metavar="N",
                    help="with --moeperf-tune: time the default and N-1 other configs drawn (seeded by the test) from "
                         "the search space, instead of all of it; for sweeps too large for the time at hand")
    group.addoption("--moeperf-json", default=None, metavar="PATH", help="write results and environment as JSON")
    group.addoption("--moeperf-markdown", default=None, metavar="PATH",
                    help="write a markdown summary (also appended to $GITHUB_STEP_SUMMARY when set)")
    group.addoption("--moeperf-plot", default=None, metavar="DIR",
                    help="write one PNG per scenario and op: latency against batch size (needs matplotlib)")
    group.addoption("--moeperf-cpu-max-batch", type=settings.CPU_MAX_BATCH, default=None, metavar="M",
                    help="largest batch size checked on the CPU under the Triton interpreter (default 64)")
    for name, text in INI:
        parser.addini(name, text, default="")


def pytest_configure(config):
    paths = config.getoption("moeperf")
    if not paths:
        return
    pinned = None
    if is_worker(config):
        pinned = _check_worker_gpu(config)
        health.register_worker(config.workerinput["testrunuid"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":  # read by triton.jit when the kernels are decorated: before they are imported
        os.environ.setdefault("TRITON_INTERPRET", "1")
    run = MoePerfRun.load(config, paths, device, pinned)
    config.stash[RUN_KEY] = run
    config.pluginmanager.register(run, "moeperf-run")
    if not is_worker(config):  # the controller (or the only process) gathers results and writes everything
        from pytest_moeperf.reporting import Reporter

        config.pluginmanager.register(Reporter(run), "moeperf-reporter")
    files = [str(s.path) for s, _ in run.entries.values()]
    if config.args_source != pytest.Config.ArgsSource.ARGS:
        config.args[:] = files
    else:
        config.args.extend(files)


def _check_worker_gpu(config) -> str | None:
    """In an xdist worker: the GPU the controller gave it (CUDA_VISIBLE_DEVICES, set when the worker process was
    started, before anything could start CUDA), checked by uuid so that two workers never share a GPU unknowingly."""
    expected = config.workerinput.get("moeperf_gpu_uuids") or {}
    target = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not expected or target not in expected:
        return None
    actual = str(torch.cuda.get_device_properties(0).uuid) if torch.cuda.is_available() else None
    if actual != expected[target]:
        raise pytest.UsageError(f"xdist worker {config.workerinput['workerid']} was given GPU {target} (uuid "
                                f"{expected[target]}) but CUDA shows {actual}")
    return target


def _with_gpu(spec: str, gpu: str, sharing: int) -> str:
    if "env:CUDA_VISIBLE_DEVICES=" in spec:
        return spec
    return f"{spec}//env:CUDA_VISIBLE_DEVICES={gpu}//env:{health.WORKERS_PER_GPU_VAR}={sharing}"


def pytest_cmdline_main(config):
    """Under xdist, start worker i with CUDA_VISIBLE_DEVICES set to GPU i mod (visible GPUs), telling it how many
    workers share that GPU. Recording baselines with workers sharing a GPU is refused: on an H200 a kernel timed
    while sibling workers used the GPU read up to ~17% faster than in a process alone on it (the launch-bound ones;
    benchmarks/results/h200-2026-12-02-fresh-machine.md), and such a baseline would make every plain run fail."""
    tx = getattr(config.option, "tx", None)
    if config.getoption("moeperf") and tx:
        gpus = visible_gpus()
        if gpus:
            sharing = [len(tx[g::len(gpus)]) for g in range(len(gpus))]  # workers per GPU
            if max(sharing) > 1 and config.getoption("update_baselines"):
                raise pytest.UsageError(
                    f"--update-baselines with {len(tx)} xdist workers on {len(gpus)} GPU(s): workers sharing a GPU "
                    "time each other's kernels faster than a run alone on it does, so the baselines would not match "
                    "a plain run; record with -n auto (one worker per GPU) or without -n")
            config.option.tx = [_with_gpu(spec, gpus[i % len(gpus)], sharing[i % len(gpus)])
                                for i, spec in enumerate(tx)]


def pytest_collect_file(file_path, parent):
    run = parent.config.stash.get(RUN_KEY, None)
    if run is not None and file_path.resolve() in run.entries:
        from pytest_moeperf.items import ScenarioFile

        return ScenarioFile.from_parent(parent, path=file_path)
    return None


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_auto_num_workers(config):
    """-n auto: one worker per visible GPU."""
    if config.getoption("moeperf"):
        gpus = visible_gpus()
        return len(gpus) or None
    return None


XDIST_RUN_ID_KEY = pytest.StashKey[str]()


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    if node.config.getoption("moeperf"):
        node.config.stash[XDIST_RUN_ID_KEY] = node.workerinput["testrunuid"]  # its workers register under it
        node.workerinput["moeperf_gpu_uuids"] = gpu_uuids()
        run = node.config.stash.get(RUN_KEY, None)
        if run is not None and run.reference is not None:
            node.workerinput[AGAINST_KEY] = run.reference_for_workers()


def pytest_unconfigure(config):
    run = config.stash.get(RUN_KEY, None)
    if run is not None:
        run.remove_reference()
    run_id = config.stash.get(XDIST_RUN_ID_KEY, None)
    if run_id is not None:  # the xdist controller, after its workers: their registrations (health.register_worker)
        health.forget_run(run_id)
