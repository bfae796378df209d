"""benchmarks/baseline_drift.py: one recording of baselines judged against another as the plugin would judge a run."""
import json
from pathlib import Path

import pytest

from benchmarks import baseline_drift
from pytest_moeperf.store import baselines

GPU = "NVIDIA_H200"


def entry(median_us, spread=0.002):
    return {"median_us": median_us, "samples_us": [median_us * (1 + spread * (i - 10) / 10) for i in range(21)]}


def record(root, uuid, entries, scenario="mixtral"):
    baselines.update(root / GPU / f"{scenario}.json", entries, {"uuid": uuid, "device": "NVIDIA H200"}, scenario)


@pytest.fixture
def two_recordings(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    record(old, "GPU-a", {"same[x]": entry(20.0), "slower4[x]": entry(20.0), "slower10[x]": entry(20.0),
                          "changed[x]": entry(20.0), "only_old[x]": entry(5.0)})
    record(new, "GPU-b", {"same[x]": entry(20.0), "slower4[x]": entry(20.8), "slower10[x]": entry(22.0),
                          "changed[x]": entry(40.0), "only_new[x]": entry(5.0)})
    return old, new


def test_entries_of_both_are_judged_with_the_band_of_another_gpu(two_recordings, capsys):
    old, new = two_recordings
    rows = {r["key"]: r for r in baseline_drift.judged(old, new, GPU, None, Path("scenarios"))}
    assert set(rows) == {"same[x]", "slower4[x]", "slower10[x]", "changed[x]"}
    assert rows["same[x]"]["kind"] == "pass"
    assert rows["slower4[x]"]["kind"] == "pass" and rows["slower4[x]"]["band"] == pytest.approx(0.06)
    assert rows["slower10[x]"]["kind"] == "regression" and rows["slower10[x]"]["ratio"] == pytest.approx(1.1)
    assert (rows["slower10[x]"]["old_uuid"], rows["slower10[x]"]["new_uuid"]) == ("GPU-a", "GPU-b")


def test_on_one_gpu_the_threshold_alone_applies(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    record(old, "GPU-a", {"slower4[x]": entry(20.0)})
    record(new, "gpu-A", {"slower4[x]": entry(20.8)})  # uuids compared as the plugin does (baselines.timed_on)
    (row,) = baseline_drift.judged(old, new, GPU, None, Path("scenarios"))
    assert row["kind"] == "regression" and row["band"] == pytest.approx(0.02)


def test_the_command_skips_what_changed_and_lists_what_it_flags(two_recordings, tmp_path, capsys):
    old, new = two_recordings
    out = tmp_path / "rows.json"
    assert baseline_drift.main([str(old), str(new), "--skip", r"^mixtral::changed\[", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "3 entries" in text and "slower10[x]" in text and "changed[x]" not in text
    assert {r["key"] for r in json.loads(out.read_text())} == {"same[x]", "slower4[x]", "slower10[x]"}


def test_nothing_in_common_and_a_bad_skip_are_usage_errors(two_recordings, tmp_path, capsys):
    old, _ = two_recordings
    assert baseline_drift.main([str(old), str(tmp_path / "nowhere")]) == 2
    assert "no entry is in both" in capsys.readouterr().err
    assert baseline_drift.main([str(old), str(old), "--scenarios", str(tmp_path)]) == 2
    assert "mixtral.yaml: cannot read the file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        baseline_drift.main([str(old), str(old), "--skip", "("])
    assert e.value.code == 2 and "--skip: not a regular expression" in capsys.readouterr().err
