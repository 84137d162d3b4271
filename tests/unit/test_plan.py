"""Rollout planning: batches, failure budget, derived waits."""

from __future__ import annotations

import pytest

from fleet.errors import FleetError
from fleet.inventory.schema import LBSettings, RolloutSettings
from fleet.rollout.pacing import default_timings, failure_budget, make_batches, parse_batches

HOSTS = [f"h{i}" for i in range(1, 11)]


def sizes(batches: list[list[str]]) -> list[int]:
    return [len(b) for b in batches]


@pytest.mark.parametrize(
    ("canary", "spec", "expected"),
    [
        (1, "1", [1] * 10),
        (1, "25%", [1, 3, 3, 3]),
        (0, "50%", [5, 5]),
        (1, "1,25%,50%", [1, 1, 3, 5]),
        (2, "4", [2, 4, 4]),
        (0, "100%", [10]),
        (3, "33%", [3, 4, 3]),
    ],
)
def test_batches(canary: int, spec: str, expected: list[int]) -> None:
    batches = make_batches(HOSTS, canary, parse_batches(spec))
    assert sizes(batches) == expected
    assert [h for b in batches for h in b] == HOSTS  # every host once, in order


def test_small_fleet_percentages_round_up_to_one() -> None:
    assert sizes(make_batches(["a", "b"], 0, parse_batches("10%"))) == [1, 1]


def test_canary_larger_than_fleet() -> None:
    assert make_batches(["a", "b"], 5, parse_batches("1")) == [["a", "b"]]


@pytest.mark.parametrize("bad", ["0", "-1", "abc", "150%", "1.5", "", "1,,2", "25 %%"])
def test_bad_batch_specs(bad: str) -> None:
    with pytest.raises(FleetError):
        parse_batches(bad)


@pytest.mark.parametrize(
    ("spec", "total", "expected"), [("0", 10, 0), ("2", 10, 2), ("25%", 10, 2), ("50%", 3, 1)]
)
def test_failure_budget(spec: str, total: int, expected: int) -> None:
    assert failure_budget(spec, total) == expected


@pytest.mark.parametrize("bad", ["x", "101%", "1.5"])
def test_bad_failure_budget(bad: str) -> None:
    with pytest.raises(FleetError):
        failure_budget(bad, 10)


def test_timings_derive_from_lb_health_check() -> None:
    t = default_timings(
        LBSettings(check_interval=1, unhealthy_threshold=2, healthy_threshold=2, draining_timeout=3),
        RolloutSettings(),
    )
    assert t.drain_wait == 1 * 2 + 3 and t.min_ready == 2 and t.health_timeout == 60
    given = RolloutSettings(drain_wait=7, min_ready=0, health_timeout=30)
    assert default_timings(LBSettings(), given) == type(t)(7, 0, 30)
    # the schema's LB defaults: 5 s interval, thresholds 2, 10 s draining
    assert default_timings(LBSettings(), RolloutSettings()) == type(t)(20, 10, 60)
