"""--moeperf-against: the current code timed against a reference revision in the same process (the pull-request
gate). On the CPU a fake timer stands in for the GPU (tests/fake_gpu.py); the loading of a revision is real."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pytest_moeperf.gate import verdict
from pytest_moeperf.oracle import revision
from tests.fake_gpu import FAKE_TIMER, SMALL, run_timed

REPO = Path(__file__).resolve().parents[1]
MINE = """
from moeperf_kernels import moe_align_block_size, moe_permute, moe_unpermute
def impls():
    return {"permute": moe_permute, "unpermute": moe_unpermute, "align": moe_align_block_size}
"""
AB = SMALL.replace("impls: [torch, customized, standard]", "impls: ['mine:impls']")


def git(path, *args):
    return subprocess.run(["git", "-C", str(path), "-c", "user.email=t@t", "-c", "user.name=t", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


def repository(path: Path, files: dict) -> str:
    """A git repository at `path` with these files committed; returns the commit."""
    git(path, "init", "-q")
    for name, text in files.items():
        (path / name).write_text(text)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "reference")
    return git(path, "rev-parse", "HEAD")


def test_paired_verdicts_need_the_median_beyond_the_threshold_and_the_interval_beyond_one():
    same = [10.0 + 0.01 * (i % 7) for i in range(100)]
    slower = [x * 1.05 for x in same]
    assert verdict.judge_paired(slower, same, 0.02).kind is verdict.Kind.REGRESSION
    assert verdict.judge_paired(same, slower, 0.02).kind is verdict.Kind.IMPROVED
    assert verdict.judge_paired([x * 1.015 for x in same], same, 0.02).kind is verdict.Kind.PASS  # under 2%
    noisy = [x * (1.03 if i % 2 else 0.99) for i, x in enumerate(same)]  # half the pairs faster: no
    v = verdict.judge_paired(noisy, same, 0.02)
    assert v.kind is verdict.Kind.PASS and v.low < 1 < v.high
    assert verdict.median_interval(list(range(100))) == (49.5, 39, 60)  # P(Binomial(100, 1/2) <= 39) = 1.8%
    assert verdict.median_interval(list(range(10))) == (4.5, 1, 8)  # P(<= 1 of 10 below) = 1.1%, (<= 2) = 5.5%
    assert verdict.median_interval(list(range(5))) == (2, 0, 4)


def test_with_several_graph_instances_the_verdict_counts_pairs_of_graphs_not_replays():
    """Two graphs of the same code replay steadily apart by a few percent, a new amount for each pair of graphs
    (measured on an H200): ten pairs whose replays agree closely within each pair but differ between pairs."""
    offsets = [1.03, 0.98, 1.01, 0.99, 1.025, 0.97, 1.0, 1.02, 0.985, 1.005]
    reference = [10.0 + 0.001 * (i % 5) for i in range(100)]
    same = [r * offsets[i // 10] for i, r in enumerate(reference)]
    v = verdict.judge_paired(same, reference, 0.02, instances=10)
    assert v.kind is verdict.Kind.PASS and v.low < 1 < v.high
    # the replays alone, as one pair of graphs: the first pair's +3% with a narrow interval would be a regression
    assert verdict.judge_paired(same[:10], reference[:10], 0.02).kind is verdict.Kind.REGRESSION
    slower = [x * 1.04 for x in same]  # +4% on top of the same offsets: 9 of 10 pairs above 1
    v = verdict.judge_paired(slower, reference, 0.02, instances=10)
    assert v.kind is verdict.Kind.REGRESSION and v.low > 1


def test_a_revision_is_extracted_and_its_kernels_load_beside_the_current_ones(tmp_path, device):
    import moeperf_kernels as kernels

    src = tmp_path / "repo"
    src.mkdir()
    shutil.copytree(REPO / "kernels", src / "kernels", ignore=shutil.ignore_patterns("__pycache__"))
    commit = repository(src, {"README": "x"})
    rev = revision.materialise("HEAD", src, tmp_path / "ref")
    assert rev.commit == commit and rev.label == f"HEAD ({commit[:10]})" and (rev.root / "kernels").is_dir()
    theirs = revision.reference_kernels(rev)
    assert theirs is not kernels and Path(theirs.__file__).parent == rev.root / "kernels"
    # one process-wide ticket counter per device for both copies, as a process running one copy has
    assert theirs._pipeline._tickets is kernels._pipeline._tickets and theirs._pipeline is not kernels._pipeline
    # the current package is untouched, and the reference's name is free again (its copy lives under an alias)
    assert sys.modules["moeperf_kernels"] is kernels and "kernels" not in sys.modules
    assert theirs.tuning.CONFIG_DIR == rev.root / "kernels" / "configs"  # its own tuned configs
    hidden = torch.randn(5, 32, device=device).to(torch.bfloat16)
    ids = torch.randint(0, 4, (5, 2), dtype=torch.int32, device=device)
    for a, b in zip(kernels.moe_permute(hidden, None, ids, 4), theirs.moe_permute(hidden, None, ids, 4)):
        if a is not None:
            assert torch.equal(a, b)


def test_a_reference_that_is_neither_a_revision_nor_a_folder_or_lacks_the_module_is_a_clear_error(tmp_path):
    repository(tmp_path, {"README": "x"})
    with pytest.raises(revision.RevisionError, match="'no-such-ref': neither a folder nor a git revision"):
        revision.materialise("no-such-ref", tmp_path, tmp_path / "out")
    rev = revision.materialise("HEAD", tmp_path, tmp_path / "out")
    # importable here, but not from the revision's tree: comparing with it would compare the current code with itself
    with pytest.raises(revision.RevisionError, match="tabulate was not found in that revision"):
        revision.import_from(rev, "tabulate")


def test_a_compiled_implementation_is_refused_with_the_reason():
    import math

    with pytest.raises(revision.RevisionError, match="compiled extension .* cannot be loaded a second time"):
        revision.check_loadable_twice(math.sqrt, "implementation 'fast'")
    revision.check_loadable_twice(test_a_compiled_implementation_is_refused_with_the_reason, "a Python function")


def test_the_current_code_is_timed_against_a_revision_and_judged_on_paired_ratios(env):
    commit = repository(env.path, {"mine.py": MINE, "small.yaml": AB})
    env.makeconftest(FAKE_TIMER)
    same = run_timed(env, "-k", "timing", "--moeperf-against", "HEAD", "--moeperf-json", "same.json",
                     "--moeperf-markdown", "same.md", "--junitxml", "junit.xml")
    same.assert_outcomes(passed=4)  # permute and align at M = 1 and 3
    results = json.loads((env.path / "same.json").read_text())["results"]
    assert {r["verdict"] for r in results} == {"pass"}
    r = results[0]
    assert r["reference"]["commit"] == commit and r["reference"]["ref"] == "HEAD"
    assert r["reference"]["low"] <= r["reference"]["ratio"] <= r["reference"]["high"]
    assert r["reference"]["graph_pairs"] == 1  # the fake timer's; the CUDA one's timing.AB_INSTANCES
    assert r["invocations"] == 10  # calls for a 100 us replay of the fake's 10 us calls, in whole usual graphs of 2
    assert r["baseline_median_us"] == r["reference"]["median_us"]
    summary = (env.path / "same.md").read_text()
    assert f"judged against HEAD ({commit[:10]}) in this process" in summary
    assert 'name="moeperf_reference_ratio"' in (env.path / "junit.xml").read_text()
    assert 'name="moeperf_reference_graph_pairs" value="1"' in (env.path / "junit.xml").read_text()
    same.stdout.fnmatch_lines([f"*judged against HEAD ({commit[:10]}) in this process*"])
    assert not (env.path / "baselines").exists()  # nothing stored, nothing read

    slower = run_timed(env, "-k", "timing", "--moeperf-against", "HEAD", factor="1.1")
    slower.assert_outcomes(failed=4)
    slower.stdout.fnmatch_lines([f"*slower than the reference HEAD ({commit[:10]}), confirmed by a second "
                                 "measurement: regression: median +10.*% vs the reference, 95% interval*"])


def test_an_injected_slowdown_slows_the_current_side_only(env):
    repository(env.path, {"mine.py": MINE, "small.yaml": AB})
    env.makeconftest(FAKE_TIMER)
    caught = run_timed(env, "-k", "timing and permute", "--moeperf-against", "HEAD", "--moeperf-inject-slowdown",
                       "0.05", "--moeperf-json", "o.json")
    caught.assert_outcomes(failed=2)
    results = json.loads((env.path / "o.json").read_text())["results"]
    assert {r["verdict"] for r in results} == {"regression (injected +5%)"}
    assert all(abs(r["reference"]["median_us"] - 10.0) < 0.2 and r["median_us"] > 10.3 for r in results)


def test_a_folder_with_another_checkout_can_be_the_reference(env, tmp_path):
    other = tmp_path / "other-checkout"
    other.mkdir()
    (other / "mine.py").write_text(MINE)
    env.makefile(".yaml", small=AB)
    (env.path / "mine.py").write_text(MINE)
    env.makeconftest(FAKE_TIMER)
    result = run_timed(env, "-k", "timing and align", "--moeperf-against", str(other), "--moeperf-json", "o.json")
    result.assert_outcomes(passed=2)
    assert json.loads((env.path / "o.json").read_text())["results"][0]["reference"]["ref"] == str(other)


@pytest.mark.parametrize("args, message", [
    (["--moeperf-against", "no-such-ref"], "--moeperf-against 'no-such-ref': neither a folder nor a git revision"),
    (["--moeperf-against", "HEAD", "--update-baselines"], "there is nothing to record as a baseline or to tune"),
])
def test_a_reference_that_cannot_be_used_is_a_usage_error(env, args, message):
    repository(env.path, {"mine.py": MINE, "small.yaml": AB})
    env.makeconftest(FAKE_TIMER)  # (a conftest also puts the folder, and so mine.py, on sys.path)
    result = env.runpytest("--moeperf", "small.yaml", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()


def test_a_reference_without_the_implementation_is_a_usage_error(env):
    repository(env.path, {"README": "x"})  # the reference revision has no mine.py
    (env.path / "mine.py").write_text(MINE)
    env.makefile(".yaml", small=AB)
    env.makeconftest(FAKE_TIMER)
    result = env.runpytest("--moeperf", "small.yaml", "--moeperf-against", "HEAD")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*small.yaml:4: key 'impls': the reference's 'mine:impls': *mine was not found in "
                                 "that revision*"])
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()


def test_xdist_workers_use_the_revision_the_controller_extracted(env):
    repository(env.path, {"mine.py": MINE, "small.yaml": AB})
    env.makeconftest(FAKE_TIMER)
    result = env.runpytest_subprocess("--moeperf", "small.yaml", "-n", "2", "-k", "timing", "--moeperf-against",
                                      "HEAD", "--moeperf-json", "o.json")
    result.assert_outcomes(passed=4)
    assert all(r["reference"]["ref"] == "HEAD" for r in json.loads((env.path / "o.json").read_text())["results"])


def test_the_built_in_kernels_are_compared_with_the_revisions_kernels(env):
    shutil.copytree(REPO / "kernels", env.path / "kernels", ignore=shutil.ignore_patterns("__pycache__"))
    repository(env.path, {"small.yaml": SMALL})
    env.makeconftest(FAKE_TIMER)
    result = run_timed(env, "-k", "timing", "--moeperf-against", "HEAD", "-rs", "--moeperf-json", "o.json")
    result.assert_outcomes(passed=6, skipped=4)  # the torch oracle is the plugin's own: nothing to compare
    result.stdout.fnmatch_lines(["*HEAD (*) has no permute of 'torch' to compare with*"])
    impls = {r["impl"] for r in json.loads((env.path / "o.json").read_text())["results"]}
    assert impls == {"customized", "standard"}


LOGGED = """
import os
from moeperf_kernels import moe_permute, moe_unpermute

