"""The managed instance group updater's arithmetic: versions, update policy, and the next moves.

Pure (no state, no clock), so a backend calls `plan` after every change of a MIG and acts on what it
returns; the rules follow Compute's documentation of `versions` and `updatePolicy`:

- a version's `targetSize.fixed` counts min(fixed, group targetSize); `percent` rounds up; the one
  version without a targetSize takes the remaining instances;
- `maxSurge` (percent rounds up) is how many instances above targetSize the updater may create,
  `maxUnavailable` (percent rounds down) how many may be not ready at once; a regional MIG's fixed
  values must be 0 or at least its number of zones; both 0 is refused; `replacementMethod: RECREATE`
  (same name) needs maxSurge 0;
- PROACTIVE moves instances to their target version within those budgets; OPPORTUNISTIC only creates
  new instances from the target version (resize, autohealing, applyUpdatesToInstances,
  recreateInstances);
- a template change needs REPLACE, so a policy whose `mostDisruptiveAllowedAction` is below REPLACE
  leaves outdated instances alone (the version target is then not reached).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


class UpdateError(ValueError):
    """A bad `versions` or `updatePolicy`; the backend answers it as Compute's 400 invalid."""


def invalid(message: str) -> UpdateError:
    return UpdateError(message)


ACTIONS = ("NONE", "REFRESH", "RESTART", "REPLACE")
TYPES = ("PROACTIVE", "OPPORTUNISTIC")
METHODS = ("SUBSTITUTE", "RECREATE")
REDISTRIBUTION = ("PROACTIVE", "NONE")


@dataclass(frozen=True)
class Member:
    """One instance as the updater sees it."""

    name: str
    template: str  # the template it was created from
    action: str  # currentAction: NONE, CREATING, VERIFYING, DELETING, RECREATING, ...
    ready: bool  # RUNNING, no action, and healthy


@dataclass
class Moves:
    """What the updater starts now: instances to create (their template), delete, or recreate in place."""

    create: list[str] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    recreate: list[tuple[str, str]] = field(default_factory=list)  # (instance, new template)


def _fixed_or_percent(value: Any, where: str) -> dict[str, int]:
    if not isinstance(value, Mapping) or set(value) - {"fixed", "percent", "calculated"}:
        raise invalid(f"Invalid value for field '{where}': {value!r}")
    given = {k: value[k] for k in ("fixed", "percent") if k in value}
    if len(given) != 1:
        raise invalid(f"Invalid value for field '{where}': exactly one of fixed or percent must be set")
    key, number = next(iter(given.items()))
    if (
        not isinstance(number, int)
        or isinstance(number, bool)
        or number < 0
        or (key == "percent" and number > 100)
    ):
        raise invalid(f"Invalid value for field '{where}.{key}': '{number}'")
    return {key: number}


def check_versions(versions: Any, template_exists: Any = None) -> list[dict[str, Any]]:
    """The versions of a MIG, checked (400 invalid like Compute); returns a normalized copy."""
    if not isinstance(versions, list) or not versions:
        raise invalid("Invalid value for field 'resource.versions': at least one version is required")
    out: list[dict[str, Any]] = []
    unsized = 0
    for i, version in enumerate(versions):
        where = f"resource.versions[{i}]"
        if not isinstance(version, Mapping) or set(version) - {"name", "instanceTemplate", "targetSize"}:
            raise invalid(f"Invalid value for field '{where}'")
        template = version.get("instanceTemplate")
        if not isinstance(template, str) or not template:
            raise invalid(f"Required field '{where}.instanceTemplate' not specified")
        if template_exists is not None and not template_exists(template):
            raise invalid(f"Invalid value for field '{where}.instanceTemplate': '{template}' does not exist")
        item: dict[str, Any] = {"instanceTemplate": template}
        if "name" in version:
            item["name"] = str(version["name"])
        if version.get("targetSize") is not None:
            item["targetSize"] = _fixed_or_percent(version["targetSize"], f"{where}.targetSize")
        else:
            unsized += 1
        out.append(item)
    templates = [v["instanceTemplate"] for v in out]
    if len(set(templates)) != len(templates):
        raise invalid("Invalid value for field 'resource.versions': each instance template at most once")
    names = [v["name"] for v in out if v.get("name")]
    if len(set(names)) != len(names):
        raise invalid("Invalid value for field 'resource.versions': version names must be unique")
    if unsized != 1:
        raise invalid(
            "Invalid value for field 'resource.versions': exactly one version must have no targetSize "
            "(it takes the remaining instances)"
        )
    return out


