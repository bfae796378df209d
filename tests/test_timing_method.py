"""Each timed sample holds the GPU's work only: the host's launch of the replay is kept out by a GPU spin queued
ahead of the start event (measure/timing.py, TIMING_METHOD), and a baseline timed another way is named as such."""
import contextlib
import dataclasses
import statistics
import time
import weakref

import pytest
import torch

from pytest_moeperf.measure import timing
from pytest_moeperf.spec.scenario import Timing
from pytest_moeperf.store import baselines


def test_the_spin_is_queued_before_the_start_event(monkeypatch):
    order = []

    class Event:
        def __init__(self, enable_timing):
            self.name = "start" if not any(e.startswith("new") for e in order) else "end"
            order.append("new " + self.name)

        def record(self):
            order.append(self.name)

        def synchronize(self):
            order.append("sync")

        def elapsed_time(self, other):
            return 0.004  # ms

    monkeypatch.setattr(torch.cuda, "Event", Event)
    us = timing._event_us(lambda: order.append("run"), spin=lambda: order.append("spin"))
    assert [o for o in order if not o.startswith("new")] == ["spin", "start", "run", "end", "sync"]
    assert us == pytest.approx(4.0)


def test_queued_runs_are_timed_each_between_two_events_behind_one_spin(monkeypatch):
    order, stamps = [], iter([10.0, 10.5, 11.25, 12.0])  # ms, as the events record them

    class Event:
        def __init__(self, enable_timing):
            self.time = None

        def record(self):
            self.time = next(stamps)
            order.append("event")

        def synchronize(self):
            order.append("sync")

        def elapsed_time(self, other):
            return other.time - self.time

    monkeypatch.setattr(torch.cuda, "Event", Event)
    runs = [lambda name=name: order.append(name) for name in ("a", "b", "b")]
    us = timing._queued_us(runs, spin=lambda: order.append("spin"))
    assert order == ["spin", "event", "a", "event", "b", "event", "b", "event", "sync"]
    assert us == pytest.approx([500.0, 750.0, 750.0])


def test_interleaved_sides_take_turns_and_queue_only_graphs(monkeypatch):
    timed = []
    monkeypatch.setattr(timing, "_warm_up", lambda runs, t, min_warmup_s: None)
    monkeypatch.setattr(timing, "_queued_us", lambda runs: [timed.append(("queued", r())) or 10.0 for r in runs])
    monkeypatch.setattr(timing, "_event_us", lambda run: timed.append(("alone", run())) or 10.0)
    a, b = (timing.Captured(lambda: "a", 2, 1, "graph"), timing.Captured(lambda: "b", 5, 1, "graph"))
    ma, mb = timing.measure_interleaved([a, b], Timing(samples=3), queued=True)
    assert timed == [("queued", s) for s in "abbaab"] and ma.samples_us == [5.0] * 3 and mb.samples_us == [2.0] * 3
    timed.clear()
    timing.measure_interleaved([a, dataclasses.replace(b, mode="eager")], Timing(samples=2), queued=True)
    assert timed == [("alone", s) for s in "abba"]  # an eager side's launches are the host's: one by one
    timed.clear()
    timing.measure_interleaved([a, b], Timing(samples=2))
    assert timed == [("alone", s) for s in "abba"]


def test_the_method_covers_a_host_launch_of_tens_of_microseconds():
    # ~100 us at 2 GHz; at least 50 us on any GPU clocked up to 4 GHz
    assert timing.SPIN_CYCLES >= 200_000 and "not timed" in timing.TIMING_METHOD


