"""fleet.waits on a fake clock: when the rounds run, how long it sleeps, what a timeout says."""

from __future__ import annotations

import pytest

from fleet.errors import FleetError
from fleet.waits import Deadline, TimedOut, polling, wait_until


class FakeClock:
    """time.monotonic and time.sleep that only move when slept (or when a check takes `cost`)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_wait_until_returns_the_first_truthy_value_without_sleeping_after_it(clock: FakeClock) -> None:
    answers = iter([None, "", "key", "later"])
    got = wait_until(lambda: next(answers), 10, 0.5, what="x", clock=clock, sleep=clock.sleep)
    assert got == "key"
    assert clock.slept == [0.5, 0.5]


def test_wait_until_times_out_with_the_callers_words(clock: FakeClock) -> None:
    calls: list[float] = []

    def check() -> bool:
        calls.append(clock.now)
        return False

    with pytest.raises(TimedOut) as info:
        wait_until(
            check, 2, 0.5, what="registry did not answer", where="reg", hint="docker logs reg",
            clock=clock, sleep=clock.sleep,
        )  # fmt: skip
    assert isinstance(info.value, FleetError)
    assert str(info.value) == "reg: registry did not answer\n  hint: docker logs reg"
    # rounds at 0, .5, 1, 1.5 and one at the deadline itself: no check is skipped, none is late
    assert [t - 100 for t in calls] == [0, 0.5, 1.0, 1.5, 2.0]


def test_the_last_round_runs_at_the_deadline_not_an_interval_after(clock: FakeClock) -> None:
    rounds = [left for left in polling(2.5, 1.0, clock=clock, sleep=clock.sleep)]
    assert rounds == [2.5, 1.5, 0.5, 0.0]
    assert clock.slept == [1.0, 1.0, 0.5]
    assert clock.now == 102.5


def test_a_condition_that_holds_at_the_deadline_is_not_a_timeout(clock: FakeClock) -> None:
    assert wait_until(lambda: clock.now >= 103, 3, 2, what="x", clock=clock, sleep=clock.sleep)


def test_a_slow_check_counts_against_the_timeout(clock: FakeClock) -> None:
    def slow() -> bool:
        clock.now += 4
        return False

    with pytest.raises(TimedOut):
        wait_until(slow, 10, 1, what="x", clock=clock, sleep=clock.sleep)
    assert clock.slept == [1, 1]  # rounds end at 4, 9 (sleep 1), 14: past the deadline, no sleep


def test_a_zero_timeout_still_checks_once(clock: FakeClock) -> None:
    seen: list[int] = []
    with pytest.raises(TimedOut):
        wait_until(lambda: seen.append(1), 0, 1, what="x", clock=clock, sleep=clock.sleep)
    assert seen == [1]
    assert clock.slept == []


def test_a_shared_deadline_spans_several_waits(clock: FakeClock) -> None:
    deadline = Deadline(5, clock=clock)
    assert sum(1 for _ in polling(deadline, 1, sleep=clock.sleep)) == 6  # 0..5 s
    assert deadline.passed()
    assert deadline.left() == 0
    # a wait that starts after the shared deadline still looks once, then gives up
    assert [left for left in polling(deadline, 1, sleep=clock.sleep)] == [0.0]


def test_breaking_out_of_polling_stops_the_sleeps(clock: FakeClock) -> None:
    for n, _ in enumerate(polling(60, 1, clock=clock, sleep=clock.sleep)):
        if n == 2:
            break
    assert clock.slept == [1, 1]


def test_a_zero_interval_polls_without_sleeping(clock: FakeClock) -> None:
    rounds = 0
    for _ in polling(1, 0, clock=clock, sleep=clock.sleep):
        rounds += 1
        clock.now += 0.4
    assert rounds == 3
    assert clock.slept == []


def test_polling_defaults_to_the_real_clock() -> None:
    assert wait_until(lambda: 7, 0.5, 0.01, what="x") == 7
