"""scale through functions-framework's test client, against the local Compute endpoint."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from functions.fleet_contract import LOCK_METADATA_KEY, FleetEvent, Lock, lock_to_json
from tests.functions.conftest import EVENTS, MIG, PROJECT, ZONE, encode, incident

pytestmark = pytest.mark.functions


def scale_payload(incident_id: str, direction: str, state: str = "open", **labels: str) -> bytes:
    policy_labels = {"fleet-action": "scale", "fleet-scale-direction": direction, **labels}
    return encode(
        incident(
            incident_id,
            state,
            labels=policy_labels,
            resource_type="instance_group",
            resource_labels={"instance_group_name": MIG, "location": ZONE},
            policy=f"latency-{direction}",
        )
    )


def target_size(compute, mig: str = MIG) -> int:
    return int(compute.backend.igm(PROJECT, ZONE, mig)["targetSize"])


def wait_idle(compute, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not compute.backend.idle() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert compute.backend.idle()


def age_all(compute, seconds: float, mig: str = MIG) -> None:
    for name in compute.backend.member_names(PROJECT, ZONE, mig):
        compute.backend.update_instance(PROJECT, ZONE, name, age=seconds)


def test_scale_out_three_deliveries_one_resize(compute, load_function, pubsub):
    fn = load_function("scale")
    data = scale_payload("0.scale-out", "out")
    for _ in range(3):
        assert fn.post(data).status_code == 200
    assert len(compute.ops("compute.instanceGroupManagers.resize")) == 1
    assert target_size(compute) == 5
    reasons = [(d["decision"], d["reason"]) for d in fn.decisions()]
    assert reasons[0] == ("resize", "scale-out")
    assert all(d == "none" for d, _ in reasons[1:]), "later deliveries see the MIG busy or cooling down"
    (message,) = pubsub.messages(EVENTS)
    event = FleetEvent.from_message(message.data, message.attributes)
    assert (event.kind, event.action, event.mig) == ("scale", "resize", MIG)


def test_request_id_dedupes_a_redelivery_after_the_mig_settled(compute, load_function):
    """With no cooldown and instant creation, only Compute's requestId stops a second resize."""
    fn = load_function("scale", FLEET_SCALE_COOLDOWN="0")
    data = scale_payload("0.scale-rid", "out")
    fn.post(data)
    wait_idle(compute)
    fn.post(data)
    resizes = compute.api.calls("instanceGroupManagers.resize")
    assert [c.query["size"] for c in resizes] == ["5", "6"], "the second delivery asked for one more"
    assert resizes[0].request_id == resizes[1].request_id
    assert len(compute.ops("compute.instanceGroupManagers.resize")) == 1
    assert target_size(compute) == 5, "Compute ran the request id once"


def test_bounds_from_policy_labels(compute, load_function, pubsub):
    fn = load_function("scale")
    fn.post(scale_payload("0.scale-max", "out", **{"fleet-scale-max": "4"}))
    assert compute.mutations() == []
    (decision,) = fn.decisions()
    assert (decision["decision"], decision["reason"]) == ("none", "at-bound")
    (message,) = pubsub.messages(EVENTS)
    assert FleetEvent.from_message(message.data, message.attributes).result == "skipped"


def test_step_from_policy_labels(compute, load_function):
    fn = load_function("scale")
    fn.post(scale_payload("0.scale-step", "out", **{"fleet-scale-step": "3", "fleet-scale-max": "6"}))
    assert target_size(compute) == 6


def test_cooldown_after_recent_creation(compute, load_function):
    compute.backend.update_instance(PROJECT, ZONE, compute.member(0)["name"], age=30)
    fn = load_function("scale")
    fn.post(scale_payload("0.scale-cool", "out"))
    assert compute.mutations() == []
    assert fn.decisions()[0]["reason"] == "cooldown"


def test_scale_in_waits_for_stabilization(compute, load_function):
    compute.backend.update_instance(PROJECT, ZONE, compute.member(0)["name"], age=300)
    fn = load_function("scale")
    fn.post(scale_payload("0.scale-in-stab", "in"))
    assert compute.mutations() == []
    assert fn.decisions()[0]["reason"] == "stabilizing"
    age_all(compute, 3600)
    fn.post(scale_payload("0.scale-in-ok", "in"))
    assert target_size(compute) == 3


def test_never_scale_in_while_the_lock_is_held(compute, load_function):
    now = datetime.now(UTC)
    lock = Lock("local", "ops@example.com", "rollout", "r-2", now, now + timedelta(minutes=5))
    compute.backend.add_project(PROJECT, {LOCK_METADATA_KEY: lock_to_json(lock)})
    fn = load_function("scale")
    fn.post(scale_payload("0.scale-in-lock", "in"))
    assert compute.mutations() == []
    assert fn.decisions()[0]["reason"] == "fleet-locked"
    fn.post(scale_payload("0.scale-out-lock", "out"))
    assert target_size(compute) == 5, "scaling out is allowed during a rollout"


def test_autoscaler_bounds_move_instead_of_resizing(compute, load_function):
    compute.backend.add_autoscaler(PROJECT, ZONE, "dify-as", MIG, min_replicas=2, max_replicas=4)
    fn = load_function("scale")
    fn.post(scale_payload("0.scale-as", "out"))
    assert compute.api.calls("instanceGroupManagers.resize") == []
    (patch,) = compute.api.calls("autoscalers.patch")
    assert patch.query["autoscaler"] == "dify-as"
    policy = compute.backend.autoscaler(PROJECT, ZONE, "dify-as")["autoscalingPolicy"]
    assert (policy["minNumReplicas"], policy["maxNumReplicas"]) == (5, 5)
    assert policy["coolDownPeriodSec"] == 60, "only the bounds were patched"
    assert target_size(compute) == 5, "the autoscaler moved the group into its new bounds"
    decision = fn.decisions()[0]
    assert (decision["decision"], decision["reason"]) == ("autoscaler", "scale-out")


