"""autoheal through functions-framework's test client, against the local Compute endpoint."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from functions.fleet_contract import (
    HEAL_CLOSED_LABEL,
    HEAL_LABEL,
    LOCK_METADATA_KEY,
    ROLLOUT_LABEL,
    FleetEvent,
    Lock,
    incident_key,
    lock_to_json,
)
from tests.functions.conftest import (
    ALERTS,
    EVENTS,
    MIG,
    PROJECT,
    PUBSUB_TYPE,
    ZONE,
    encode,
    incident,
    source_of,
)

pytestmark = pytest.mark.functions


def wait_idle(compute, timeout: float = 10.0) -> None:
    """Let scheduled transitions (reset, recreate) finish; a wait, not an assertion on time."""
    deadline = time.monotonic() + timeout
    while not compute.backend.idle() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert compute.backend.idle()


def heal_payload(compute, index: int, incident_id: str, state: str = "open", **kw) -> bytes:
    member = compute.member(index)
    return encode(incident(incident_id, state, instance_id=member["id"], **kw))


def test_same_alert_three_times_gives_one_reset(compute, load_function, pubsub):
    fn = load_function("autoheal")
    target = compute.member(0)
    data = heal_payload(compute, 0, "0.inc-dup")
    for _ in range(3):
        assert fn.post(data, message_id="same-message").status_code == 200

    resets = compute.ops("reset")
    assert len(resets) == 1, "Compute ran the reset once"
    assert {c.request_id for c in compute.api.calls("instances.reset")} == {resets[0].request_id}
    wait_idle(compute)
    assert compute.backend.resets(PROJECT, ZONE, target["name"]) == 1

    decisions = fn.decisions()
    assert [(d["decision"], d["reason"]) for d in decisions] == [
        ("reset", "first-step"),
        ("reset", "replay"),
        ("reset", "replay"),
    ]
    for d in decisions:
        assert d["event_type"] == PUBSUB_TYPE
        assert d["event_source"] == source_of(ALERTS)
        assert d["instance"] == target["name"]
        assert d["severity"] == "NOTICE"
    labels = compute.backend.instance(PROJECT, ZONE, target["name"])["labels"]
    assert labels[HEAL_LABEL].startswith("reset-") and labels[HEAL_LABEL].endswith(incident_key("0.inc-dup"))

    (message,) = pubsub.messages(EVENTS)  # published synchronously; replays publish nothing new
    event = FleetEvent.from_message(message.data, message.attributes)
    assert (event.kind, event.action, event.instance, event.incident_id) == (
        "heal",
        "reset",
        target["name"],
        "0.inc-dup",
    )


def test_open_then_closed(compute, load_function):
    fn = load_function("autoheal")
    fn.post(heal_payload(compute, 1, "0.inc-oc", "open"))
    fn.post(heal_payload(compute, 1, "0.inc-oc", "closed"))
    assert len(compute.ops("reset")) == 1
    assert [(d["decision"], d["reason"]) for d in fn.decisions()] == [
        ("reset", "first-step"),
        ("none", "closed-after-heal"),
    ]


def test_closed_before_open_does_nothing(compute, load_function):
    fn = load_function("autoheal")
    name = compute.member(2)["name"]
    fn.post(heal_payload(compute, 2, "0.inc-co", "closed"))
    fn.post(heal_payload(compute, 2, "0.inc-co", "open"))
    assert compute.ops("reset") == []
    assert [(d["decision"], d["reason"]) for d in fn.decisions()] == [
        ("mark-closed", "closed-before-action"),
        ("none", "closed-before-open"),
    ]
    assert compute.backend.instance(PROJECT, ZONE, name)["labels"][HEAL_CLOSED_LABEL] == incident_key(
        "0.inc-co"
    )


def test_instance_of_another_mig_is_refused(compute, load_function, pubsub):
    fn = load_function("autoheal")
    other = compute.backend.instance(
        PROJECT, ZONE, compute.backend.member_names(PROJECT, ZONE, "other-mig")[0]
    )
    fn.post(encode(incident("0.inc-other", instance_id=other["id"])))
    assert compute.mutations() == []
    (decision,) = fn.decisions()
    assert (decision["decision"], decision["reason"], decision["severity"]) == (
        "none",
        "outside-migs",
        "WARNING",
    )
    (message,) = pubsub.wait_messages(1, EVENTS)
    event = FleetEvent.from_message(message.data, message.attributes)
    assert (event.kind, event.action, event.result) == ("heal", "outside-migs", "refused")


def test_instance_named_by_metric_label(compute, load_function):
    fn = load_function("autoheal")
    name = compute.member(3)["name"]
    fn.post(encode(incident("0.inc-name", instance_name=name)))
    assert [op.target_link.rsplit("/", 1)[1] for op in compute.ops("reset")] == [name]


def test_budget_exhausted_fleet_wide(compute, load_function):
    busy = compute.member(0)["name"]
    mark = f"reset-{int(time.time()) - 10}-{incident_key('0.other-incident')}"
    compute.backend.update_instance(PROJECT, ZONE, busy, labels={HEAL_LABEL: mark})
    fn = load_function("autoheal")
    fn.post(heal_payload(compute, 1, "0.inc-budget"))
    assert compute.ops("reset") == []
    (decision,) = fn.decisions()
    assert decision["reason"] == "budget-exhausted"
    assert "FLEET_HEAL_MAX_CONCURRENT=1" in decision["detail"]


def test_budget_as_percentage_of_the_mig(compute, load_function):
    recreating = compute.member(0)["name"]
    compute.backend.update_instance(PROJECT, ZONE, recreating, current_action="RECREATING")
    fn = load_function("autoheal", FLEET_HEAL_MAX_CONCURRENT="5", FLEET_HEAL_MAX_PERCENT="25")
    fn.post(heal_payload(compute, 1, "0.inc-pct"))
    assert compute.ops("reset") == []
    assert fn.decisions()[0]["reason"] == "budget-exhausted"
    fn2 = load_function("autoheal", FLEET_HEAL_MAX_CONCURRENT="5", FLEET_HEAL_MAX_PERCENT="50")
    fn2.post(heal_payload(compute, 1, "0.inc-pct"))
    assert len(compute.ops("reset")) == 1


def test_instance_under_rollout_is_left_alone(compute, load_function):
    name = compute.member(1)["name"]
    compute.backend.update_instance(PROJECT, ZONE, name, labels={ROLLOUT_LABEL: "r-20261126-1"})
    now = datetime.now(UTC)
    held = Lock("local", "ops@example.com", "rollout", "r-20261126-1", now, now + timedelta(minutes=5))
    compute.backend.add_project(PROJECT, {LOCK_METADATA_KEY: lock_to_json(held)})
    fn = load_function("autoheal")
    fn.post(heal_payload(compute, 1, "0.inc-rollout"))
    assert compute.mutations() == []
    assert fn.decisions()[0]["reason"] == "under-rollout"


def test_fleet_lock_blocks_healing_until_it_expires(compute, load_function):
    now = datetime.now(UTC)
    held = Lock("local", "ops@example.com", "rollout", "r-1", now, now + timedelta(minutes=10))
    compute.backend.add_project(PROJECT, {LOCK_METADATA_KEY: lock_to_json(held)})
    fn = load_function("autoheal")
    fn.post(heal_payload(compute, 1, "0.inc-lock"))
    assert compute.ops("reset") == []
    assert fn.decisions()[-1]["reason"] == "fleet-locked"

    expired = Lock(
        "local", "ops@example.com", "rollout", "r-1", now - timedelta(hours=2), now - timedelta(hours=1)
    )
    compute.backend.add_project(PROJECT, {LOCK_METADATA_KEY: lock_to_json(expired)})
    fn.post(heal_payload(compute, 1, "0.inc-lock"))
    assert len(compute.ops("reset")) == 1


def test_garbled_lock_is_logged_and_not_held(compute, load_function):
    compute.backend.add_project(PROJECT, {LOCK_METADATA_KEY: "{not json"})
    fn = load_function("autoheal")
    fn.post(heal_payload(compute, 1, "0.inc-garbled"))
    records = fn.records()
    assert any(r["severity"] == "WARNING" and "unreadable" in r["message"] for r in records)
    assert len(compute.ops("reset")) == 1


def test_action_already_running_on_the_instance(compute, load_function):
    name = compute.member(2)["name"]
    compute.backend.update_instance(PROJECT, ZONE, name, current_action="RECREATING")
    fn = load_function("autoheal", FLEET_HEAL_MAX_CONCURRENT="4")
    fn.post(heal_payload(compute, 2, "0.inc-running"))
    assert compute.mutations() == []
    assert fn.decisions()[0]["reason"] == "action-running"


def test_young_instance_is_left_alone(compute, load_function):
    name = compute.member(3)["name"]
    compute.backend.update_instance(PROJECT, ZONE, name, age=5)
    fn = load_function("autoheal")
    fn.post(heal_payload(compute, 3, "0.inc-young"))
    assert compute.mutations() == []
    assert fn.decisions()[0]["reason"] == "too-young"


def test_ladder_reset_then_recreate_then_leave_the_new_instance_alone(compute, load_function):
    fn = load_function(
        "autoheal", FLEET_HEAL_SETTLE="0", FLEET_HEAL_MAX_CONCURRENT="4", FLEET_OPERATION_WAIT="5"
    )
    before = compute.member(0)
    fn.post(heal_payload(compute, 0, "0.inc-ladder-1"))
    fn.post(heal_payload(compute, 0, "0.inc-ladder-2"))  # still failing: a new incident on the same instance
    assert len(compute.ops("reset")) == 1
    assert len(compute.ops("compute.instanceGroupManagers.recreateInstances")) == 1
    reset, recreate = fn.decisions()
    assert (reset["decision"], reset["result"]) == ("reset", "done"), "waited on the operation"
    assert (recreate["decision"], recreate["reason"]) == ("recreate", "escalate")

    wait_idle(compute)
    after = compute.member(0)
    assert after["name"] == before["name"] and after["id"] != before["id"], "same name, new VM"
    assert HEAL_LABEL not in after.get("labels", {}), "recreated from the template"
    fn.post(encode(incident("0.inc-ladder-3", instance_id=after["id"])))
    assert fn.decisions()[-1]["reason"] == "too-young"
    assert len(compute.ops("reset")) == 1


def test_terminated_instance_is_recreated_directly(compute, load_function):
    name = compute.member(1)["name"]
    compute.backend.update_instance(PROJECT, ZONE, name, status="TERMINATED")
    fn = load_function("autoheal")
    fn.post(heal_payload(compute, 1, "0.inc-term"))
    assert compute.ops("reset") == []
    assert fn.decisions()[0]["reason"] == "not-running"
    assert len(compute.ops("compute.instanceGroupManagers.recreateInstances")) == 1


def test_transient_api_error_is_raised_for_redelivery_then_acts_once(compute, load_function):
    fn = load_function("autoheal")
    compute.api.inject("instances.reset", status=503, times=1)
    data = heal_payload(compute, 0, "0.inc-503")
    first = fn.post(data, message_id="m-503")
    assert first.status_code == 500
    assert first.headers.get("X-Google-Status") == "crash"
    assert compute.ops("reset") == []
    second = fn.post(data, message_id="m-503")
    assert second.status_code == 200
    assert len(compute.ops("reset")) == 1
    reasons = [(d["decision"], d["reason"]) for d in fn.decisions()]
    assert reasons == [("retry", "transient-error"), ("reset", "replay")]


def test_label_conflict_is_transient(compute, load_function):
    compute.api.inject("instances.setLabels", status=412, times=1, reason="conditionNotMet")
    fn = load_function("autoheal")
    assert fn.post(heal_payload(compute, 0, "0.inc-412")).status_code == 500
    assert fn.post(heal_payload(compute, 0, "0.inc-412")).status_code == 200
    assert len(compute.ops("reset")) == 1


def test_permanent_api_error_is_acknowledged(compute, load_function):
    compute.api.inject(
        "instances.reset", status=403, times=1, reason="forbidden", message="Required permission"
    )
    fn = load_function("autoheal")
    assert fn.post(heal_payload(compute, 0, "0.inc-403")).status_code == 200
    (record,) = [r for r in fn.records() if r.get("reason") == "error"]
    assert record["severity"] == "ERROR" and "Required permission" in record["message"]


def test_policy_not_labelled_for_healing_touches_nothing(compute, load_function):
    fn = load_function("autoheal")
    fn.post(heal_payload(compute, 0, "0.inc-cpu", labels={"team": "web"}))
    assert compute.api.calls() == []
    assert fn.decisions()[0]["reason"] == "not-heal-policy"


def test_invalid_configuration_acknowledges_every_event(compute, load_function):
    fn = load_function("autoheal", FLEET_MIGS="local-proj/nowhere/dify-mig")
    response = fn.post(heal_payload(compute, 0, "0.inc-config"))
    assert response.status_code == 200
    records = fn.records()
    critical = [r for r in records if r["severity"] == "CRITICAL"]
    assert len(critical) == 1 and critical[0]["variable"] == "FLEET_MIGS"
    assert records[-1]["reason"] == "invalid-config"
    assert compute.api.calls() == []


def test_legacy_event_without_ce_headers_is_not_the_topic_event(compute, load_function):
    """A push without ce-* headers is converted by the framework; the source we log shows it."""
    fn = load_function("autoheal")
    body = {
        "message": {"data": "", "messageId": "legacy-1", "publishTime": "2026-11-26T00:00:00Z"},
        "subscription": f"projects/{PROJECT}/subscriptions/sub",
    }
    response = fn.client.post("/", json=body)
    assert response.status_code == 200
    (record,) = fn.decisions()
    assert record["event_source"] != source_of(ALERTS)
    assert compute.mutations() == []


def test_decisions_are_one_json_line_each(compute, load_function, capsys):
    fn = load_function("autoheal")
    fn.post(heal_payload(compute, 0, "0.inc-log"))
    records = fn.records()
    assert all({"severity", "message"} <= r.keys() for r in records)
    assert len([r for r in records if "decision" in r]) == 1


def test_regional_mig(load_function, compute):
    compute.backend.add_mig(
        PROJECT, "us-central1", "dify-regional", size=2, zones=["us-central1-b", "us-central1-c"]
    )
    names = compute.backend.member_names(PROJECT, "us-central1", "dify-regional")
    inst = compute.backend.instance(PROJECT, "us-central1-c", names[1])
    fn = load_function("autoheal", FLEET_MIGS=f"{PROJECT}/{ZONE}/{MIG},{PROJECT}/us-central1/dify-regional")
    fn.post(encode(incident("0.inc-reg", instance_id=inst["id"], zone="us-central1-c")))
    (reset,) = compute.ops("reset")
    assert reset.location == "us-central1-c"
    assert any(c.method == "regionInstanceGroupManagers.listManagedInstances" for c in compute.api.calls())


def test_stale_rollout_mark_does_not_block_healing(compute, load_function):
    """A killed rollout leaves its mark: it blocks only while that rollout holds the fleet lock."""
    name = compute.member(1)["name"]
    compute.backend.update_instance(PROJECT, ZONE, name, labels={ROLLOUT_LABEL: "r-killed"})
    now = datetime.now(UTC)
    live = Lock("local", "ops@example.com", "rollout", "r-killed", now, now + timedelta(minutes=5))
    compute.backend.add_project(PROJECT, {LOCK_METADATA_KEY: lock_to_json(live)})
    fn = load_function("autoheal")
    fn.post(heal_payload(compute, 1, "0.inc-stale"))
    assert compute.mutations() == []
    assert fn.decisions()[-1]["reason"] == "under-rollout"

    expired = Lock("local", "ops@example.com", "rollout", "r-killed", now - timedelta(hours=1), now)
    compute.backend.add_project(PROJECT, {LOCK_METADATA_KEY: lock_to_json(expired)})
    fn.post(heal_payload(compute, 1, "0.inc-stale"))
    last = fn.decisions()[-1]
    assert (last["decision"], last["reason"]) == ("reset", "first-step")
    assert "stale" in last["detail"] and "r-killed" in last["detail"]
    assert len(compute.ops("reset")) == 1


def test_stale_rollout_mark_without_any_lock(compute, load_function):
    name = compute.member(2)["name"]
    compute.backend.update_instance(PROJECT, ZONE, name, labels={ROLLOUT_LABEL: "r-gone"})
    fn = load_function("autoheal")
    fn.post(heal_payload(compute, 2, "0.inc-nolock"))
    assert len(compute.ops("reset")) == 1


def test_late_redelivery_passes_the_same_checks(compute, load_function):
    """A redelivery whose instance became young (recreated) or busy is not replayed blindly."""
    fn = load_function("autoheal")
    data = heal_payload(compute, 1, "0.inc-late")
    fn.post(data)
    assert len(compute.ops("reset")) == 1
    wait_idle(compute)
    name = compute.member(1)["name"]
    compute.backend.update_instance(PROJECT, ZONE, name, age=5)
    fn.post(data)
    assert fn.decisions()[-1]["reason"] == "too-young"
    compute.backend.update_instance(PROJECT, ZONE, name, age=3600)
    other = compute.member(2)["name"]
    compute.backend.update_instance(PROJECT, ZONE, other, current_action="RECREATING")
    fn.post(data)
    assert fn.decisions()[-1]["reason"] == "budget-exhausted"
    assert len(compute.api.calls("instances.reset")) == 1, "no second reset request at all"
