"""A baseline records the digest of the timed implementations' sources: what counts as a change of the kernels."""
import importlib
import sys

from pytest_moeperf.oracle import impls


def test_the_digest_covers_the_package_and_only_this_gpus_tuned_configs(tmp_path, monkeypatch):
    pkg = tmp_path / "mykernels"
    (pkg / "configs").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from mykernels.ops import permute\n")
    (pkg / "ops.py").write_text("def permute(*args):\n    return args\n")
    (pkg / "_helper.py").write_text("X = 1\n")
    a = pkg / "configs" / "permute,E=8,device_name=GPU_A.json"
    b = pkg / "configs" / "permute,E=8,device_name=GPU_B.json"
    a.write_text("{}")
    b.write_text("{}")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("mykernels")
    try:
        impl = impls.CustomizedContract("mine", module.permute)
        first = {gpu: impls.source_digest([impl], gpu) for gpu in ("GPU_A", "GPU_B")}
        b.write_text('{"1": {}}')  # another GPU's tuning: GPU_A's baselines still hold
        assert impls.source_digest([impl], "GPU_A") == first["GPU_A"]
        assert impls.source_digest([impl], "GPU_B") != first["GPU_B"]
        a.write_text('{"1": {}}')  # this GPU's tuning, or any source file of the package: changed
        assert impls.source_digest([impl], "GPU_A") != first["GPU_A"]
        second = impls.source_digest([impl], "GPU_A")
        (pkg / "_helper.py").write_text("X = 2\n")
        assert impls.source_digest([impl], "GPU_A") != second
    finally:
        for name in [m for m in sys.modules if m.partition(".")[0] == "mykernels"]:
            del sys.modules[name]
