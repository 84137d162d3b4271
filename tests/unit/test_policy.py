"""The pure decisions of autoheal and scale, on hand-built snapshots of live state."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

sys.path.append(str(Path(__file__).resolve().parents[2] / "functions"))  # as the Functions runtime does

import fleet_contract as contract
import policy
from incidents import Incident
from policy import Autoscaler, Decision, InstanceTarget, ManagedInstance, MigState, ScaleIntent
from settings import MigRef, load

NOW = 1_800_000_000.0
REF = MigRef("proj-a1", "us-central1-a", "web")
OTHER = MigRef("proj-a1", "us-central1-a", "batch")
CFG = load(
    {
        "FLEET_MIGS": f"{REF},{OTHER}",
        "FLEET_HEAL_MAX_CONCURRENT": "2",
        "FLEET_HEAL_INITIAL_DELAY": "300",
        "FLEET_HEAL_SETTLE": "120",
        "FLEET_HEAL_WINDOW": "1800",
        "FLEET_SCALE_MIN": "2",
        "FLEET_SCALE_MAX": "6",
        "FLEET_SCALE_COOLDOWN": "120",
        "FLEET_SCALE_IN_STABILIZATION": "600",
    }
)


def member(n: int, **kw) -> ManagedInstance:
    base = {
        "name": f"web-{n}",
        "zone": "us-central1-a",
        "id": str(1000 + n),
        "current_action": "NONE",
        "status": "RUNNING",
        "created": NOW - 3600,
        "labels": {},
        "label_fingerprint": "fp",
    }
    base.update(kw)
    return ManagedInstance(**base)


def fleet(*members: ManagedInstance, size: int | None = None) -> list[MigState]:
    web = MigState(REF, size if size is not None else len(members), tuple(members))
    return [web, MigState(OTHER, 1, (member(9, name="batch-9", id="9009"),))]


def heal_incident(state: str = "open", incident_id: str = "0.abc", **labels: str) -> Incident:
    return Incident(
        incident_id=incident_id,
        state=state,
        version="1.2",
        policy_user_labels=labels or {"fleet-action": "autoheal"},
        resource_labels={"instance_id": "1001", "zone": "us-central1-a", "project_id": "proj-a1"},
    )


def live_lock(rollout_id: str, expires_in: float = 300) -> contract.Lock:
    now = datetime.fromtimestamp(NOW, UTC)
    return contract.Lock(
        "f", "ops", "rollout", rollout_id, now - timedelta(seconds=60), now + timedelta(seconds=expires_in)
    )


def decide(inc: Incident, snapshot: list[MigState], lock: bool = False, cfg=CFG) -> Decision:
    """`lock`: the fleet lock is held by some rollout (not one that marked these instances)."""
    target = policy.heal_target(inc)
    assert isinstance(target, InstanceTarget)
    return policy.decide_heal(inc, target, snapshot, live_lock("r-other") if lock else None, NOW, cfg)


def test_first_step_is_a_reset_with_a_claim_label():
    d = decide(heal_incident(), fleet(member(1), member(2)))
    assert (d.action, d.reason, d.member.name) == ("reset", "first-step", "web-1")
    assert d.labels[contract.HEAL_LABEL] == f"reset-{int(NOW)}-{contract.incident_key('0.abc')}"
    assert d.request_id == policy.request_id("heal", "0.abc", "reset", str(int(NOW)), str(REF), "web-1")


def test_request_ids_are_stable_uuids():
    a = policy.request_id("x", "y")
    assert a == policy.request_id("x", "y") != policy.request_id("x", "z")
    assert len(a) == 36 and a.count("-") == 4


def test_redelivery_replays_the_same_request():
    mark = policy.heal_mark("reset", NOW - 5, contract.incident_key("0.abc"))
    d = decide(heal_incident(), fleet(member(1, labels={contract.HEAL_LABEL: mark})))
    assert (d.action, d.reason, d.labels) == ("reset", "replay", None)
    assert d.request_id == policy.request_id("heal", "0.abc", "reset", str(int(NOW - 5)), str(REF), "web-1")


def test_escalates_to_recreate_when_a_reset_did_not_help():
    mark = policy.heal_mark("reset", NOW - 600, contract.incident_key("0.earlier"))
    d = decide(heal_incident(), fleet(member(1, labels={contract.HEAL_LABEL: mark})))
    assert (d.action, d.reason) == ("recreate", "escalate")


def test_a_reset_outside_the_window_starts_the_ladder_again():
    mark = policy.heal_mark("reset", NOW - 4000, contract.incident_key("0.earlier"))
    assert decide(heal_incident(), fleet(member(1, labels={contract.HEAL_LABEL: mark}))).action == "reset"


def test_settling_after_a_recent_heal_of_another_incident():
    mark = policy.heal_mark("reset", NOW - 30, contract.incident_key("0.earlier"))
    assert decide(heal_incident(), fleet(member(1, labels={contract.HEAL_LABEL: mark}))).reason == "settling"


@pytest.mark.parametrize(
    ("changes", "lock", "reason"),
    [
        ({"labels": {contract.ROLLOUT_LABEL: "r-other"}}, True, "under-rollout"),
        ({"labels": {contract.ROLLOUT_LABEL: "r-1"}}, True, "fleet-locked"),
        ({}, True, "fleet-locked"),
        ({"current_action": "RECREATING"}, False, "action-running"),
        ({"created": NOW - 60}, False, "too-young"),
        ({"status": "STAGING"}, False, "transitioning"),
        ({"created": None}, False, "action-running"),
    ],
)
def test_reasons_to_leave_an_instance_alone(changes, lock, reason):
    d = decide(heal_incident(), fleet(member(1, **changes)), lock=lock)
    assert (d.action, d.reason) == ("none", reason)


def test_stopped_instance_is_recreated():
    assert decide(heal_incident(), fleet(member(1, status="TERMINATED"))).reason == "not-running"


def test_budget_counts_healing_instances_fleet_wide():
    recent = policy.heal_mark("reset", NOW - 10, contract.incident_key("0.x"))
    busy = [member(2, labels={contract.HEAL_LABEL: recent}), member(3, current_action="RESTARTING")]
    d = decide(heal_incident(), fleet(member(1), *busy))
    assert (d.action, d.reason) == ("none", "budget-exhausted")
    # an old mark no longer counts
    old = policy.heal_mark("reset", NOW - 500, contract.incident_key("0.x"))
    assert (
        decide(heal_incident(), fleet(member(1), member(2, labels={contract.HEAL_LABEL: old}))).action
        == "reset"
    )


def test_budget_percentage_of_the_mig():
    cfg = load({"FLEET_MIGS": str(REF), "FLEET_HEAL_MAX_CONCURRENT": "10", "FLEET_HEAL_MAX_PERCENT": "20"})
    members = [member(i) for i in range(1, 11)]
    members[4] = member(5, current_action="RECREATING")
    d = policy.decide_heal(
        heal_incident(), InstanceTarget("", "", "1001", ""), fleet(*members), None, NOW, cfg
    )
    assert d.action == "reset", "20% of 10 allows 2 at once"
    members[5] = member(6, current_action="RECREATING")
    d = policy.decide_heal(
        heal_incident(), InstanceTarget("", "", "1001", ""), fleet(*members), None, NOW, cfg
    )
    assert d.reason == "budget-exhausted"


def test_closed_incident_paths():
    key = contract.incident_key("0.abc")
    healed = member(1, labels={contract.HEAL_LABEL: policy.heal_mark("reset", NOW - 50, key)})
    assert decide(heal_incident("closed"), fleet(healed)).reason == "closed-after-heal"
    d = decide(heal_incident("closed"), fleet(member(1)))
    assert (d.action, d.labels) == ("mark-closed", {contract.HEAL_CLOSED_LABEL: key})
    marked = member(1, labels={contract.HEAL_CLOSED_LABEL: key})
    assert decide(heal_incident("closed"), fleet(marked)).reason == "closed-already-marked"
    assert decide(heal_incident("open"), fleet(marked)).reason == "closed-before-open"


def test_target_resolution():
    assert policy.heal_target(heal_incident(**{"team": "x"})).reason == "not-heal-policy"
    bare = Incident("0.a", "open", "1.2", policy_user_labels={"fleet-action": "autoheal"})
    assert policy.heal_target(bare).reason == "no-instance"
    outside = Incident(
        "0.a",
        "open",
        "1.2",
        policy_user_labels={"fleet-action": "autoheal"},
        resource_labels={"instance_id": "777", "zone": "us-central1-a"},
    )
    assert decide(outside, fleet(member(1))).reason == "outside-migs"
    by_name = InstanceTarget("", "", "", "batch-9")
    assert policy.locate(by_name, fleet(member(1)))[1].id == "9009"
    wrong_zone = InstanceTarget("", "europe-west1-b", "1001", "")
    assert policy.locate(wrong_zone, fleet(member(1))) is None
    wrong_project = InstanceTarget("other-proj", "", "1001", "")
    assert policy.locate(wrong_project, fleet(member(1))) is None


def test_heal_mark_parsing():
    assert policy.parse_heal_mark("reset-123-0123456789ab") == policy.HealMark("reset", 123, "0123456789ab")
    for bad in (None, "", "reboot-1-0123456789ab", "reset-x-0123456789ab", "reset-1-XYZ"):
        assert policy.parse_heal_mark(bad) is None


# --- scale -----------------------------------------------------------------------------------------


def scale_incident(direction: str = "out", state: str = "open", **extra: str) -> Incident:
    labels = {"fleet-action": "scale", "fleet-scale-direction": direction, **extra}
    return Incident(
        "0.s",
        state,
        "1.2",
        policy_user_labels=labels,
        resource_labels={"instance_group_name": "web", "location": "us-central1-a"},
    )


def mig(
    size: int = 3, ages: tuple[float, ...] = (3600, 3600, 3600), autoscaler: Autoscaler | None = None
) -> MigState:
    members = tuple(member(i, created=NOW - age) for i, age in enumerate(ages))
    return MigState(REF, size, members, autoscaler)


def scale(inc: Incident, state: MigState, lock: bool = False) -> Decision:
    intent = policy.scale_intent(inc, CFG)
    assert isinstance(intent, ScaleIntent)
    return policy.decide_scale(inc, intent, state, lock, NOW, CFG)


def test_scale_out_and_in_within_bounds():
    d = scale(scale_incident("out"), mig())
    assert (d.action, d.new_size, d.reason) == ("resize", 4, "scale-out")
    d = scale(scale_incident("in"), mig())
    assert (d.action, d.new_size) == ("resize", 2)
    assert scale(scale_incident("in"), mig(2, (3600, 3600))).reason == "at-bound"
    six = mig(6, (3600,) * 6)
    assert scale(scale_incident("out"), six).reason == "at-bound"


def test_scale_out_never_shrinks_a_group_above_its_bound():
    big = mig(8, (3600,) * 8)
    assert scale(scale_incident("out"), big).reason == "at-bound"


def test_scale_label_overrides():
    d = scale(scale_incident("out", **{"fleet-scale-step": "2", "fleet-scale-max": "10"}), mig())
    assert d.new_size == 5
    intent = policy.scale_intent(
        scale_incident("out", **{"fleet-scale-min": "5", "fleet-scale-max": "3"}), CFG
    )
    assert isinstance(intent, Decision) and intent.reason == "bad-policy-labels"


def test_cooldown_stabilization_and_busy():
    assert scale(scale_incident("out"), mig(ages=(3600, 3600, 60))).reason == "cooldown"
    assert scale(scale_incident("in"), mig(ages=(3600, 3600, 300))).reason == "stabilizing"
    assert scale(scale_incident("out"), mig(ages=(3600, 3600, 300))).action == "resize"
    creating = MigState(REF, 3, (member(1), member(2), member(3, current_action="CREATING")))
    assert scale(scale_incident("out"), creating).reason == "mig-busy"
    assert scale(scale_incident("out"), mig(size=4)).reason == "mig-busy"


def test_lock_blocks_scale_in_only():
    assert scale(scale_incident("in"), mig(), lock=True).reason == "fleet-locked"
    assert scale(scale_incident("out"), mig(), lock=True).action == "resize"


def test_autoscaler_bounds():
    auto = Autoscaler("web-as", 2, 4, "ON")
    d = scale(scale_incident("out"), mig(autoscaler=auto))
    assert (d.action, d.new_min, d.new_max) == ("autoscaler", 4, 4)
    d = scale(scale_incident("in"), mig(autoscaler=auto))
    assert (d.action, d.new_min, d.new_max) == ("autoscaler", 2, 2)
    off = Autoscaler("web-as", 2, 4, "OFF")
    assert scale(scale_incident("out"), mig(autoscaler=off)).action == "resize"
    pinned = Autoscaler("web-as", 6, 6, "ON")
    assert scale(scale_incident("out"), mig(6, (3600,) * 6, autoscaler=pinned)).reason == "at-bound"


def test_choose_mig():
    migs = [REF, OTHER]
    assert policy.choose_mig(scale_incident(), migs) == REF
    named = Incident("0.s", "open", "1.2", policy_user_labels={"fleet-action": "scale", "fleet-mig": "batch"})
    assert policy.choose_mig(named, migs) == OTHER
    unknown = scale_incident(**{"fleet-mig": "nope"})
    assert policy.choose_mig(unknown, migs).reason == "outside-migs"
    anonymous = Incident("0.s", "open", "1.2", policy_user_labels={"fleet-action": "scale"})
    assert policy.choose_mig(anonymous, migs).reason == "ambiguous-mig"
    assert policy.choose_mig(anonymous, [REF]) == REF


def test_scale_ignores_other_policies_and_closed_incidents():
    assert policy.scale_intent(heal_incident(), CFG).reason == "not-scale-policy"
    assert policy.scale_intent(scale_incident(state="closed"), CFG).reason == "closed"


# --- issue 12: scale bounds, scale scoping, stale rollout marks, replays, strict numbers ------------


def test_policy_labels_narrow_the_configured_bounds_never_widen_them():
    """Configured [2, 6]: a label max of 50 or min of 0 is clamped back into it (and said so)."""
    wide = policy.scale_intent(
        scale_incident("out", **{"fleet-scale-max": "50", "fleet-scale-step": "46"}), CFG
    )
    assert isinstance(wide, ScaleIntent) and (wide.minimum, wide.maximum) == (2, 6)
    assert any("fleet-scale-max=50" in note and "FLEET_SCALE_MAX=6" in note for note in wide.notes)
    d = scale(
        scale_incident("out", **{"fleet-scale-max": "50", "fleet-scale-step": "46"}), mig(4, (3600,) * 4)
    )
    assert (d.action, d.new_size) == ("resize", 6)
    d = scale(scale_incident("in", **{"fleet-scale-min": "0", "fleet-scale-step": "4"}), mig(4, (3600,) * 4))
    assert (d.action, d.new_size) == ("resize", 2)
    narrow = policy.scale_intent(
        scale_incident("out", **{"fleet-scale-min": "3", "fleet-scale-max": "4"}), CFG
    )
    assert isinstance(narrow, ScaleIntent) and (narrow.minimum, narrow.maximum, narrow.notes) == (3, 4, ())
    outside = policy.scale_intent(scale_incident("out", **{"fleet-scale-min": "8"}), CFG)
    assert isinstance(outside, Decision) and outside.reason == "bad-policy-labels"
    auto = Autoscaler("web-as", 2, 4, "ON")
    d = scale(
        scale_incident("out", **{"fleet-scale-max": "50", "fleet-scale-step": "40"}), mig(autoscaler=auto)
    )
    assert (d.action, d.new_min, d.new_max) == ("autoscaler", 6, 6)


def scale_on(resource: dict[str, str], **labels: str) -> Incident:
    user = {"fleet-action": "scale", "fleet-scale-direction": "out", **labels}
    return Incident("0.s", "open", "1.2", policy_user_labels=user, resource_labels=resource)


@pytest.mark.parametrize(
    "resource",
    [
        {"project_id": "proj-b2", "zone": "us-central1-a", "instance_id": "1001"},  # another project
        {"project_id": "proj-a1", "zone": "us-central1-b", "instance_id": "1001"},  # another zone
        {"project_id": "proj-a1", "location": "us-central1-a", "instance_group_name": "batch"},  # unmanaged
        {"project_id": "proj-a1", "location": "us-central1-b", "instance_group_name": "web"},  # same name
        {"project_id": "proj-a1", "zone": "us-central1-b", "location": "us-central1-a"},  # conflicting
        {"project_id": "proj-a1", "region": "europe-west1"},
    ],
)
def test_scale_refuses_incidents_about_other_things(resource):
    assert policy.choose_mig(scale_on(resource), [REF]).reason == "outside-migs"


def test_scale_refuses_a_policy_label_that_contradicts_the_resource():
    named = scale_on({"instance_group_name": "batch", "location": "us-central1-a"}, **{"fleet-mig": "web"})
    assert policy.choose_mig(named, [REF, OTHER]).reason == "outside-migs"


def test_scale_accepts_what_matches_and_checks_the_instance_is_a_member():
    inc = scale_on({"project_id": "proj-a1", "zone": "us-central1-a", "instance_id": "1001"})
    assert policy.choose_mig(inc, [REF]) == REF
    assert scale(inc, MigState(REF, 2, (member(1), member(2)))).action == "resize"
    unknown = scale_on({"project_id": "proj-a1", "zone": "us-central1-a", "instance_id": "777"})
    d = scale(unknown, MigState(REF, 2, (member(1), member(2))))
    assert (d.action, d.reason) == ("none", "outside-migs")
    by_name = scale_on({"project_id": "proj-a1", "zone": "us-central1-a"}, **{"fleet-mig": "web"})
    by_name = Incident(**{**by_name.__dict__, "metric_labels": {"instance_name": "web-9"}})
    assert scale(by_name, MigState(REF, 2, (member(1), member(2)))).reason == "outside-migs"
    regional = MigRef("proj-a1", "us-central1", "web")
    zoned = scale_on({"project_id": "proj-a1", "zone": "us-central1-c", "instance_group_name": "web"})
    assert policy.choose_mig(zoned, [regional]) == regional
    assert policy.choose_mig(scale_on({"zone": "us-east1-b"}), [regional]).reason == "outside-migs"


def test_stale_rollout_mark_does_not_block_healing():
    marked = member(1, labels={contract.ROLLOUT_LABEL: "r-dead"})
    d = policy.decide_heal(heal_incident(), InstanceTarget("", "", "1001", ""), fleet(marked), None, NOW, CFG)
    assert (d.action, d.reason) == ("reset", "first-step")
    assert "stale" in d.detail and "r-dead" in d.detail
    expired = live_lock("r-dead", expires_in=-1)
    d = policy.decide_heal(
        heal_incident(), InstanceTarget("", "", "1001", ""), fleet(marked), expired, NOW, CFG
    )
    assert d.action == "reset"
    held = live_lock("r-dead")
    d = policy.decide_heal(heal_incident(), InstanceTarget("", "", "1001", ""), fleet(marked), held, NOW, CFG)
    assert (d.action, d.reason) == ("none", "under-rollout")


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"status": "STAGING"}, "transitioning"),
        ({"created": NOW - 60}, "too-young"),
        ({"created": None}, "action-running"),
    ],
)
def test_a_redelivery_passes_the_same_checks_as_a_first_delivery(changes, reason):
    mark = policy.heal_mark("reset", NOW - 5, contract.incident_key("0.abc"))
    d = decide(heal_incident(), fleet(member(1, labels={contract.HEAL_LABEL: mark}, **changes)))
    assert (d.action, d.reason) == ("none", reason)


def test_a_redelivery_respects_the_budget():
    mark = policy.heal_mark("reset", NOW - 5, contract.incident_key("0.abc"))
    busy = [member(2, current_action="RECREATING"), member(3, current_action="RESTARTING")]
    d = decide(heal_incident(), fleet(member(1, labels={contract.HEAL_LABEL: mark}), *busy))
    assert (d.action, d.reason) == ("none", "budget-exhausted")


def test_a_late_redelivery_is_not_replayed():
    """Past the settle time Compute's requestId dedupe is not relied on: no blind repeat."""
    key = contract.incident_key("0.abc")
    late = member(1, labels={contract.HEAL_LABEL: policy.heal_mark("reset", NOW - 600, key)})
    d = decide(heal_incident(), fleet(late))
    assert (d.action, d.reason) == ("none", "already-handled")
    very_late = member(1, labels={contract.HEAL_LABEL: policy.heal_mark("recreate", NOW - 4000, key)})
    d = decide(heal_incident(), fleet(very_late))
    assert (d.action, d.reason) == ("reset", "first-step")
    first = policy.request_id("heal", "0.abc", "recreate", str(int(NOW - 4000)), str(REF), "web-1")
    assert d.request_id != first, "a new attempt is a new request, not one Compute may still dedupe"


