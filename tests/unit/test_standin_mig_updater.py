"""The MIG updater's arithmetic (standins/mig_updater.py): sizes, policy rules, the next moves."""

from __future__ import annotations

import pytest

from standins import mig_updater as u

OLD, NEW = "t-old", "t-new"


def members(spec: str) -> list[u.Member]:
    """'o' ready old, 'n' ready new, 'c' new being created (not ready), 'b' new but unhealthy."""
    out = []
    for i, ch in enumerate(spec):
        template = OLD if ch == "o" else NEW
        action = "CREATING" if ch == "c" else "NONE"
        out.append(u.Member(f"m{i}", template, action, ch in "on"))
    return out


def canary(count: int | None, percent: int | None = None) -> list[dict]:
    size = {"fixed": count} if count is not None else {"percent": percent}
    return [{"instanceTemplate": NEW, "targetSize": size}, {"instanceTemplate": OLD}]


def test_version_sizes_fixed_is_capped_and_percent_rounds_up():
    assert u.wanted(canary(1), 4) == [(NEW, 1), (OLD, 3)]
    assert u.wanted(canary(9), 4) == [(NEW, 4), (OLD, 0)]
    assert u.wanted(canary(None, 10), 1000) == [(NEW, 100), (OLD, 900)]
    assert u.wanted(canary(None, 30), 4) == [(NEW, 2), (OLD, 2)]


def test_policy_defaults_and_rounding():
    zonal = u.check_policy(None, 1, regional=False)
    assert (zonal["type"], zonal["maxSurge"], zonal["maxUnavailable"]) == (
        "OPPORTUNISTIC",
        {"fixed": 1},
        {"fixed": 1},
    )
    regional = u.check_policy({"type": "PROACTIVE"}, 3, regional=True)
    assert regional["maxSurge"] == {"fixed": 3} and regional["instanceRedistributionType"] == "PROACTIVE"
    assert u.calculated({"percent": 10}, 15, round_up=True) == 2  # maxSurge rounds up
    assert u.calculated({"percent": 10}, 15, round_up=False) == 1  # maxUnavailable rounds down


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({"maxSurge": {"fixed": 1}}, "number of zones"),
        ({"maxSurge": {"fixed": 0}, "maxUnavailable": {"percent": 0}}, "both 0"),
        ({"maxSurge": {"fixed": 2, "percent": 5}}, "exactly one of fixed or percent"),
        ({"maxUnavailable": {"percent": 101}}, "percent"),
        ({"replacementMethod": "RECREATE"}, "RECREATE"),
        ({"type": "EVENTUALLY"}, "type"),
        ({"surge": 1}, "updatePolicy.surge"),
    ],
)
def test_bad_policies(policy, message):
    with pytest.raises(u.UpdateError, match=message):
        u.check_policy(policy, 2, regional=True)


def test_bad_versions():
    with pytest.raises(u.UpdateError, match="at least one"):
        u.check_versions([])
    with pytest.raises(u.UpdateError, match="at most once"):
        u.check_versions([{"instanceTemplate": OLD, "targetSize": {"fixed": 1}}, {"instanceTemplate": OLD}])
    with pytest.raises(u.UpdateError, match="does not exist"):
        u.check_versions([{"instanceTemplate": "nope"}], template_exists=lambda url: False)


SURGE_ONLY = u.check_policy(
    {"type": "PROACTIVE", "maxSurge": {"fixed": 2}, "maxUnavailable": {"fixed": 0}}, 1, regional=False
)
UNAVAILABLE_ONLY = u.check_policy(
    {"type": "PROACTIVE", "maxSurge": {"fixed": 0}, "maxUnavailable": {"fixed": 1}}, 1, regional=False
)


def test_surge_creates_first_and_deletes_only_once_the_new_ones_are_ready():
    one = [{"instanceTemplate": NEW}]
    moves = u.plan(members("oooo"), one, 4, SURGE_ONLY)
    assert (moves.create, moves.delete) == ([NEW, NEW], [])
    assert u.plan(members("ooooc" + "c"), one, 4, SURGE_ONLY).delete == []  # not ready yet: keep all old
    moves = u.plan(members("oooonn"), one, 4, SURGE_ONLY)
    assert (
        moves.create == []
        and len(moves.delete) == 2
        and all(n in {"m0", "m1", "m2", "m3"} for n in moves.delete)
    )
    assert u.plan(members("oobb"), one, 2, SURGE_ONLY).delete == []  # unhealthy new ones never free the old


def test_unavailable_deletes_first_then_refills():
    one = [{"instanceTemplate": NEW}]
    moves = u.plan(members("ooo"), one, 3, UNAVAILABLE_ONLY)
    assert (moves.create, len(moves.delete)) == ([], 1)
    moves = u.plan(members("oo"), one, 3, UNAVAILABLE_ONLY)  # after the deletion: refill from NEW
    assert moves.create == [NEW] and moves.delete == []


def test_opportunistic_and_restart_only_never_replace():
    one = [{"instanceTemplate": NEW}]
    lazy = u.check_policy({"maxSurge": {"fixed": 1}}, 1, regional=False)
    assert (
        u.plan(members("ooo"), one, 3, lazy).create == []
        and u.plan(members("ooo"), one, 3, lazy).delete == []
    )
    assert u.plan(members("oo"), one, 3, lazy).create == [NEW]  # growing uses the target version
    mild = u.check_policy(
        {"type": "PROACTIVE", "minimalAction": "RESTART", "mostDisruptiveAllowedAction": "RESTART"},
        1,
        regional=False,
    )
    assert u.plan(members("ooo"), one, 3, mild).delete == []
    assert not u.version_target_reached(members("ooo"), one, 3)


def test_canary_target_and_recreate_method():
    assert u.targets(members("oooo"), canary(1), 4)[0] == {"m0": OLD, "m1": OLD, "m2": OLD, "m3": NEW}
    assert u.version_target_reached(members("ooon"), canary(1), 4)
    recreate = u.check_policy(
        {
            "type": "PROACTIVE",
            "replacementMethod": "RECREATE",
            "maxSurge": {"fixed": 0},
            "maxUnavailable": {"fixed": 2},
        },
        1,
        regional=False,
    )
    moves = u.plan(members("oooo"), [{"instanceTemplate": NEW}], 4, recreate)
    assert moves.recreate == [("m0", NEW), ("m1", NEW)] and moves.create == moves.delete == []
