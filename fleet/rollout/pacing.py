"""Rollout pacing, pure: batches (canary first), failure budget, timing defaults.

Kept apart from execution so the exact batches an operator sees in `--dry-run` are the ones run.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from fleet.errors import FleetError
from fleet.inventory.schema import LBSettings, RolloutSettings

T = TypeVar("T")
_STEP_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(%?)\s*$")


@dataclass(frozen=True)
class Step:
    """One batch size: an absolute count or a percentage of the whole fleet."""

    value: float
    percent: bool

    def size(self, total: int) -> int:
        if self.percent:
            return max(1, math.ceil(total * self.value / 100))
        return max(1, int(self.value))

    def __str__(self) -> str:
        return f"{self.value:g}%" if self.percent else f"{int(self.value)}"


def parse_batches(spec: str | int) -> list[Step]:
    """`3`, `25%`, or a list `1,25%,50%` whose last entry repeats until every host is covered."""
    steps = []
    for part in str(spec).split(","):
        m = _STEP_RE.fullmatch(part)
        if not m:
            raise FleetError(
                f"invalid batch size {part.strip()!r} in {spec!r}", hint="use N, P% or a list: 1,25%,50%"
            )
        value, pct = float(m.group(1)), m.group(2) == "%"
        if value <= 0 or (pct and value > 100) or (not pct and value != int(value)):
            raise FleetError(
                f"invalid batch size {part.strip()!r}", hint="a count >= 1 or a percentage in (0, 100]"
            )
        steps.append(Step(value, pct))
    return steps


def make_batches(hosts: Sequence[T], canary: int, steps: Sequence[Step]) -> list[list[T]]:
    """Canary batch first (if any), then batches by `steps`, the last step repeating."""
    if canary < 0:
        raise FleetError("--canary must be >= 0")
    total = len(hosts)
    remaining = list(hosts)
    batches: list[list[T]] = []
    if canary and remaining:
        batches.append(remaining[:canary])
        remaining = remaining[canary:]
    i = 0
    while remaining:
        size = steps[min(i, len(steps) - 1)].size(total)
        batches.append(remaining[:size])
        remaining = remaining[size:]
        i += 1
    return batches


def failure_budget(spec: str | int, total: int) -> int:
    """How many hosts may fail before the rollout stops: `N` or `P%` of the fleet (rounded down)."""
    text = str(spec).strip()
    m = _STEP_RE.fullmatch(text)
    if not m:
        raise FleetError(f"invalid --max-failures {spec!r}", hint="a count (0 = stop at the first) or P%")
    value = float(m.group(1))
    if m.group(2):
        if value > 100:
            raise FleetError(f"invalid --max-failures {spec!r}", hint="a percentage must be <= 100")
        return int(total * value / 100)
    if value != int(value):
        raise FleetError(f"invalid --max-failures {spec!r}", hint="a whole number")
    return int(value)


@dataclass(frozen=True)
class Timings:
    """Waits of one rollout, in seconds."""

    drain_wait: float  # how long to wait, at most, for the LB to stop sending traffic to a drained host
    min_ready: float  # soak after a host is back in the LB before the next step
    health_timeout: float  # how long a host has to become healthy on the new release


def default_timings(lb: LBSettings, rollout: RolloutSettings) -> Timings:
    """Defaults derived from the LB health check, overridable in the inventory's `rollout` section.

    A drained host answers 503 on /health; the LB notices after `interval x unhealthy_threshold`, and
    lets in-flight requests finish for `draining_timeout`. Waiting less than that drops requests.
    """
    interval = float(lb.check_interval)
    draining = float(lb.draining_timeout)
    derived_drain = interval * lb.unhealthy_threshold + draining
    ready = interval * lb.healthy_threshold
    return Timings(
        drain_wait=float(derived_drain if rollout.drain_wait is None else rollout.drain_wait),
        min_ready=float(ready if rollout.min_ready is None else rollout.min_ready),
        health_timeout=float(
            max(60.0, 3 * (ready + draining)) if rollout.health_timeout is None else rollout.health_timeout
        ),
    )
