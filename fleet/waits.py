"""Waiting with a deadline, written once: the poll loops of the fleet (a server to answer, a host to
turn healthy, an operation to finish) differ only in what they check and what they say on timeout.

- `wait_until(check, timeout, interval, what=...)`: the check's first truthy value, or `TimedOut`.
- `for left in polling(timeout, interval): ...`: for loops that do more per round or raise their own
  error; the loop simply ends when time is up, so the code after it raises.
- `Deadline`: one deadline shared by several waits (several servers, several steps of a scenario).

Rounds run at once, then every `interval` seconds; a round always runs at least once, and the last one
runs at (or just after) the deadline, so a condition that holds by then is not reported as a timeout.
`clock` and `sleep` are parameters so the tests run on a fake clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from fleet.errors import FleetError

T = TypeVar("T")

Clock = Callable[[], float]
Sleep = Callable[[float], object]


class TimedOut(FleetError):
    """A wait ran out of time: `what` says what did not happen."""


class Deadline:
    """A point in time `timeout` seconds from now, on a monotonic clock."""

    def __init__(self, timeout: float, *, clock: Clock = time.monotonic) -> None:
        self.timeout = timeout
        self.clock = clock
        self.at = clock() + timeout

    def left(self) -> float:
        """Seconds until the deadline (negative once it passed)."""
        return self.at - self.clock()

    def passed(self) -> bool:
        return self.left() <= 0


def polling(
    timeout: float | Deadline,
    interval: float,
    *,
    clock: Clock = time.monotonic,
    sleep: Sleep = time.sleep,
) -> Iterator[float]:
    """Rounds of a poll loop, yielding the seconds left. The first round comes at once (even when a
    shared deadline already passed); after each round the loop ends if the deadline has passed, else
    sleeps `interval` (never past the deadline) for the next. `break` or `return` when done."""
    deadline = timeout if isinstance(timeout, Deadline) else Deadline(timeout, clock=clock)
    left = deadline.left()
    while True:
        yield max(0.0, left)
        left = deadline.left()
        if left <= 0:
            return
        pause = min(interval, left)
        if pause > 0:
            sleep(pause)
            left = deadline.left()


def wait_until(
    check: Callable[[], T],
    timeout: float | Deadline,
    interval: float,
    *,
    what: str,
    where: str | None = None,
    hint: str | None = None,
    clock: Clock = time.monotonic,
    sleep: Sleep = time.sleep,
) -> T:
    """Call `check` every `interval` seconds until it returns something truthy, and return that.
    On timeout raise TimedOut(what, where=, hint=): `what` is the whole sentence the operator reads."""
    for _ in polling(timeout, interval, clock=clock, sleep=sleep):
        value = check()
        if value:
            return value
    raise TimedOut(what, where=where, hint=hint)
