"""Units behind the gate: the verdict statistics, baseline files, routing generators, config.json models."""
import json
import os
import random

import pytest
import torch

from pytest_moeperf.gate import verdict
from pytest_moeperf.inputs import routing
from pytest_moeperf.spec import models
from pytest_moeperf.store import baselines


def noisy(median, n=100, rel=0.01, seed=0):
    rng = random.Random(seed)
    return [median * (1 + rng.gauss(0, rel)) for _ in range(n)]


def test_clear_regression_fails_noise_passes_improvement_is_marked():
    base = noisy(10.0)
    assert verdict.judge(noisy(11.0, seed=1), base, 0.05).kind == "regression"
    assert verdict.judge(noisy(10.0, seed=2), base, 0.05).kind == "pass"
    assert verdict.judge(noisy(10.3, seed=3), base, 0.05).kind == "pass"  # +3% is inside the 5% threshold
    assert verdict.judge(noisy(8.0, seed=4), base, 0.05).kind == "improved"
    assert verdict.judge(noisy(10.0), None, 0.05).kind == "new"


def test_noise_band_widens_the_threshold_for_jittery_kernels():
    base = noisy(10.0, rel=0.08)
    slower = noisy(10.8, rel=0.08, seed=5)  # +8% median, but each run's IQR is about 11%
    v = verdict.judge(slower, base, 0.05)
    assert v.band > 0.08 and v.kind == "pass"


def test_the_absolute_floor_spares_microsecond_kernels_only():
    small, big = noisy(2.5), noisy(10.0)
    assert verdict.judge(noisy(2.5 * 1.08, seed=7), small, 0.05, floor_us=0.0).kind == "regression"
    assert verdict.judge(noisy(2.5 * 1.08, seed=7), small, 0.05, floor_us=0.5).kind == "pass"
    assert verdict.judge(noisy(2.5 * 1.5, seed=7), small, 0.05, floor_us=0.5).kind == "regression"
    assert verdict.judge(noisy(10.0 * 1.07, seed=8), big, 0.05, floor_us=0.5).kind == "regression"


def test_a_baseline_from_another_gpu_allows_the_machine_band():
    base, slower = noisy(100.0, rel=0.002), noisy(104.0, rel=0.002, seed=9)  # +4%, tight: another GPU's offset
    here = verdict.judge(slower, base, 0.02, machine_band=None)
    assert here.kind == "regression" and not here.other_gpu and "another GPU" not in here.describe()
    there = verdict.judge(slower, base, 0.02, machine_band=0.06)
    assert there.kind == "pass" and there.band == 0.06 and there.other_gpu
    assert "allowed +/-6.0%, baseline from another GPU" in there.describe()
    assert verdict.judge(noisy(107.0, rel=0.002, seed=9), base, 0.02, machine_band=0.06).kind == "regression"
    assert verdict.judge(noisy(94.0, rel=0.002, seed=9), base, 0.02, machine_band=0.06).kind == "pass"
    assert verdict.judge(noisy(93.0, rel=0.002, seed=9), base, 0.02, machine_band=0.06).kind == "improved"
    zero = verdict.judge(slower, base, 0.02, machine_band=0.0)  # 0: judged as on the recording GPU, and says so
    assert zero.kind == "regression" and zero.band < 0.03 and "baseline from another GPU" in zero.describe()


def test_a_baseline_is_timed_on_this_gpu_only_when_it_names_its_uuid():
    assert baselines.timed_on({"uuid": "GPU-d8e41c01-e9f4"}, "d8e41c01-e9f4")  # nvidia-smi's name, torch's name
    assert baselines.timed_on({"uuid": "gpu-D8E41C01-E9F4"}, "GPU-d8e41c01-e9f4")
    assert not baselines.timed_on({"uuid": "GPU-d648a39d"}, "d8e41c01")
    assert not baselines.timed_on({}, "d8e41c01") and not baselines.timed_on({"uuid": None}, "d8e41c01")
    assert not baselines.timed_on({"uuid": ""}, "") and not baselines.timed_on({"uuid": "GPU-"}, "")


def test_a_slower_median_needs_a_significant_rank_test(monkeypatch):
    base, slower = noisy(10.0), noisy(12.0, seed=6)
    assert verdict.judge(slower, base, 0.05).kind == "regression"
    monkeypatch.setattr(verdict, "mann_whitney_greater", lambda a, b: 0.2)
    v = verdict.judge(slower, base, 0.05)
    assert v.ratio > 1.15 and v.kind == "pass"


