"""A managed instance group's autohealing, as Compute applies it: pure decisions, no I/O.

The MIG's autohealing policy names a health check (the fleet's LIVENESS check: nginx's own path,
never drain-aware) and an initial delay. Every `check_interval` each running member without a current
action is probed; `healthy_threshold` successes in a row make it HEALTHY, `unhealthy_threshold`
failures in a row UNHEALTHY (or TIMEOUT when nothing answered in time), and an UNHEALTHY/TIMEOUT member
past its initial delay is recreated. A member younger than the initial delay (since its last boot) is
probed but its failures are ignored, as Compute does while a VM runs its startup script; a member with
a current action (being created, recreated, verified, restarted, deleted) is not judged at all and its
health is UNKNOWN until probed again.

The backend owns the clock, the members and the probe (an HTTP GET); `Autohealer.due` says whom to
probe now, `Autohealer.record` takes each result and says whether to recreate. The health state shows
in listManagedInstances as `instanceHealth: [{healthCheck, detailedHealthState}]` (`instance_health`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass

HEALTHY = "HEALTHY"
UNHEALTHY = "UNHEALTHY"  # answered, but not 200
TIMEOUT = "TIMEOUT"  # no answer within the timeout (connection refused counts: nothing listens)
UNKNOWN = "UNKNOWN"


@dataclass(frozen=True)
class HealthCheck:
    """An HTTP health check's settings (Compute's healthChecks resource, the fields that matter here)."""

    url: str  # selfLink: what autoHealingPolicies[].healthCheck and instanceHealth[].healthCheck name
    path: str = "/nginx-health"
    port: int = 80
    check_interval: float = 10.0
    timeout: float = 5.0
    healthy_threshold: int = 2
    unhealthy_threshold: int = 6

    def __post_init__(self) -> None:
        if self.check_interval <= 0 or self.timeout <= 0:
            raise ValueError("health check interval and timeout must be > 0")
        if self.healthy_threshold < 1 or self.unhealthy_threshold < 1:
            raise ValueError("health check thresholds must be >= 1")
        if not self.path.startswith("/"):
            raise ValueError(f"health check path {self.path!r} must start with '/'")


@dataclass(frozen=True)
class HealingPolicy:
    """One entry of a MIG's autoHealingPolicies."""

    health_check: HealthCheck
    initial_delay: float = 300.0  # initialDelaySec

    def to_json(self) -> dict[str, object]:
        return {"healthCheck": self.health_check.url, "initialDelaySec": int(self.initial_delay)}


@dataclass(frozen=True)
class Member:
    """What the autohealer needs to know of one member right now."""

    name: str
    running: bool  # the VM is RUNNING (a stopped VM is not health-checked)
    busy: bool  # the MIG has a current action on it
    booted: float  # when it last booted (epoch seconds): the initial delay counts from here


@dataclass
class _State:
    health: str = UNKNOWN
    successes: int = 0
    failures: int = 0
    last_probe: float | None = None
    booted: float = 0.0


class Autohealer:
    """Per-member probe counters and health states for one MIG; thread-safe."""

    def __init__(self, policy: HealingPolicy) -> None:
        self.policy = policy
        self._states: dict[str, _State] = {}
        self._lock = threading.Lock()

    def due(self, members: Iterable[Member], now: float) -> list[str]:
        """Members to probe now. Forgets members that are gone; a stopped member, or one that booted
        since it was last judged, starts again from UNKNOWN; a busy one keeps its last health (an
        UNHEALTHY member shows so while it is recreated) but its counters start again."""
        interval = self.policy.health_check.check_interval
        out = []
        with self._lock:
            seen = set()
            for m in members:
                seen.add(m.name)
                state = self._states.setdefault(m.name, _State(booted=m.booted))
                if not m.running or m.booted != state.booted:
                    state = self._states[m.name] = _State(booted=m.booted)
                    if not m.running:
                        continue
                if m.busy:
                    state.successes = state.failures = 0
                    state.last_probe = None
                    continue
                # rounds come one interval apart: a round that started a little late must not push
                # this member's next probe back by a whole interval
                if state.last_probe is None or now - state.last_probe >= 0.8 * interval:
                    out.append(m.name)
            for name in [n for n in self._states if n not in seen]:
                del self._states[name]
        return out

    def record(self, name: str, result: str, now: float) -> bool:
        """One probe's result (HEALTHY, UNHEALTHY or TIMEOUT); True when the member must be recreated."""
        if result not in (HEALTHY, UNHEALTHY, TIMEOUT):
            raise ValueError(f"unknown probe result {result!r}")
        check = self.policy.health_check
        with self._lock:
            state = self._states.get(name)
            if state is None:  # gone or busy since it was found due
                return False
            state.last_probe = now
            starting = now - state.booted < self.policy.initial_delay
            if result == HEALTHY:
                state.successes += 1
                state.failures = 0
                if state.successes >= check.healthy_threshold or state.health == HEALTHY:
                    state.health = HEALTHY
                return False
            state.successes = 0
            if starting:  # failures during the initial delay are ignored (the VM is still booting)
                state.failures = 0
                return False
            state.failures += 1
            if state.failures < check.unhealthy_threshold:
                return False
            state.health = result
            return True

    def health(self, name: str) -> str:
        with self._lock:
            state = self._states.get(name)
            return state.health if state else UNKNOWN

    def instance_health(self, name: str) -> list[dict[str, str]]:
        """listManagedInstances' `instanceHealth` for one member."""
        return [{"healthCheck": self.policy.health_check.url, "detailedHealthState": self.health(name)}]
