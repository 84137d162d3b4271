"""Pure decisions of autoheal and scale: incident + snapshot of live Compute state -> one Decision.

No I/O here. Functions share no memory, so everything a decision needs (who is healing, when an
instance was reset and for which incident, whether a closed arrived first) comes from the snapshot:
instance labels, managed-instance current actions and creation times. Redelivery safety comes from
Compute `requestId`s derived from the incident id and state (Compute runs a request id once).
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import fleet_contract as contract
from fleet_contract import MigRef
from incidents import Incident
from settings import Settings

# Fixed namespace: the same incident always yields the same request ids, in every function instance.
_REQUEST_NS = uuid.UUID("4c0f2d4e-3b7a-5e1c-9a56-0c8f1e2d3b4a")

HEALING_ACTIONS = frozenset({"RECREATING", "RESTARTING", "REFRESHING"})
TRANSITIONAL_STATUS = frozenset({"PROVISIONING", "STAGING", "STOPPING", "SUSPENDING", "REPAIRING"})
STOPPED_STATUS = frozenset({"TERMINATED", "STOPPED", "SUSPENDED"})
_HEAL_MARK = re.compile(r"(reset|recreate)-([0-9]{1,12})-([0-9a-f]{12})")
_WHOLE = re.compile(r"[0-9]{1,9}")  # ASCII digits only: "²" and "١٢" pass str.isdigit()
# Compute keeps a requestId for at least this long; a replay older than that is not deduplicated.
REQUEST_ID_MEMORY = 3600


def request_id(*parts: str) -> str:
    """A Compute requestId (a UUID) that is the same for the same parts, anywhere, any time."""
    return str(uuid.uuid5(_REQUEST_NS, "\x1f".join(parts)))


@dataclass(frozen=True)
class ManagedInstance:
    """One managed instance: listManagedInstances joined with the instance resource."""

    name: str
    zone: str
    id: str
    current_action: str
    status: str
    created: float | None  # epoch seconds; None while the instance resource does not exist yet
    labels: Mapping[str, str] = field(default_factory=dict)
    label_fingerprint: str = ""


@dataclass(frozen=True)
class Autoscaler:
    name: str
    min_replicas: int
    max_replicas: int
    mode: str


@dataclass(frozen=True)
class MigState:
    ref: MigRef
    target_size: int
    members: tuple[ManagedInstance, ...]
    autoscaler: Autoscaler | None = None


@dataclass(frozen=True)
class InstanceTarget:
    """What an incident says about its instance; empty fields are unknown."""

    project: str
    zone: str
    instance_id: str
    name: str


@dataclass(frozen=True)
class Decision:
    """One action (or none) and why. `reason` is a stable token, `detail` is for humans."""

    action: str  # reset | recreate | mark-closed | resize | autoscaler | none
    reason: str
    detail: str = ""
    mig: MigRef | None = None
    member: ManagedInstance | None = None
    request_id: str = ""
    labels: Mapping[str, str] | None = None  # full label set to write (with member's fingerprint) first
    new_size: int | None = None
    new_min: int | None = None
    new_max: int | None = None

    @property
    def acts(self) -> bool:
        return self.action != "none"


@dataclass(frozen=True)
class HealMark:
    step: str
    at: int
    key: str


def parse_heal_mark(value: str | None) -> HealMark | None:
    """The HEAL_LABEL value written with the last action; anything else (or absent) is None."""
    match = _HEAL_MARK.fullmatch(value or "")
    if match is None:
        return None
    return HealMark(match.group(1), int(match.group(2)), match.group(3))


def heal_mark(step: str, now: float, key: str) -> str:
    return contract.validate_label_value(f"{step}-{int(now)}-{key}")


# --- autoheal --------------------------------------------------------------------------------------


def heal_target(incident: Incident) -> InstanceTarget | Decision:
    """The instance an autoheal incident is about, or a no-op decision saying why there is none."""
    if incident.policy_user_labels.get(contract.POLICY_ACTION_LABEL) != contract.POLICY_ACTION_HEAL:
        return Decision(
            "none",
            "not-heal-policy",
            f"policy {incident.policy_name!r} is not labelled for healing: it needs the user label "
            f"{contract.POLICY_ACTION_LABEL}={contract.POLICY_ACTION_HEAL} "
            f"(has {_shown(incident.policy_user_labels, contract.POLICY_ACTION_LABEL)})",
        )
    res, met = incident.resource_labels, incident.metric_labels
    target = InstanceTarget(
        project=res.get("project_id", ""),
        zone=res.get("zone", ""),
        instance_id=res.get("instance_id", ""),
        name=met.get("instance_name", "") or res.get("instance_name", ""),
    )
    if not target.instance_id and not target.name:
        return Decision(
            "none",
            "no-instance",
            "incident names no instance (resource.labels.instance_id or metric.labels.instance_name); "
            "group the condition by instance",
        )
    return target


def _shown(labels: Mapping[str, str], key: str) -> str:
    """How a label appears on the policy, for a log line that says what was expected instead."""
    return f"{key}={labels[key][:64]!r}" if key in labels else f"no {key}"


def _member_matches(member: ManagedInstance, zone: str, instance_id: str, name: str) -> bool:
    if zone and member.zone != zone:
        return False
    if instance_id and member.id == instance_id:
        return True
    return bool(name) and member.name == name and (not instance_id or not member.id)


def locate(target: InstanceTarget, fleet: Sequence[MigState]) -> tuple[MigState, ManagedInstance] | None:
    """The configured MIG and member the target is, or None when it is not in any of them."""
    for mig in fleet:
        if target.project and mig.ref.project != target.project:
            continue
        for member in mig.members:
            if _member_matches(member, target.zone, target.instance_id, target.name):
                return mig, member
    return None


def rollout_mark_holds(member: ManagedInstance, lock: contract.Lock | None, now: float) -> bool:
    """A rollout mark counts only while its rollout holds the fleet lock; a killed rollout's mark is stale."""
    mark = member.labels.get(contract.ROLLOUT_LABEL)
    if not mark or lock is None:
        return False
    return lock.rollout_id == mark and contract.is_held(lock, datetime.fromtimestamp(now, UTC))