def test_a_baseline_timed_another_way_is_named_in_the_differences():
    now = {"timing_method": timing.TIMING_METHOD, "torch": "2.11"}
    assert baselines.differences(dict(now), now) == []
    older = baselines.differences({"torch": "2.11"}, now)
    assert older == ["timed by another method (before the host's launch of each replay was kept out of the timing)"]
    other = baselines.differences({"torch": "2.11", "timing_method": "eager"}, now)
    assert other == ["timed by another method (eager)"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the host launch gap exists only on a GPU")
def test_a_slow_host_launch_is_not_in_the_sample():
    x = torch.zeros(1024, device="cuda")

    def slow_launch():  # the host takes ~30 us before it launches a ~2 us kernel
        t = time.perf_counter()
        while time.perf_counter() - t < 30e-6:
            pass
        x.add_(1)

    slow_launch()
    torch.cuda.synchronize()
    samples = sorted(timing._event_us(slow_launch) for _ in range(50))
    # Were the host's 30 us timed, every sample would hold them; the fastest one is read, since other processes on the
    # GPU (make test's xdist workers) may delay any sample's kernel.
    assert samples[0] < 15.0, samples


def test_a_baseline_recorded_by_another_number_of_pytest_processes_is_named():
    now = {"timing_method": timing.TIMING_METHOD, "pytest_processes": 1}
    assert baselines.differences({"timing_method": timing.TIMING_METHOD, "pytest_processes": 4}, now) == [
        "pytest processes on the GPU 4 -> 1"]


def test_every_side_after_the_first_is_captured_into_the_first_ones_pool(monkeypatch):
    captured, entered = [], []

    def fake_capture(calls, t, pool=None):
        captured.append((calls, pool, entered[-1]))
        return timing.Captured(lambda: None, 1, 1, "graph", pool=pool or f"pool of {calls}")

    @contextlib.contextmanager
    def context(name):
        entered.append(name)
        yield

    monkeypatch.setattr(timing, "capture", fake_capture)
    sides = timing.capture_in_turn(["a", "b", "c"], Timing(), [lambda n=n: context(n) for n in ("x", "y", "z")])
    assert captured == [("a", None, "x"), ("b", "pool of a", "y"), ("c", "pool of a", "z")]
    assert {s.pool for s in sides} == {"pool of a"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_sides_captured_in_turn_allocate_at_the_same_addresses():
    x = torch.ones(1 << 20, device="cuda")
    seen = {0: [], 1: []}

    def side(i):
        def call():
            y = x * 2  # allocated inside the graph
            seen[i].append(y.data_ptr())
            return y
        return [call]

    a, b = timing.capture_in_turn([side(0), side(1)], Timing(invocations=2, samples=3, warmup=1))
    assert a.mode == b.mode == "graph" and a.pool == b.pool
    assert seen[0][-1] == seen[1][-1]  # the output each graph writes: the same memory
    a.run()
    b.run()
    torch.cuda.synchronize()


def test_ab_graphs_hold_calls_for_a_long_replay_in_whole_multiples_of_the_usual_graph():
    t = Timing(invocations=10, samples=60, warmup=5)
    assert timing.pair_timing(1.6, t, 1).invocations == 70  # 62.5 calls wanted: 7 usual graphs
    assert timing.pair_timing(25.0, t, 1).invocations == 10  # 10 calls already last 100 us or more
    assert timing.pair_timing(400.0, t, 1).invocations == 10  # never fewer than the usual graph
    assert timing.pair_timing(0.01, t, 1).invocations == timing.AB_MOST_CALLS // 10 * 10  # capped
    cold = timing.pair_timing(1.0, t, 12)  # 12 input sets rotated: usual graph 12 calls, here 108
    assert cold.invocations == 108 and cold.invocations % timing.graph_calls(t, 12) == 0
    assert timing.graph_calls(cold, 12) == 108 and (cold.samples, cold.warmup) == (60, 5)
    for us in (0.3, 1.7, 2.2, 3.9, 7.5, 13.0, 60.0):
        calls = timing.pair_timing(us, t, 3).invocations
        assert calls % 12 == 0 and (calls * us >= timing.AB_MIN_REPLAY_US or calls + 12 > timing.AB_MOST_CALLS)
        assert calls == 12 or (calls - 12) * us < timing.AB_MIN_REPLAY_US  # the fewest that do


def test_an_ab_measurement_captures_its_sides_anew_for_each_instance_and_keeps_their_order(monkeypatch):
    captures, warmups = [], []

    def fake_capture_in_turn(sides, t):
        captures.append(list(sides))
        return [timing.Captured(lambda: None, 10, 1, "graph", pool=len(captures)) for _ in sides]

    def fake_measure_interleaved(captured, t, min_warmup_s, queued):
        warmups.append((t.warmup, min_warmup_s, queued))
        k = len(captures)  # the instance: its samples say which instance and side they come from
        return [timing.Measurement([100 * k + ord(side[0]) for _ in range(t.samples)], "graph", 10, 1)
                for side in captures[-1]]

    monkeypatch.setattr(timing, "capture_in_turn", fake_capture_in_turn)
    monkeypatch.setattr(timing, "measure_interleaved", fake_measure_interleaved)
    a, b = timing.measure_instances(["a", "b"], Timing(samples=60), instances=4)
    assert captures == [["a", "b"], ["b", "a"], ["a", "b"], ["b", "a"]]  # the capture order alternates
    assert warmups == [(timing.AB_WARMUP_REPLAYS, 0.0, True)] * 4  # the caller warmed the GPU; samples queued
    assert a.instances == b.instances == 4 and len(a.samples_us) == len(b.samples_us) == 4 * 15
    assert a.samples_us == [100 * k + ord("a") for k in (1, 2, 3, 4) for _ in range(15)]
    assert b.samples_us == [100 * k + ord("b") for k in (1, 2, 3, 4) for _ in range(15)]
    assert timing.instance_medians(list(range(12)), 3) == [1.5, 5.5, 9.5]


def test_an_ab_measurement_may_time_calls_made_anew_for_each_later_pair_of_graphs(monkeypatch):
    """renew(k) makes the sides' calls of instance k >= 1 (new scratch buffers, say); the previous instance's calls
    are let go first, so that what only they held is freed before the new ones are made."""
    captures, alive = [], []

    class Calls(list):  # a side's calls that can say whether they are still referenced
        pass

    def fake_capture_in_turn(sides, t):
        captures.append([side[0] for side in sides])
        return [timing.Captured(lambda: None, 10, 1, "graph") for _ in sides]

    def fake_measure_interleaved(captured, t, min_warmup_s, queued):
        return [timing.Measurement([1.0] * t.samples, "graph", 10, 1) for _ in captured]

    def renew(k):
        alive.append(sum(r() is not None for r in made))  # the earlier instances' calls still referenced
        new = [Calls([f"a{k}"]), Calls([f"b{k}"])]
        made.extend(weakref.ref(c) for c in new)
        return new

    monkeypatch.setattr(timing, "capture_in_turn", fake_capture_in_turn)
    monkeypatch.setattr(timing, "measure_interleaved", fake_measure_interleaved)
    first = [Calls(["a0"]), Calls(["b0"])]
    made = []
    a, b = timing.measure_instances(first, Timing(samples=40), instances=4, renew=renew)
    assert captures == [["a0", "b0"], ["b1", "a1"], ["a2", "b2"], ["b3", "a3"]]
    assert alive == [0, 0, 0]  # renew(1) ran with only the caller's first calls alive, and so on
    assert a.instances == b.instances == 4 and len(a.samples_us) == 40


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_an_ab_measurement_on_a_gpu_gives_each_side_its_samples_from_every_pair_of_graphs():
    x = torch.ones(1 << 16, device="cuda")
    small, large = [lambda: x.mul_(1.0)], [lambda: x.mul_(1.0).add_(0.0).mul_(1.0)]  # one kernel; three
    a, b = timing.measure_instances([small, large], Timing(invocations=4, samples=20, warmup=2), instances=4)
    assert a.mode == b.mode == "graph" and a.instances == b.instances == 4
    assert len(a.samples_us) == len(b.samples_us) == 20
    assert a.median < b.median  # the sides keep their order: the one kernel is faster than the three


@pytest.mark.gpu_alone
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_an_injected_spin_slows_calls_by_about_its_target_in_usual_and_in_long_ab_graphs():
    x = torch.ones(1 << 20, device="cuda")
    calls = [lambda: x.mul_(1.0)]
    usual = Timing(invocations=10, samples=30, warmup=2)
    for t in (usual, timing.pair_timing(timing.measure(calls, usual).median, usual, 1)):
        slow, info = timing.CudaTimer.slow_down(calls, 1.0, "cuda", t)
        a, b = timing.measure_instances([slow(calls), calls], t)
        added = statistics.median(timing.instance_medians([p - q for p, q in zip(a.samples_us, b.samples_us)],
                                                          a.instances))
        assert 0.65 <= added <= 1.35 and 0.75 <= info["extra_us"] <= 1.25, (t.invocations, added, info)


@pytest.mark.gpu_alone
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_queued_samples_of_long_graphs_agree_with_samples_timed_one_by_one():
    x = torch.ones(1 << 20, device="cuda")  # 4 MiB: each call a few microseconds, a replay of 60 calls >= 100 us
    t = Timing(invocations=60, samples=30, warmup=3)
    sides = timing.capture_in_turn([[lambda: x.mul_(1.0)], [lambda: x.add_(0.0)]], t)
    one_by_one = timing.measure_interleaved(sides, t)
    queued = timing.measure_interleaved(sides, t, queued=True)
    for alone, behind in zip(one_by_one, queued):
        assert behind.median == pytest.approx(alone.median, rel=0.03), (alone.median, behind.median)
