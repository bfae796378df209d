"""As a user outside this repository: the wheel, installed into a fresh venv, gates the built-in kernels and a user's
kernels of every contract (tests/user_project/) with `pytest --moeperf`, the kernels running from the wheel."""
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OURS = ("pytest_moeperf", "moeperf_kernels", "__editable__", "_moeperf_parent.pth")


def run(*args, **kw) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kw)
    assert done.returncode == 0, f"{args}: rc {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def build_wheel(out: Path) -> Path:
    """pip wheel of the checkout; without build isolation where the setuptools at hand can build one (>= 70.1 has
    bdist_wheel), so that no package index is needed."""
    try:
        import setuptools
        local = tuple(int(x) for x in setuptools.__version__.split(".")[:2]) >= (70, 1)
    except ImportError:
        local = False
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *(["--no-build-isolation"] if local else []),
        "-w", out, REPO)
    (wheel,) = out.glob("pytest_moeperf-*.whl")
    return wheel


def dependencies_without_this_project(into: Path) -> Path:
    """A folder of links to every installed package this interpreter sees except pytest-moeperf (its editable
    install here): the fresh venv gets torch, triton, pytest and the rest from it, and this project from the wheel
    alone."""
    into.mkdir()
    for folder in [Path(p) for p in sys.path if p.endswith(("site-packages", "dist-packages")) and Path(p).is_dir()]:
        for entry in folder.iterdir():
            if not entry.name.startswith(OURS) and not entry.name.endswith(".pth") \
                    and not (into / entry.name).exists():
                (into / entry.name).symlink_to(entry)
    return into


def test_the_wheel_in_a_fresh_venv_gates_built_in_and_user_kernels(tmp_path):
    wheel = build_wheel(tmp_path / "dist")
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    purelib = run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))").stdout.strip()
    deps = dependencies_without_this_project(tmp_path / "deps")
    Path(purelib, "dependencies.pth").write_text(f"{deps}\n")
    run(python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel)

    project = tmp_path / "project"
    shutil.copytree(REPO / "tests" / "user_project", project, ignore=shutil.ignore_patterns("__pycache__"))
    (project / "user_conftest.py").rename(project / "conftest.py")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTEST_ADDOPTS", "TRITON_INTERPRET")}
    where = run(python, "-c", "import moeperf_kernels, pytest_moeperf; print(moeperf_kernels.__file__); "
                "print(pytest_moeperf.__file__)", cwd=project, env=env).stdout.split()
    assert all(Path(f).is_relative_to(Path(purelib)) for f in where), where  # the wheel's copies, not the checkout's
    assert any(Path(purelib, "moeperf_kernels", "configs").glob("*.json"))  # with its tuned configs

    out = run(python, "-m", "pytest", "--moeperf", "moe.yaml", "-k", "correctness", "-v", "-p", "no:cacheprovider",
              cwd=project, env=env).stdout
    for impl in ("customized", "customized_scratch", "standard", "mine-legacy", "mine-current", "mine-any"):
        assert f"correctness::permute[{impl}-bf16-M5] PASSED" in out, out[-3000:]
        if impl != "customized_scratch":  # a permute only
            assert f"correctness::unpermute[{impl}-bf16-M5] PASSED" in out, out[-3000:]
    assert "correctness::align[mine-legacy-bf16-M5] PASSED" in out
    assert " failed" not in out and " error" not in out, out[-3000:]


@pytest.mark.skipif(not sysconfig.get_platform().startswith("linux"), reason="symlinks and venv layout of Linux")
def test_the_dependency_folder_leaves_this_project_out(tmp_path):
    deps = dependencies_without_this_project(tmp_path / "deps")
    names = {p.name for p in deps.iterdir()}
    assert {"torch", "triton", "_pytest", "yaml"} <= names
    assert not any(n.startswith(OURS) for n in names)