def test_autoscaler_scale_in_lowers_the_maximum(compute, load_function):
    compute.backend.add_autoscaler(PROJECT, ZONE, "dify-as", MIG, min_replicas=4, max_replicas=8)
    fn = load_function("scale")
    fn.post(scale_payload("0.scale-as-in", "in"))
    policy = compute.backend.autoscaler(PROJECT, ZONE, "dify-as")["autoscalingPolicy"]
    assert (policy["minNumReplicas"], policy["maxNumReplicas"]) == (3, 3)
    assert target_size(compute) == 3


def test_autoscaler_off_means_resize(compute, load_function):
    compute.backend.add_autoscaler(PROJECT, ZONE, "dify-as", MIG, min_replicas=1, max_replicas=8, mode="OFF")
    fn = load_function("scale")
    fn.post(scale_payload("0.scale-as-off", "out"))
    assert compute.api.calls("autoscalers.patch") == []
    assert target_size(compute) == 5


def test_closed_incident_does_not_scale(compute, load_function):
    fn = load_function("scale")
    fn.post(scale_payload("0.scale-closed", "out", state="closed"))
    assert compute.api.calls() == []
    assert fn.decisions()[0]["reason"] == "closed"


def test_mig_outside_the_configuration_is_refused(compute, load_function):
    fn = load_function("scale")
    fn.post(scale_payload("0.scale-other", "out", **{"fleet-mig": "other-mig"}))
    assert compute.api.calls() == []
    assert fn.decisions()[0]["reason"] == "outside-migs"


def test_bad_policy_labels_are_reported(compute, load_function):
    fn = load_function("scale")
    fn.post(scale_payload("0.scale-bad", "sideways"))
    fn.post(scale_payload("0.scale-bad2", "out", **{"fleet-scale-step": "two"}))
    assert [d["reason"] for d in fn.decisions()] == ["bad-policy-labels", "bad-policy-labels"]
    assert compute.api.calls() == []


def test_transient_error_is_retried_and_resizes_once(compute, load_function):
    compute.api.inject("instanceGroupManagers.resize", status=503)
    fn = load_function("scale")
    data = scale_payload("0.scale-503", "out")
    assert fn.post(data).status_code == 500
    assert fn.post(data).status_code == 200
    assert len(compute.ops("compute.instanceGroupManagers.resize")) == 1
    assert target_size(compute) == 5


def test_policy_labels_cannot_widen_the_configured_bounds(compute, load_function):
    """FLEET_SCALE_MIN/MAX are 1/6: a label max of 50 stops at 6, a label min of 0 stops at 1; both logged."""
    fn = load_function("scale", FLEET_SCALE_COOLDOWN="0", FLEET_SCALE_IN_STABILIZATION="0")
    fn.post(scale_payload("0.scale-wide", "out", **{"fleet-scale-max": "50", "fleet-scale-step": "46"}))
    assert target_size(compute) == 6
    wait_idle(compute)
    fn.post(scale_payload("0.scale-low", "in", **{"fleet-scale-min": "0", "fleet-scale-step": "6"}))
    assert target_size(compute) == 1
    clamped = [r for r in fn.records() if r.get("reason") == "label-clamped"]
    assert [r["severity"] for r in clamped] == ["WARNING", "WARNING"]
    assert "fleet-scale-max=50" in clamped[0]["message"] and "FLEET_SCALE_MAX=6" in clamped[0]["message"]
    assert "fleet-scale-min=0" in clamped[1]["message"] and "FLEET_SCALE_MIN=1" in clamped[1]["message"]


def instance_scale_payload(incident_id: str, **res: str) -> bytes:
    doc = incident(incident_id, labels={"fleet-action": "scale", "fleet-scale-direction": "out"})
    doc["incident"]["resource"]["labels"] = res
    return encode(doc)


def test_scale_refuses_incidents_about_other_things(compute, load_function):
    """One configured MIG: incidents about anything else resize nothing (autoheal's outside-migs)."""
    compute.backend.add_mig(PROJECT, "us-central1-b", MIG, size=2, age=3600)
    member = compute.member(0)
    other = compute.member(0, mig="other-mig")
    fn = load_function("scale")
    payloads = [
        instance_scale_payload("0.o-project", project_id="other-proj", zone=ZONE, instance_id=member["id"]),
        instance_scale_payload(
            "0.o-zone", project_id=PROJECT, zone="us-central1-b", instance_id=member["id"]
        ),
        instance_scale_payload("0.o-unmanaged", project_id=PROJECT, zone=ZONE, instance_id=other["id"]),
        instance_scale_payload(
            "0.o-samename", project_id=PROJECT, location="us-central1-b", instance_group_name=MIG
        ),
        instance_scale_payload("0.o-unknown", project_id=PROJECT, zone=ZONE, instance_id="424242"),
        scale_payload("0.o-contradict", "out", **{"fleet-mig": "other-mig"}),
    ]
    for data in payloads:
        assert fn.post(data).status_code == 200
    assert compute.mutations() == []
    assert [d["reason"] for d in fn.decisions()] == ["outside-migs"] * len(payloads)
    fn.post(instance_scale_payload("0.o-member", project_id=PROJECT, zone=ZONE, instance_id=member["id"]))
    assert target_size(compute) == 5, "an incident about a member of the configured MIG still scales it"