def test_mann_whitney_p_values():
    # Completely separated samples of 5 and 5: exact one-sided p is 1/252; the normal approximation is close.
    p = verdict.mann_whitney_greater([6, 7, 8, 9, 10], [1, 2, 3, 4, 5])
    assert 0.003 < p < 0.01
    assert verdict.mann_whitney_greater([1, 2, 3, 4, 5], [6, 7, 8, 9, 10]) > 0.99
    assert 0.5 < verdict.mann_whitney_greater([1, 2, 3, 4], [1, 2, 3, 4]) < 0.8  # continuity correction
    same = verdict.mann_whitney_greater([1.0] * 10, [1.0] * 10)
    assert same == 1.0


def entry(median):
    return {"median_us": median, "iqr_us": 0.1, "min_us": median - 0.1, "samples_us": [median] * 5}


def test_baseline_update_merges_and_keeps_other_entries(tmp_path):
    path = baselines.path_for(tmp_path, "GPU_X", "scn")
    baselines.update(path, {"a": entry(1.0), "b": entry(2.0)}, {"device": "x"}, "scn")
    baselines.update(path, {"b": entry(3.123456789)}, {"device": "x"}, "scn")
    data = json.loads(path.read_text())
    assert set(data["entries"]) == {"a", "b"}
    assert data["entries"]["a"]["median_us"] == 1.0 and data["entries"]["b"]["median_us"] == 3.1235
    assert baselines.load(path)["b"]["samples_us"] == [3.1235] * 5
    assert sorted(p.name for p in path.parent.iterdir()) == ["scn.json"], "no temp or lock files left beside it"


def test_entries_kept_from_another_environment_say_where_they_were_timed(tmp_path):
    """A partial re-record (-k, or a run cut short) leaves a file whose entries come from two environments: each kept
    entry points to its own (with the date it was written), re-recorded ones carry the file's, and once every entry
    is re-recorded the pointers are gone."""
    path = baselines.path_for(tmp_path, "GPU_X", "scn")
    baselines.update(path, {"a": entry(1.0), "b": entry(2.0), "c": entry(3.0)}, {"torch": "2.11"}, "scn")
    first = json.loads(path.read_text())["updated"]
    baselines.update(path, {"b": entry(2.5)}, {"torch": "2.13"}, "scn")
    f = baselines.load_file(path)
    assert f.environment == {"torch": "2.13"} and f.environment_of("b") == {"torch": "2.13"}
    assert f.environment_of("a") == f.environment_of("c") == {"torch": "2.11", "updated": first}
    assert f.earlier == [{"torch": "2.11", "updated": first}] and f.entries["a"]["median_us"] == 1.0
    baselines.update(path, {"c": entry(3.5)}, {"torch": "2.14"}, "scn")  # three environments now
    f = baselines.load_file(path)
    assert [f.environment_of(k)["torch"] for k in "abc"] == ["2.11", "2.13", "2.14"]
    store = baselines.BaselineStore(tmp_path, "GPU_X")
    store.load_all(["scn"])
    assert [(e["torch"], n) for e, n in store.environments("scn", ["a", "b", "c", "zz"])] == [
        ("2.11", 1), ("2.13", 1), ("2.14", 1)]
    baselines.update(path, {"a": entry(1.0), "b": entry(2.0)}, {"torch": "2.14"}, "scn")
    data = json.loads(path.read_text())
    assert baselines.EARLIER not in data and all(baselines.RECORDED_IN not in e for e in data["entries"].values())


def test_an_entry_pointing_past_the_earlier_environments_is_refused(tmp_path):
    path = baselines.path_for(tmp_path, "GPU_X", "scn")
    baselines.update(path, {"a": entry(1.0), "b": entry(2.0)}, {"torch": "2.11"}, "scn")
    baselines.update(path, {"b": entry(2.0)}, {"torch": "2.13"}, "scn")
    data = json.loads(path.read_text())
    data["entries"]["a"][baselines.RECORDED_IN] = 3
    path.write_text(json.dumps(data))
    with pytest.raises(baselines.BaselineError, match=r"entry 'a': recorded_in must index earlier_environments "
                                                      r"\(0 to 0\), got 3; fix or delete it"):
        baselines.load(path)


def test_baseline_write_is_atomic(tmp_path, monkeypatch):
    path = baselines.path_for(tmp_path, "GPU_X", "scn")
    baselines.update(path, {"a": entry(1.0)}, {}, "scn")
    before = path.read_text()

    def crash(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(baselines.json, "dump", crash)
    with pytest.raises(OSError, match="disk full"):
        baselines.update(path, {"b": entry(2.0)}, {}, "scn")
    assert path.read_text() == before
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_baseline_file_mode_follows_the_umask_and_is_kept(tmp_path):
    path = baselines.path_for(tmp_path, "GPU_X", "scn")
    old_umask = os.umask(0o022)
    try:
        baselines.update(path, {"a": entry(1.0)}, {}, "scn")
        assert path.stat().st_mode & 0o777 == 0o644  # readable by the team, as a file opened by hand would be
        path.chmod(0o664)
        baselines.update(path, {"b": entry(2.0)}, {}, "scn")
        assert path.stat().st_mode & 0o777 == 0o664
    finally:
        os.umask(old_umask)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"schema": 7, "entries": {}}',
                                  '{"schema": 1, "entries": {"a": {"median_us": 1}}}'])
