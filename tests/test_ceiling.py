"""The copy ceiling every '% ceiling' is a fraction of: an SM copy timed eagerly (SPEC 3), never a graph memcpy."""
import pytest
import torch

from pytest_moeperf.measure import timing


def test_the_ceiling_copies_at_least_a_gibibyte_and_says_how_it_was_measured():
    assert timing.CEILING_BYTES >= 1 << 30
    assert timing.CEILING_TRIES >= 3
    assert "eager" in timing.CEILING_METHOD and "not a memcpy captured in a CUDA graph" in timing.CEILING_METHOD
    assert "read + written" in timing.CEILING_METHOD


def test_the_ceiling_is_the_best_of_eager_copies_and_never_a_graph(monkeypatch):
    def no_graph(*args, **kwargs):
        raise AssertionError("the ceiling must not be timed through a CUDA graph")

    monkeypatch.setattr(timing, "measure", no_graph)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", no_graph)
    monkeypatch.setattr(torch.cuda, "graph", no_graph)
    monkeypatch.setattr(timing, "CEILING_BYTES", 1 << 20)  # the method, on a CPU tensor of 1 MiB
    monkeypatch.setattr(timing, "CEILING_SPIN_UP_S", 0.0)
    times = iter([500.0, 400.0, 250.0, 300.0] + [800.0] * 100)
    copied = []

    def clock(run):  # stands in for the CUDA events: the copy runs, its time comes from the list
        run()
        copied.append(1)
        return next(times)

    monkeypatch.setattr(timing, "_event_us", clock)
    monkeypatch.delitem(timing._ceiling_cache, "cpu", raising=False)
    gbps = timing.copy_ceiling_gbps("cpu")
    assert len(copied) == timing.CEILING_TRIES
    assert gbps == pytest.approx(2 * (1 << 20) / 250.0 / 1e3)  # the fastest copy, bytes read + written
    assert timing.copy_ceiling_gbps("cpu") == gbps and len(copied) == timing.CEILING_TRIES  # once per process
    timing._ceiling_cache.pop("cpu")


def test_best_copy_us_spins_up_first_then_takes_the_fastest_try():
    events = []
    seen = iter([7.0, 5.0, 9.0, 6.0])

    def clock(run):
        run()
        events.append("timed")
        return next(seen) if spun else 100.0

    spun = False
    timing.best_copy_us(lambda: events.append("copy"), tries=4, spin_up_s=0.02, clock=clock)
    assert events.count("timed") >= 5 and events[:2] == ["copy", "copy"]  # spin-up copies came first
    spun, events[:] = True, []
    assert timing.best_copy_us(lambda: None, tries=4, spin_up_s=0.0, clock=clock) == 5.0
    assert events == ["timed"] * 4