def is_healing(member: ManagedInstance, now: float, settle: int) -> bool:
    """Busy with a heal: a MIG repair action, or our own action less than `settle` seconds ago."""
    if member.current_action in HEALING_ACTIONS:
        return True
    mark = parse_heal_mark(member.labels.get(contract.HEAL_LABEL))
    return mark is not None and now - mark.at < settle


def _budget_left(
    fleet: Sequence[MigState], mig: MigState, target: ManagedInstance, now: float, cfg: Settings
) -> str:
    """Empty when one more heal fits the budget, else why not."""
    busy_fleet = sum(
        1
        for m in fleet
        for member in m.members
        if member is not target and is_healing(member, now, cfg.heal_settle)
    )
    if busy_fleet >= cfg.heal_max_concurrent:
        limit = cfg.heal_max_concurrent
        return f"{busy_fleet} instance(s) healing fleet-wide, FLEET_HEAL_MAX_CONCURRENT={limit}"
    if cfg.heal_max_percent is not None:
        allowed = max(1, math.floor(mig.target_size * cfg.heal_max_percent / 100))
        busy_mig = sum(1 for m in mig.members if m is not target and is_healing(m, now, cfg.heal_settle))
        if busy_mig >= allowed:
            return (
                f"{busy_mig} instance(s) healing in {mig.ref.name}, "
                f"FLEET_HEAL_MAX_PERCENT={cfg.heal_max_percent:g}% of {mig.target_size} allows {allowed}"
            )
    return ""


def _heal_request(incident: Incident, step: str, at: int, ref: MigRef, member: ManagedInstance) -> str:
    """The requestId of one heal attempt; its time is the mark's, so a replay of it repeats the id
    and a later attempt (past the window) is a new request that Compute does not deduplicate away."""
    return request_id("heal", incident.incident_id, step, str(at), str(ref), member.name)