@pytest.mark.parametrize("raw", ["²", "١٢", "3 ", "+3", "-1", "0x3", "3.0", "٣"])
def test_scale_labels_are_parsed_strictly(raw):
    d = policy.scale_intent(scale_incident("out", **{"fleet-scale-step": raw}), CFG)
    assert isinstance(d, Decision) and d.reason == "bad-policy-labels"
    assert "fleet-scale-step" in d.detail and "whole number" in d.detail


def test_missing_policy_labels_name_the_keys_and_values_expected():
    heal = policy.heal_target(Incident("0.a", "open", "1.2", policy_name="p", policy_user_labels={}))
    assert "fleet-action=autoheal" in heal.detail
    no_scale = policy.scale_intent(Incident("0.a", "open", "1.2", policy_name="p"), CFG)
    assert "fleet-action=scale" in no_scale.detail
    no_direction = policy.scale_intent(
        Incident("0.a", "open", "1.2", policy_user_labels={"fleet-action": "scale"}), CFG
    )
    assert (
        "fleet-scale-direction=out" in no_direction.detail
        and "fleet-scale-direction=in" in no_direction.detail
    )
    anonymous = Incident("0.s", "open", "1.2", policy_user_labels={"fleet-action": "scale"})
    ambiguous = policy.choose_mig(anonymous, [REF, OTHER])
    assert "fleet-mig=web" in ambiguous.detail and "fleet-mig=batch" in ambiguous.detail