def check_policy(policy: Any, zones: int, regional: bool) -> dict[str, Any]:
    """An updatePolicy with Compute's defaults filled in (maxSurge and maxUnavailable: 1, or the
    number of zones of a regional MIG); 400 invalid on a bad one."""
    if policy is None:
        policy = {}
    if not isinstance(policy, Mapping):
        raise invalid("Invalid value for field 'resource.updatePolicy'")
    known = {
        "type",
        "minimalAction",
        "mostDisruptiveAllowedAction",
        "maxSurge",
        "maxUnavailable",
        "replacementMethod",
        "instanceRedistributionType",
    }
    unknown = sorted(set(policy) - known)
    if unknown:
        raise invalid(f"Invalid value for field 'resource.updatePolicy.{unknown[0]}'")
    default = zones if regional else 1
    out: dict[str, Any] = {
        "type": policy.get("type", "OPPORTUNISTIC"),
        "minimalAction": policy.get("minimalAction", "REPLACE"),
        "mostDisruptiveAllowedAction": policy.get("mostDisruptiveAllowedAction", "REPLACE"),
        "replacementMethod": policy.get("replacementMethod", "SUBSTITUTE"),
        "instanceRedistributionType": policy.get(
            "instanceRedistributionType", "PROACTIVE" if regional else "NONE"
        ),
    }
    for key, allowed in (
        ("type", TYPES),
        ("minimalAction", ACTIONS),
        ("mostDisruptiveAllowedAction", ACTIONS),
        ("replacementMethod", METHODS),
        ("instanceRedistributionType", REDISTRIBUTION),
    ):
        if out[key] not in allowed:
            raise invalid(f"Invalid value for field 'resource.updatePolicy.{key}': '{out[key]}'")
    if ACTIONS.index(out["minimalAction"]) > ACTIONS.index(out["mostDisruptiveAllowedAction"]):
        raise invalid(
            "Invalid value for field 'resource.updatePolicy.minimalAction': it is more disruptive than "
            "mostDisruptiveAllowedAction"
        )
    for key in ("maxSurge", "maxUnavailable"):
        value = policy.get(key)
        spec = (
            _fixed_or_percent(value, f"resource.updatePolicy.{key}")
            if value is not None
            else {"fixed": default}
        )
        fixed = spec.get("fixed")
        if regional and fixed is not None and 0 < fixed < zones:
            raise invalid(
                f"Invalid value for field 'resource.updatePolicy.{key}.fixed': '{fixed}'. "
                f"A regional managed instance group needs 0 or at least its number of zones ({zones})"
            )
        out[key] = spec
    if out["replacementMethod"] == "RECREATE" and out["maxSurge"] != {"fixed": 0}:
        raise invalid(
            "Invalid value for field 'resource.updatePolicy.maxSurge': "
            "must be 0 with replacementMethod RECREATE"
        )
    if out["maxSurge"] in ({"fixed": 0}, {"percent": 0}) and out["maxUnavailable"] in (
        {"fixed": 0},
        {"percent": 0},
    ):
        raise invalid(
            "Invalid value for field 'resource.updatePolicy': maxSurge and maxUnavailable are both 0"
        )
    return out


def calculated(spec: Mapping[str, int], target_size: int, round_up: bool) -> int:
    """The number a fixed-or-percent stands for in a group of `target_size`."""
    if "fixed" in spec:
        return int(spec["fixed"])
    exact = spec["percent"] * target_size / 100
    return math.ceil(exact) if round_up else math.floor(exact)


def wanted(versions: Sequence[Mapping[str, Any]], target_size: int) -> list[tuple[str, int]]:
    """(template, instances) per version, sized versions first (they are served before the remainder)."""
    sized: list[tuple[str, int]] = []
    rest = ""
    for version in versions:
        spec = version.get("targetSize")
        if spec is None:
            rest = version["instanceTemplate"]
            continue
        count = min(target_size, calculated(spec, target_size, round_up=True))
        sized.append((version["instanceTemplate"], count))
    left = target_size
    out = []
    for template, count in sized:
        count = min(count, left)
        out.append((template, count))
        left -= count
    out.append((rest, left))
    return out


def targets(
    members: Sequence[Member], versions: Sequence[Mapping[str, Any]], target_size: int
) -> tuple[dict[str, str], list[str]]:
    """Each live member's target template, and the surplus members (beyond targetSize) to remove.

    Members keep their template while it still has room (older members first); the others are
    assigned to versions short of their size; what is left over is surplus."""
    room = dict(wanted(versions, target_size))
    live = [m for m in members if m.action != "DELETING"]
    target: dict[str, str] = {}
    rest: list[Member] = []
    for m in live:
        if room.get(m.template, 0) > 0:
            room[m.template] -= 1
            target[m.name] = m.template
        else:
            rest.append(m)
    surplus: list[str] = []
    for m in rest:
        free = next((t for t, n in room.items() if n > 0), None)
        if free is None:
            surplus.append(m.name)
            target[m.name] = m.template
        else:
            room[free] -= 1
            target[m.name] = free
    return target, surplus