def _log(name, *tensors):
    with open(os.environ["CALL_LOG"], "a") as f:
        f.write(f"{os.environ.get('SIDE', '-')} {name} {[t.data_ptr() for t in tensors if t is not None]}\\n")

def permute(hidden, scale, ids, n_expert, n_local_expert, expert_map=None, align_block_size=None, **kw):
    _log("permute", hidden, scale, ids, expert_map)
    return moe_permute(hidden, scale, ids, n_expert, n_local_expert, expert_map, align_block_size, **kw)

def unpermute(out, rows, weights, inv, offsets):
    _log("unpermute", out, rows, weights, inv, offsets)
    return moe_unpermute(out, rows, weights, inv, offsets)

def impls():
    return {"permute": permute, "unpermute": unpermute}
"""
SIDES = FAKE_TIMER + """
_interleaves = iter(range(1000))
_plain_interleave = FakeTimer.interleave
def _interleave(self, sides, cfg, renew=None):  # each side's calls once, their tensors logged under "interleave:side"
    n = next(_interleaves)
    for i, calls in enumerate(sides):
        os.environ["SIDE"] = f"{n}:{i}"
        for c in calls:
            c()
    os.environ["SIDE"] = "-"
    return _plain_interleave(self, sides, cfg, renew)
FakeTimer.interleave = _interleave
"""


def test_both_sides_are_timed_on_the_very_same_tensors_and_confirmed_on_new_ones(env, monkeypatch):
    """An A/B pair must differ in code only: the reference reads the current side's inputs and writes its outputs
    (an unpermute's expert rows and `out` too, which the harness derives per problem), and the confirmation of a
    regression gives both sides the same freshly made inputs."""
    scenario = AB.replace("impls: ['mine:impls']", "impls: ['mine:impls']\nops: [permute, unpermute]")
    scenario = scenario.replace("ops: [permute, align]\n", "")
    repository(env.path, {"mine.py": LOGGED, "small.yaml": scenario})
    env.makeconftest(SIDES)
    log = env.path / "calls.log"
    monkeypatch.setenv("CALL_LOG", str(log))
    slower = run_timed(env, "-k", "timing", "--moeperf-against", "HEAD", factor="1.1")
    slower.assert_outcomes(failed=4)  # permute and unpermute at M = 1 and 3, each confirmed on new inputs
    sides: dict[str, list[str]] = {}
    for line in log.read_text().splitlines():
        side, call = line.split(" ", 1)
        if side != "-":
            sides.setdefault(side, []).append(call)
    assert len(sides) == 4 * 2 * 2  # 4 tests x (first + confirmation) x 2 sides
    for n in range(8):
        current, reference = sides[f"{n}:0"], sides[f"{n}:1"]
        assert current and current == reference, (n, current, reference)
    for test in range(4):  # the confirmation's inputs are new tensors
        assert sides[f"{2 * test}:0"] != sides[f"{2 * test + 1}:0"]


SCRATCH_LOG = FAKE_TIMER + """
import os
from pytest_moeperf.oracle import impls as _impls
_kept = _impls.CustomizedContract._scratch_for
_made = []
def _logged(self, p):  # logs each scratch made: the batch size, the side (the reference's has its own kernels)
    scratch = _kept(self, p)
    if not any(s is scratch for s in _made):
        _made.append(scratch)
        with open(os.environ["SCRATCH_LOG"], "a") as f:
            f.write(f"M{p.M} {'current' if self.kernels is None else 'reference'}\\n")
    return scratch
def pytest_sessionstart(session):
    _impls.CustomizedContract._scratch_for = _logged
def pytest_sessionfinish(session):
    _impls.CustomizedContract._scratch_for = _kept
"""


def test_each_pair_of_graphs_and_the_confirmation_give_the_sides_new_scratches_made_in_turns(env, monkeypatch):
    """A side's scratch keeps its outputs at addresses of its own, which alone set A/A sides 2-3% apart on a GPU: every
    pair of graphs after the first gets new ones, made in turns (the fake timer makes one more pair), and so does the
    confirmation of a regression, the reference's first."""
    shutil.copytree(REPO / "kernels", env.path / "kernels", ignore=shutil.ignore_patterns("__pycache__"))
    repository(env.path, {"small.yaml": SMALL.replace("impls: [torch, customized, standard]",
                                                      "impls: [customized_scratch]")})
    env.makeconftest(SCRATCH_LOG)
    log = env.path / "scratch.log"
    monkeypatch.setenv("SCRATCH_LOG", str(log))
    slower = run_timed(env, "-k", "timing", "--moeperf-against", "HEAD", factor="1.1")
    slower.assert_outcomes(failed=2)  # permute at M = 1 and 3, each confirmed
    first, then = ["current", "reference"], ["reference", "current"]
    made = first + then + then + first  # the checks; the second pair; the confirmation; its second pair
    assert log.read_text().split("\n") == [f"M{M} {side}" for M in (1, 3) for side in made] + [""]


def test_a_confirmation_against_a_stored_baseline_gives_a_new_scratch_too(env, monkeypatch):
    env.makefile(".yaml", small=SMALL.replace("impls: [torch, customized, standard]", "impls: [customized_scratch]"))
    env.makeconftest(SCRATCH_LOG)
    log = env.path / "scratch.log"
    monkeypatch.setenv("SCRATCH_LOG", str(log))
    run_timed(env, "-k", "timing", "--update-baselines").assert_outcomes(passed=2)
    log.unlink()
    run_timed(env, "-k", "timing", factor="1.1").assert_outcomes(failed=2)
    assert log.read_text().split("\n") == ["M1 current", "M1 current", "M3 current", "M3 current", ""]
