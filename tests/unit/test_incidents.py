"""Parsing Monitoring notifications (schema 1.2) out of Pub/Sub CloudEvent data: pure, no I/O."""

from __future__ import annotations

import base64
import contextlib
import json
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.append(str(Path(__file__).resolve().parents[2] / "functions"))  # as the Functions runtime does

import incidents
from incidents import MalformedEvent, parse_incident, pubsub_message

TYPE = "google.cloud.pubsub.topic.v1.messagePublished"
SOURCE = "//pubsub.googleapis.com/projects/p-123456/topics/alerts"

FULL = {
    "version": "1.2",
    "incident": {
        "incident_id": "0.opqiw61fsv7p",
        "scoping_project_id": "p-123456",
        "scoping_project_number": 12345,
        "url": "https://console.cloud.google.com/monitoring/alerting/incidents/0.opqiw61fsv7p",
        "started_at": 1577840461,
        "ended_at": None,
        "state": "open",
        "resource_id": "11223344",
        "resource": {"type": "gce_instance", "labels": {"instance_id": "11223344", "zone": "us-central1-a"}},
        "metric": {
            "type": "compute.googleapis.com/instance/cpu/utilization",
            "labels": {"instance_name": "vm-1"},
        },
        "policy_name": "cpu-high",
        "policy_user_labels": {"fleet-action": "autoheal"},
        "condition": {"name": "projects/p/alertPolicies/1/conditions/2", "displayName": "CPU above 90%"},
        "condition_name": "CPU above 90%",
        "threshold_value": "0.9",
        "observed_value": "0.973",
        "summary": "CPU utilization for vm-1 is above the threshold of 0.900 with a value of 0.973.",
    },
}


def event_data(payload: bytes) -> dict:
    return {
        "message": {
            "data": base64.b64encode(payload).decode(),
            "attributes": {"a": "b"},
            "messageId": "42",
            "publishTime": "2026-11-26T00:00:00Z",
        },
        "subscription": "projects/p-123456/subscriptions/s",
    }


def test_full_notification():
    message = pubsub_message(TYPE, SOURCE, event_data(json.dumps(FULL).encode()))
    assert (message.message_id, message.attributes) == ("42", {"a": "b"})
    inc = parse_incident(message.data)
    assert inc.incident_id == "0.opqiw61fsv7p" and inc.state == "open"
    assert inc.started_at == 1577840461 and inc.ended_at is None
    assert inc.resource_labels == {"instance_id": "11223344", "zone": "us-central1-a"}
    assert inc.metric_labels == {"instance_name": "vm-1"}
    assert (inc.observed_value, inc.threshold_value) == ("0.973", "0.9")
    assert inc.policy_user_labels == {"fleet-action": "autoheal"}
    assert inc.dedupe_key == "0.opqiw61fsv7p|open"


def test_optional_fields_may_be_missing():
    inc = parse_incident(
        json.dumps({"version": "1.2", "incident": {"incident_id": "x", "state": "closed"}}).encode()
    )
    assert (inc.state, inc.resource_labels, inc.summary, inc.started_at) == ("closed", {}, "", None)


def test_condition_display_name_when_condition_name_missing():
    doc = {
        "version": "1.2",
        "incident": {"incident_id": "x", "state": "open", "condition": {"displayName": "D"}},
    }
    assert parse_incident(json.dumps(doc).encode()).condition_name == "D"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff", "not JSON"),
        (b"[]", "not a JSON object"),
        (b"{}", "no version"),
        (json.dumps({"version": "2.0", "incident": {}}).encode(), "unknown notification version"),
        (json.dumps({"version": "1.2"}).encode(), "no incident"),
        (json.dumps({"version": "1.2", "incident": {"state": "open"}}).encode(), "incident_id"),
        (json.dumps({"version": "1.2", "incident": {"incident_id": "x", "state": "gone"}}).encode(), "state"),
        (
            json.dumps(
                {"version": "1.2", "incident": {"incident_id": "x", "state": "open", "started_at": "soon"}}
            ).encode(),
            "epoch",
        ),
        (
            json.dumps(
                {"version": "1.2", "incident": {"incident_id": "x", "state": "open", "resource": []}}
            ).encode(),
            "resource",
        ),
        (b"[" * 100000, "not JSON"),
    ],
)
def test_malformed_payloads_say_why(payload, reason):
    with pytest.raises(MalformedEvent, match=reason):
        parse_incident(payload)


@pytest.mark.parametrize(
    ("event_type", "source", "data", "reason"),
    [
        ("google.cloud.storage.object.v1.finalized", SOURCE, {}, "event type"),
        (TYPE, "//storage.googleapis.com/b", {}, "source"),
        (TYPE, SOURCE, [], "not a JSON object"),
        (TYPE, SOURCE, {"message": 1}, "no message"),
        (TYPE, SOURCE, {"message": {"data": "%%%"}}, "base64"),
        (TYPE, SOURCE, {"message": {"data": "", "attributes": {"a": 1}}}, "attributes"),
    ],
)
def test_bad_envelopes(event_type, source, data, reason):
    with pytest.raises(MalformedEvent, match=reason):
        pubsub_message(event_type, source, data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_parse_never_raises_anything_but_malformed_on_bytes(data):
    with contextlib.suppress(MalformedEvent):
        parse_incident(data)


@settings(max_examples=300, deadline=None)
@given(json_values, json_values)
def test_parse_never_raises_anything_but_malformed_on_json(version, incident):
    doc = {"version": version if not isinstance(version, str) else "1.2", "incident": incident}
    with contextlib.suppress(MalformedEvent):
        parse_incident(json.dumps(doc).encode())


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_envelope_never_raises_anything_but_malformed(data):
    with contextlib.suppress(MalformedEvent):
        pubsub_message(TYPE, SOURCE, data)


def test_known_versions_are_explicit():
    assert incidents.KNOWN_VERSIONS == ("1.2",)


def test_epoch_out_of_range_is_malformed_not_a_crash() -> None:
    """Found by the fuzzer: year 10000 cannot be formatted by notify; it is a malformed event."""
    incident = {"incident_id": "x", "state": "open", "started_at": 253402300800.0}
    with pytest.raises(MalformedEvent, match="out of range"):
        parse_incident(json.dumps({"version": "1.2", "incident": incident}).encode())


@pytest.mark.parametrize("raw", ["²", "١٢", "1764140000 ", "+1764140000", "1_764_140_000"])
def test_epoch_strings_are_parsed_strictly(raw):
    """ "²" passes str.isdigit() and then int() raises: it must be malformed, not a crash."""
    doc = {"version": "1.2", "incident": {"incident_id": "0.x", "state": "open", "started_at": raw}}
    with pytest.raises(incidents.MalformedEvent, match="started_at"):
        incidents.parse_incident(json.dumps(doc).encode())