def plan(
    members: Sequence[Member],
    versions: Sequence[Mapping[str, Any]],
    target_size: int,
    policy: Mapping[str, Any],
) -> Moves:
    """The moves to start now, given the members (in creation order) and their current actions."""
    moves = Moves()
    live = [m for m in members if m.action != "DELETING"]
    target, surplus = targets(members, versions, target_size)
    have: dict[str, int] = {}
    for m in live:
        if target[m.name] == m.template and m.name not in surplus:
            have[m.template] = have.get(m.template, 0) + 1
    deficit = [t for t, n in wanted(versions, target_size) for _ in range(max(0, n - have.get(t, 0)))]
    # outdated members: pending a move to another template (RECREATING ones are already moving)
    outdated = [m for m in live if target[m.name] != m.template and m.action != "RECREATING"]
    # below targetSize: create whatever the versions lack (any policy: this is resize/autohealing)
    count = len(live)
    short = max(0, target_size - count)
    # the members being moved in place already stand for their target template
    moving = {t: 0 for t in deficit}
    for m in live:
        if m.action == "RECREATING":
            moving[m.template] = moving.get(m.template, 0) + 1
    deficit_left = []
    for t in deficit:
        if moving.get(t, 0) > 0:
            moving[t] -= 1
        else:
            deficit_left.append(t)
    to_create = deficit_left[: min(short, len(deficit_left))]
    deficit_left = deficit_left[len(to_create) :]
    moves.create += to_create
    count += len(to_create)
    proactive = policy.get("type") == "PROACTIVE"
    if not proactive or ACTIONS.index(policy.get("mostDisruptiveAllowedAction", "REPLACE")) < 3:
        return moves
    surge = calculated(policy["maxSurge"], target_size, round_up=True)
    unavailable = calculated(policy["maxUnavailable"], target_size, round_up=False)
    ready = sum(1 for m in live if m.ready)
    removable = ready - (target_size - unavailable)  # ready members we may take out of service now
    if policy.get("replacementMethod") == "RECREATE":
        for m in sorted(outdated, key=lambda m: m.ready):
            if m.name in surplus:
                continue
            if m.ready:
                if removable <= 0:
                    break
                removable -= 1
            moves.recreate.append((m.name, target[m.name]))
    else:
        room = max(0, target_size + surge - count)
        extra = deficit_left[:room]
        moves.create += extra
        count += len(extra)
        # take outdated and surplus members out: not-ready ones first, each ready one within budget,
        # and never more than the group would lack after the creations under way
        victims = sorted(
            [m for m in live if m.name in surplus or m in outdated],
            key=lambda m: (m.ready, m.name not in surplus),
        )
        for m in victims:
            if count - 1 < target_size - unavailable:
                break
            if m.ready:
                if removable <= 0:
                    continue
                removable -= 1
            moves.delete.append(m.name)
            count -= 1
    return moves


def version_target_reached(
    members: Sequence[Member], versions: Sequence[Mapping[str, Any]], target_size: int
) -> bool:
    """Every live member runs its target version and the group has its size (status.versionTarget)."""
    live = [m for m in members if m.action != "DELETING"]
    target, surplus = targets(members, versions, target_size)
    return (
        not surplus
        and len(live) == target_size
        and all(target[m.name] == m.template and m.action != "RECREATING" for m in live)
    )


# --- as the API shows them -------------------------------------------------------------------------


def version_json(version: Mapping[str, Any], target_size: int) -> dict[str, Any]:
    """A version as Compute answers it (its targetSize with `calculated`)."""
    out = dict(version)
    if "targetSize" in version:
        spec = dict(version["targetSize"])
        spec["calculated"] = min(target_size, calculated(spec, target_size, round_up=True))
        out["targetSize"] = spec
    return out


def policy_json(policy: Mapping[str, Any], target_size: int) -> dict[str, Any]:
    """An updatePolicy as Compute answers it (maxSurge/maxUnavailable with `calculated`)."""
    out = dict(policy)
    for key, up in (("maxSurge", True), ("maxUnavailable", False)):
        spec = dict(policy[key])
        spec["calculated"] = calculated(spec, target_size, round_up=up)
        out[key] = spec
    return out


def policy_input(policy: Mapping[str, Any]) -> dict[str, Any]:
    """A stored policy as a client would send it (without the server's `calculated`)."""
    return {
        k: ({kk: vv for kk, vv in v.items() if kk != "calculated"} if isinstance(v, Mapping) else v)
        for k, v in policy.items()
    }