def decide_heal(
    incident: Incident,
    target: InstanceTarget,
    fleet: Sequence[MigState],
    lock: contract.Lock | None,
    now: float,
    cfg: Settings,
) -> Decision:
    """The autoheal ladder for one incident: reset, then recreate if a reset did not help.

    `lock` is the fleet lock as read from the MIG's project (None: absent or unreadable).
    """
    found = locate(target, fleet)
    if found is None:
        where = target.instance_id or target.name
        migs = ", ".join(str(m.ref) for m in fleet) or "none configured"
        return Decision(
            "none", "outside-migs", f"instance {where} is not a member of the managed MIGs ({migs})"
        )
    mig, member = found
    key = contract.incident_key(incident.incident_id)
    mark = parse_heal_mark(member.labels.get(contract.HEAL_LABEL))

    def none(reason: str, detail: str) -> Decision:
        return Decision("none", reason, detail, mig=mig.ref, member=member)

    if incident.state == "closed":
        if mark is not None and mark.key == key:
            return none("closed-after-heal", f"incident closed after {mark.step} of {member.name}")
        if member.labels.get(contract.HEAL_CLOSED_LABEL) == key:
            return none("closed-already-marked", "closed incident already recorded on the instance")
        labels = {**member.labels, contract.HEAL_CLOSED_LABEL: key}
        return Decision(
            "mark-closed",
            "closed-before-action",
            "incident closed with no heal on record; marking it so a late open is ignored",
            mig=mig.ref,
            member=member,
            request_id=request_id("heal-closed", incident.incident_id, str(mig.ref), member.name),
            labels=labels,
        )

    rollout = member.labels.get(contract.ROLLOUT_LABEL)
    stale = ""
    if rollout:
        if rollout_mark_holds(member, lock, now):
            return none("under-rollout", f"{member.name} is being updated by rollout {rollout}")
        stale = f"; ignoring the stale {contract.ROLLOUT_LABEL}={rollout} mark (that rollout holds no lock)"
    if contract.is_held(lock, datetime.fromtimestamp(now, UTC)):
        assert lock is not None
        holder = f" by {lock.owner}" + (f" for rollout {lock.rollout_id}" if lock.rollout_id else "")
        return none("fleet-locked", f"the fleet lock is held{holder} (a rollout or maintenance is running)")
    if member.current_action != "NONE":
        return none("action-running", f"the MIG is already {member.current_action} {member.name}")
    if member.labels.get(contract.HEAL_CLOSED_LABEL) == key:
        return none("closed-before-open", "this incident's close arrived before its open")
    # A redelivery passes the same checks as a first delivery: nothing below trusts the mark alone.
    if member.status in TRANSITIONAL_STATUS:
        return none("transitioning", f"{member.name} is {member.status}")
    if member.created is None:
        return none("action-running", f"{member.name} is still being created")
    age = now - member.created
    if age < cfg.heal_initial_delay:
        return none(
            "too-young",
            f"{member.name} is {age:.0f}s old, FLEET_HEAL_INITIAL_DELAY={cfg.heal_initial_delay}s",
        )
    own = mark is not None and mark.key == key
    if mark is not None and not own and now - mark.at < cfg.heal_settle:
        return none("settling", f"{mark.step} of {member.name} {now - mark.at:.0f}s ago is still settling")
    budget = _budget_left(fleet, mig, member, now, cfg)
    if budget:
        return none("budget-exhausted", budget)
    if own and mark is not None:
        since = now - mark.at
        if since < min(cfg.heal_settle, REQUEST_ID_MEMORY):
            # Our own delivery wrote the mark moments ago (and may have died before acting): send the
            # same request again while Compute surely still remembers its id, so it runs at most once.
            return Decision(
                mark.step,
                "replay",
                f"redelivery: repeating {mark.step} with the same request id{stale}",
                mig=mig.ref,
                member=member,
                request_id=_heal_request(incident, mark.step, mark.at, mig.ref, member),
            )
        if since < cfg.heal_window:
            # A late redelivery or a renotification of the same incident: its step ran and has
            # settled. Escalation comes with a new incident (the escalation policy), not a repeat.
            return none(
                "already-handled",
                f"{mark.step} of {member.name} for this incident {since:.0f}s ago; a new incident "
                f"within FLEET_HEAL_WINDOW={cfg.heal_window}s escalates",
            )

    if member.status in STOPPED_STATUS:
        step, reason, detail = (
            "recreate",
            "not-running",
            f"{member.name} is {member.status}: reset cannot help",
        )
    elif mark is not None and now - mark.at < cfg.heal_window:
        step, reason = "recreate", "escalate"
        detail = f"still failing {now - mark.at:.0f}s after {mark.step} (window {cfg.heal_window}s)"
    else:
        step, reason, detail = "reset", "first-step", f"reset {member.name}"
    return Decision(
        step,
        reason,
        detail + stale,
        mig=mig.ref,
        member=member,
        request_id=_heal_request(incident, step, int(now), mig.ref, member),
        labels={**member.labels, contract.HEAL_LABEL: heal_mark(step, now, key)},
    )


# --- scale -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScaleIntent:
    direction: str  # out | in
    step: int
    minimum: int
    maximum: int
    notes: tuple[str, ...] = ()  # policy labels clamped to the configured bounds (logged as warnings)


