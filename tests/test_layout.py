"""The package's layout follows the flow of a test: no module imports one further down that flow."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pytest_moeperf"
KERNELS = Path(__file__).resolve().parents[1] / "kernels"
# scenario -> inputs -> implementations and contracts -> measurement -> verdict -> store -> report -> the plugin
FLOW = ["spec", "inputs", "oracle", "measure", "gate", "store", "report"]
PLUGIN = len(FLOW)  # plugin.py, hookspecs.py, items.py, run_state.py, reporting.py: the hooks, which may use all


def level(module: str) -> int:
    parts = module.split(".")
    return FLOW.index(parts[1]) if len(parts) > 2 and parts[1] in FLOW else PLUGIN


def imports(path: Path) -> set[str]:
    """Modules of pytest_moeperf that a file imports, at any depth of its code (lazy imports count)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pytest_moeperf"):
            for a in node.names:  # "from pytest_moeperf.gate import verdict" imports the module gate.verdict
                submodule = f"{node.module}.{a.name}"
                is_module = (PACKAGE.parent / submodule.replace(".", "/")).with_suffix(".py").exists()
                found.add(submodule if is_module else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("pytest_moeperf")}
    return found


def test_every_module_lives_in_one_step_of_the_flow():
    loose = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert loose == ["__init__.py", "hookspecs.py", "items.py", "plugin.py", "reporting.py", "run_state.py"]
    assert sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__") == sorted(FLOW)


def test_no_module_imports_one_further_down_the_flow():
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        for imported in imports(path):
            if level(imported) > level(module):
                wrong.append(f"{module} imports {imported}")
    assert wrong == []


def test_the_kernels_do_not_import_the_plugin():
    assert not [p.name for p in KERNELS.rglob("*.py") if any(m for m in imports(p))]


def test_baseline_folders_and_tuned_config_files_name_a_gpu_alike(monkeypatch):
    # The rule lives twice on purpose: the kernels may not import the plugin, and the plugin runs without the
    # kernels (user implementations only). Baseline folders, config file names and the source digest must agree.
    import torch

    from moeperf_kernels import tuning
    from pytest_moeperf.measure import env

    for name in ("NVIDIA H100 80GB HBM3", "NVIDIA H200", "NVIDIA GeForce RTX 4090 (laptop)", " odd--name  "):
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None, name=name: name)
        tuning.device_name.cache_clear()
        assert env.gpu_slug() == tuning.device_name(torch.device("cuda", 0))
    tuning.device_name.cache_clear()


def test_the_wheel_lists_every_package_of_the_plugin_and_the_kernels():
    import tomllib

    config = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {"pytest_moeperf"} | {f"pytest_moeperf.{d.name}" for d in PACKAGE.iterdir()
                                    if (d / "__init__.py").exists()}
    assert set(config["packages"]) == folders | {"moeperf_kernels"}
    assert config["package-dir"] == {"moeperf_kernels": "kernels"}