def test_corrupted_baseline_raises_and_is_left_alone(tmp_path, text):
    path = baselines.path_for(tmp_path, "GPU_X", "scn")
    path.parent.mkdir(parents=True)
    path.write_text(text)
    with pytest.raises(baselines.BaselineError, match="will not be overwritten"):
        baselines.update(path, {"a": entry(1.0)}, {}, "scn")
    assert path.read_text() == text


def test_routing_generators():
    M, k, E = 2000, 4, 32
    ids, w = routing.make_routing(M, k, E, "uniform", seed=3)
    assert ids.dtype == torch.int32 and w.dtype == torch.float32 and ids.shape == (M, k)
    assert all(len(set(row)) == k for row in ids.tolist()), "k distinct experts per token"
    assert torch.allclose(w.sum(-1), torch.ones(M))
    again, _ = routing.make_routing(M, k, E, "uniform", seed=3)
    assert torch.equal(ids, again)
    counts = torch.bincount(ids.flatten().long(), minlength=E).float()
    assert counts.min() > 0.5 * counts.mean()

    zipf, _ = routing.make_routing(M, k, E, "zipf", seed=3, alpha=1.5)
    zc = torch.bincount(zipf.flatten().long(), minlength=E)
    assert zc[0] > 4 * zc[E // 2]

    hot, _ = routing.make_routing(M, k, E, "hot", seed=3, p=0.6)
    share = (hot == 0).any(-1).float().mean().item()
    assert 0.55 < share < 0.75

    sparse, _ = routing.make_routing(M, k, E, "sparse", seed=3, experts_used=6)
    assert sparse.max().item() < 6 and len(torch.unique(sparse)) == 6


def test_expert_map():
    emap = routing.expert_map_for(16, 4, 2)
    assert emap.tolist() == [-1] * 8 + [0, 1, 2, 3] + [-1] * 4
    assert routing.expert_map_for(16, 1, 0) is None
    with pytest.raises(ValueError, match="not divisible"):
        routing.expert_map_for(16, 3, 0)


def test_builtin_models_match_their_configs(tmp_path):
    cfg = {"n_routed_experts": 256, "num_experts_per_tok": 8, "hidden_size": 7168, "intermediate_size": 18432,
           "moe_intermediate_size": 2048, "torch_dtype": "bfloat16"}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert models.shape_from_config(tmp_path / "config.json") == models.BUILTIN["deepseek-ai/DeepSeek-V3"]


def test_outcomes_are_typed_and_read_back_from_json_and_from_older_labels():
    from pytest_moeperf.gate.result import Outcome, decide
    from pytest_moeperf.gate.verdict import Kind

    cases = [
        (decide(Kind.REGRESSION, recording=False, eager=False, gate_eager=False, excuses=[], injected=None),
         "regression", True),
        (decide(Kind.REGRESSION, recording=False, eager=False, gate_eager=False, excuses=[], injected=0.05),
         "regression (injected +5%)", True),
        (decide(Kind.REGRESSION, recording=False, eager=True, gate_eager=False, excuses=[], injected=None),
         "regression (eager: advisory)", False),
        (decide(Kind.REGRESSION, recording=False, eager=True, gate_eager=True, excuses=[], injected=None),
         "regression", True),
        (decide(Kind.REGRESSION, recording=False, eager=False, gate_eager=False, excuses=["GPU throttled (x)"],
                injected=None), "regression (not counted: GPU throttled (x))", False),
        (decide(Kind.REGRESSION, recording=True, eager=False, gate_eager=False, excuses=[], injected=None),
         "regression, recorded", False),
        (decide(Kind.NEW, recording=False, eager=False, gate_eager=False, excuses=[], injected=None), "new", False),
        (decide(Kind.IMPROVED, recording=True, eager=False, gate_eager=False, excuses=[], injected=None),
         "improved, recorded", False),
    ]
    for outcome, label, counted in cases:
        assert outcome.label() == label and outcome.counted is counted
        assert Outcome.from_json(outcome.to_json()) == outcome
        assert Outcome.of({"verdict": label}) == outcome  # a report written before outcomes were recorded
