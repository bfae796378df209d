"""What the plugin's end-to-end tests share: a fake timer (written into each pytester folder as a conftest) that
stands in for the CUDA one, so that the baseline and verdict logic runs for real on the CPU (FAKE_FACTOR scales its
medians, FAKE_REF_FACTOR the reference side's of an A/B run), and the small scenarios they run."""
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

FAKE_TIMER = '''
import contextlib, json, os, random
import pytest
from pytest_moeperf.run_state import RUN_KEY
from pytest_moeperf.measure.timing import Measurement

class FakeTimer:
    gpu_slug = "FAKE_GPU"
    def __init__(self):
        self.rng = random.Random(0)
    def measure(self, calls, cfg):
        for c in calls:
            c()
        factor = float(os.environ.get("FAKE_FACTOR", "1.0"))
        noise = float(os.environ.get("FAKE_NOISE", "0.01"))
        extra = getattr(calls[0], "extra_us", 0.0)  # set by slow_down below
        samples = [(10.0 * factor + extra) * (1 + self.rng.gauss(0, noise)) for _ in range(cfg.samples)]
        return Measurement(samples, os.environ.get("FAKE_MODE", "graph"), cfg.invocations, len(calls))
    def compare(self, calls, cfg, contexts):
        out = []
        for context in contexts:
            with context():
                out.append(self.measure(calls, cfg))
        return out
    def interleave(self, sides, cfg, renew=None):  # side 0: the current code, FAKE_FACTOR; others
                                                  # FAKE_REF_FACTOR; one graph instance, then the calls renew(1)
                                                  # makes, if given, are run once
        out = []
        for i, calls in enumerate(sides):
            for c in calls:
                c()
            factor = float(os.environ.get("FAKE_FACTOR" if i == 0 else "FAKE_REF_FACTOR", "1.0"))
            noise = float(os.environ.get("FAKE_NOISE", "0.01"))
            extra = getattr(calls[0], "extra_us", 0.0)
            samples = [(10.0 * factor + extra) * (1 + self.rng.gauss(0, noise)) for _ in range(cfg.samples)]
            out.append(Measurement(samples, "graph", cfg.invocations, len(calls)))
        for calls in renew(1) if renew else []:
            for c in calls:
                c()
        return out
    def slow_down(self, calls, extra_us, device, timing):
        def slowed(call):
            def run():
                return call()
            run.extra_us = extra_us
            return run
        return (lambda cs: [slowed(c) for c in cs]), {"target_us": extra_us, "extra_us": extra_us, "spin_cycles": 0,
                                                    "spin_every": 1}
    def health(self):
        return json.loads(os.environ.get("FAKE_HEALTH", "{}"))
    def input_sets_for_cold_l2(self, nbytes, device):
        return 2
    def ceiling_gbps(self, device):
        return 1000.0
    def matmul_ceiling_tflops(self, device, kind):
        return 500.0
    def environment(self):
        where = {"measured_in": os.environ.get("PYTEST_XDIST_WORKER", "controller")} \
            if os.environ.get("FAKE_ENV_WHERE") else {}
        return dict({"device": "fake", "uuid": self.gpu_uuid()}, **where,
                    **json.loads(os.environ.get("FAKE_ENV", "{}")))
    def gpu_uuid(self):  # FAKE_ENV's uuid, as nvidia-smi and torch name one GPU
        return json.loads(os.environ.get("FAKE_ENV", "{}")).get("uuid", "GPU-fake")
    @contextlib.contextmanager
    def lock(self):
        yield

@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    run = config.stash.get(RUN_KEY, None)
    if run is not None:
        run.timer = FakeTimer()
'''

SMALL = """
shape: {num_experts: 8, topk: 2, hidden_size: 64, intermediate_size: 128}
batch_sizes: [1, 3]
ops: [permute, align]
impls: [torch, customized, standard]
timing: {samples: 20, warmup: 1, invocations: 2}
"""


def baseline_file(pytester, scenario="small"):
    return pytester.path / "baselines" / "FAKE_GPU" / f"{scenario}.json"


def run_timed(env, *args, factor="1.0", mode="graph"):
    os.environ["FAKE_FACTOR"], os.environ["FAKE_MODE"] = factor, mode
    try:
        return env.runpytest("--moeperf", "small.yaml", *args)
    finally:
        os.environ.pop("FAKE_FACTOR", None)
        os.environ.pop("FAKE_MODE", None)


GEMM = """
shape: {num_experts: 8, topk: 2, hidden_size: 128, intermediate_size: 256}
tp_size: 2
dtypes: [bf16, fp8_w8a8]
block_quant: [128, 128]
batch_sizes: [1, 3]
ops: [fused_experts]
impls: [customized]
timing: {samples: 20, warmup: 1, invocations: 2}
"""