_DIRECTION = f"{contract.POLICY_SCALE_DIRECTION_LABEL}=out or {contract.POLICY_SCALE_DIRECTION_LABEL}=in"


def _label_int(labels: Mapping[str, str], key: str, default: int) -> int:
    raw = labels.get(key)
    if raw is None or raw == "":
        return default
    if not _WHOLE.fullmatch(raw):
        raise ValueError(
            f"policy label {key}={raw[:64]!r} is not a whole number (ASCII digits, e.g. {key}=2)"
        )
    return int(raw)


def scale_intent(incident: Incident, cfg: Settings) -> ScaleIntent | Decision:
    """Direction, step and bounds from the policy's labels, inside the configured bounds.

    Labels may narrow FLEET_SCALE_MIN/MAX, never widen them: whoever can label an alert policy must
    not be able to resize a MIG beyond what the function was deployed to allow.
    """
    labels = incident.policy_user_labels
    if labels.get(contract.POLICY_ACTION_LABEL) != contract.POLICY_ACTION_SCALE:
        return Decision(
            "none",
            "not-scale-policy",
            f"policy {incident.policy_name!r} is not labelled for scaling: it needs the user label "
            f"{contract.POLICY_ACTION_LABEL}={contract.POLICY_ACTION_SCALE} "
            f"(has {_shown(labels, contract.POLICY_ACTION_LABEL)})",
        )
    if incident.state != "open":
        return Decision("none", "closed", "scaling acts on open incidents only")
    direction = labels.get(contract.POLICY_SCALE_DIRECTION_LABEL, "")
    if direction not in ("out", "in"):
        return Decision(
            "none",
            "bad-policy-labels",
            f"policy {incident.policy_name!r} needs the user label {_DIRECTION} "
            f"(has {_shown(labels, contract.POLICY_SCALE_DIRECTION_LABEL)})",
        )
    try:
        step = _label_int(labels, contract.POLICY_SCALE_STEP_LABEL, cfg.scale_step)
        minimum = _label_int(labels, contract.POLICY_SCALE_MIN_LABEL, cfg.scale_min)
        maximum = _label_int(labels, contract.POLICY_SCALE_MAX_LABEL, cfg.scale_max)
    except ValueError as exc:
        return Decision("none", "bad-policy-labels", str(exc))
    notes = []
    if minimum < cfg.scale_min:
        notes.append(
            f"{contract.POLICY_SCALE_MIN_LABEL}={minimum} is below FLEET_SCALE_MIN={cfg.scale_min}: "
            f"using {cfg.scale_min}"
        )
        minimum = cfg.scale_min
    if maximum > cfg.scale_max:
        notes.append(
            f"{contract.POLICY_SCALE_MAX_LABEL}={maximum} is above FLEET_SCALE_MAX={cfg.scale_max}: "
            f"using {cfg.scale_max}"
        )
        maximum = cfg.scale_max
    if step < 1 or maximum < minimum:
        return Decision(
            "none",
            "bad-policy-labels",
            f"{contract.POLICY_SCALE_STEP_LABEL}={step}, bounds [{minimum}, {maximum}] within "
            f"FLEET_SCALE_MIN/MAX [{cfg.scale_min}, {cfg.scale_max}] make no sense: labels may only "
            f"narrow the configured bounds, with a step >= 1",
        )
    return ScaleIntent(direction, step, minimum, maximum, tuple(notes))


def _present(*values: str) -> set[str]:
    return {v for v in values if v}


def choose_mig(incident: Incident, migs: Sequence[MigRef]) -> MigRef | Decision:
    """The configured MIG a scaling incident is about, or outside-migs.

    Every project, location and MIG name the incident carries (policy label, resource and metric
    labels) must agree with one configured MIG; an incident naming none of them falls back to the
    only configured MIG. Whether a named instance is a member is checked on live state (decide_scale).
    """
    res, met = incident.resource_labels, incident.metric_labels
    names = _present(
        incident.policy_user_labels.get(contract.POLICY_MIG_LABEL, ""),
        res.get("instance_group_manager_name", ""),
        res.get("instance_group_name", ""),
        met.get("instance_group_name", ""),
        met.get("instance_group_manager_name", ""),
    )
    projects = _present(res.get("project_id", ""))
    locations = _present(res.get("location", ""), res.get("zone", ""), res.get("region", ""))
    described = ", ".join(
        f"{what} {'/'.join(sorted(v))}"
        for what, v in (("project", projects), ("location", locations), ("MIG", names))
        if v
    )
    if len(names) > 1:
        return Decision("none", "outside-migs", f"incident names several MIGs ({described})")
    matches = [
        m
        for m in migs
        if all(p == m.project for p in projects)
        and all(m.covers(loc) for loc in locations)
        and all(n == m.name for n in names)
    ]
    if len(matches) == 1 and (names or len(migs) == 1):
        return matches[0]
    managed = ", ".join(str(m) for m in migs) or "none configured"
    if not matches:
        return Decision(
            "none",
            "outside-migs",
            f"incident ({described or 'no MIG named'}) is not one of the managed MIGs ({managed})",
        )
    labels = " or ".join(f"{contract.POLICY_MIG_LABEL}={m.name}" for m in matches)
    return Decision(
        "none",
        "ambiguous-mig",
        f"incident ({described or 'no MIG named'}) matches {len(matches)} managed MIGs; "
        f"label the policy {labels}",
    )


