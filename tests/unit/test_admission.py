"""The worker's admission by loop lag and the API's wait estimate, without processes."""

from __future__ import annotations

import collections
import math

import pytest

from core.errors import ServiceUnavailable
from service.shedding import MIN_AHEAD, LoadShedder, Snapshot
from worker.admission import ALL_CLASSES, INTERACTIVE_ONLY, LagMonitor


def test_lag_decides_which_classes_a_worker_takes() -> None:
    monitor = LagMonitor(batch_lag_s=0.010, interactive_lag_s=0.050)
    assert monitor.classes() == ALL_CLASSES
    monitor.observe(0.020)
    assert monitor.classes() == INTERACTIVE_ONLY
    monitor.observe(0.200)
    assert monitor.classes() == ""
    # a rise is taken at once, a fall gradually
    monitor.observe(0.0)
    assert monitor.lag_s == pytest.approx(0.150)
    for _ in range(30):
        monitor.observe(0.0)
    assert monitor.classes() == ALL_CLASSES


def shedder(backlog: dict[str, int], rate: float, budget_s: float = 1.0) -> LoadShedder:
    found = LoadShedder.__new__(LoadShedder)
    found.budget_s = budget_s
    found.snapshot = Snapshot(0.0, backlog, rate)
    return found


def test_one_keys_flood_does_not_make_another_keys_task_wait() -> None:
    shed = shedder({"flood": 10_000}, rate=100.0)
    # the flooding key's next task would wait 100 s: refused, with a Retry-After
    with pytest.raises(ServiceUnavailable) as refused:
        shed.check("flood")
    assert refused.value.code == "serverBusy" and refused.value.retry_after is not None
    assert refused.value.retry_after >= 90
    # another key's task waits for one turn of each waiting key: accepted
    assert shed.estimated_wait_s("quiet") == 0.0
    shed.check("quiet")


def test_the_wait_counts_each_key_up_to_the_new_tasks_position() -> None:
    shed = shedder({"a": 50, "b": 3, "c": 100}, rate=10.0)
    # "b" has 3 waiting: its next is 4th in its line; a and c serve up to 4 each before it
    assert shed.estimated_wait_s("b") == pytest.approx((4 + 4 + 4) / 10.0)
    with pytest.raises(ServiceUnavailable):
        shed.check("b")


def test_small_bursts_and_stopped_workers() -> None:
    assert shedder({"a": MIN_AHEAD - 2}, rate=0.0).estimated_wait_s("a") == 0.0
    assert math.isinf(shedder({"a": 500}, rate=0.0).estimated_wait_s("a"))
    shedder({"a": 500}, rate=0.0, budget_s=0).check("a")  # a budget of 0 turns shedding off


def test_a_burst_on_an_idle_stack_is_not_refused_but_a_stuck_backlog_is() -> None:
    # nothing measured yet (the workers were idle): a burst that just arrived is accepted
    young = shedder({"a": 40}, rate=0.0)
    young.snapshot.backlog_age_s = 0.1
    assert young.estimated_wait_s("a") == 0.0
    young.check("a")
    # the same backlog waiting past the budget with nothing started: no worker takes it
    stuck = shedder({"a": 40}, rate=0.0)
    stuck.snapshot.backlog_age_s = 1.5
    assert math.isinf(stuck.estimated_wait_s("a"))
    with pytest.raises(ServiceUnavailable):
        stuck.check("a")


def test_the_rate_counts_only_intervals_busy_throughout() -> None:
    shed = shedder({}, rate=0.0)
    shed._samples = collections.deque(
        [
            (0.0, 100, 0),  # idle: the next interval's 5 starts say nothing of capacity
            (0.1, 105, 30),
            (0.2, 125, 12),  # 20 started in 0.1 s with work waiting throughout
            (0.3, 137, 0),  # 12 more, but the line emptied: how fast work came, not capacity
        ]
    )
    assert shed._busy_rate() == pytest.approx(20 / 0.1)


def test_a_lightly_loaded_stack_does_not_read_its_arrival_rate_as_capacity() -> None:
    # 10 tasks/s, each started at once; one refresh in ten catches one waiting: the odd
    # interval that began with it waiting must not read as a capacity of 10/s
    shed = shedder({}, rate=0.0)
    samples = []
    for i in range(11):
        samples.append((i * 0.1, 100 + i, 1 if i == 4 else 0))
    shed._samples = collections.deque(samples)
    assert shed._busy_rate() == 0.0
    # then sixteen keys send at once: a fresh backlog, accepted
    shed.snapshot = Snapshot(1.0, {f"k{n}": 1 for n in range(16)}, 0.0, 0.05)
    assert shed.estimated_wait_s("new") == 0.0