def _scale_instance_outside(incident: Incident, mig: MigState) -> str:
    """Why the instance a scaling incident names is not a member of `mig` ("" when none is named)."""
    res, met = incident.resource_labels, incident.metric_labels
    instance_id = res.get("instance_id", "")
    name = met.get("instance_name", "") or res.get("instance_name", "")
    if not instance_id and not name:
        return ""
    zone = res.get("zone", "")
    if any(_member_matches(m, zone, instance_id, name) for m in mig.members):
        return ""
    return f"instance {instance_id or name} is not a member of {mig.ref}"


def decide_scale(
    incident: Incident, intent: ScaleIntent, mig: MigState, lock_held: bool, now: float, cfg: Settings
) -> Decision:
    """One scaling step within bounds, after cooldown and scale-in stabilization from live state."""
    ref = mig.ref

    def none(reason: str, detail: str) -> Decision:
        return Decision("none", reason, detail, mig=ref)

    outside = _scale_instance_outside(incident, mig)
    if outside:
        return none("outside-migs", outside)

    if intent.direction == "in" and lock_held:
        return none("fleet-locked", "never scale in while the fleet lock is held")
    busy = [m for m in mig.members if m.current_action != "NONE" or m.created is None]
    if busy:
        return none("mig-busy", f"{len(busy)} instance(s) busy ({busy[0].name}: {busy[0].current_action})")
    if len(mig.members) != mig.target_size:
        return none("mig-busy", f"{len(mig.members)} instances for target size {mig.target_size}")
    created = [m.created for m in mig.members if m.created is not None]
    if created:
        newest_age = now - max(created)
        if newest_age < cfg.scale_cooldown:
            return none(
                "cooldown", f"newest instance is {newest_age:.0f}s old, cooldown {cfg.scale_cooldown}s"
            )
        if intent.direction == "in" and newest_age < cfg.scale_in_stabilization:
            return none(
                "stabilizing",
                f"newest instance is {newest_age:.0f}s old, "
                f"scale-in stabilization {cfg.scale_in_stabilization}s",
            )
    rid = request_id("scale", incident.incident_id, incident.state, str(ref), intent.direction)
    size = mig.target_size
    auto = mig.autoscaler
    if auto is not None and auto.mode != "OFF":
        if intent.direction == "out":
            new_min = max(auto.min_replicas, min(intent.maximum, size + intent.step))
            new_max = max(auto.max_replicas, new_min)
        else:
            new_max = min(auto.max_replicas, max(intent.minimum, size - intent.step))
            new_min = min(auto.min_replicas, new_max)
        if (new_min, new_max) == (auto.min_replicas, auto.max_replicas):
            return none("at-bound", f"autoscaler {auto.name} already [{new_min}, {new_max}]")
        return Decision(
            "autoscaler",
            f"scale-{intent.direction}",
            f"autoscaler {auto.name} [{auto.min_replicas}, {auto.max_replicas}] -> [{new_min}, {new_max}]",
            mig=ref,
            request_id=rid,
            new_min=new_min,
            new_max=new_max,
        )
    if intent.direction == "out":
        new_size = max(size, min(intent.maximum, size + intent.step))
    else:
        new_size = min(size, max(intent.minimum, size - intent.step))
    if new_size == size:
        return none("at-bound", f"size {size} is at the bound [{intent.minimum}, {intent.maximum}]")
    return Decision(
        "resize",
        f"scale-{intent.direction}",
        f"{ref.name} {size} -> {new_size}",
        mig=ref,
        request_id=rid,
        new_size=new_size,
    )
