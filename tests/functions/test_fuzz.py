"""Property-based fuzzing of malformed events through the real functions-framework app.

Whatever arrives, each function answers 2xx (acknowledged) and logs a decision; an unexpected
exception would show up as a record with reason "error" (or a 500), and fails the test.
"""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from standins.pubsub_api import binary_cloudevent
from tests.functions.conftest import ALERTS, encode, incident

pytestmark = pytest.mark.functions

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)

INCIDENT_KEYS = [
    "incident_id",
    "state",
    "started_at",
    "ended_at",
    "policy_user_labels",
    "resource",
    "metric",
    "observed_value",
    "threshold_value",
    "condition",
    "condition_name",
    "summary",
]


@st.composite
def mutated_incidents(draw: st.DrawFn) -> bytes:
    """A valid notification with a few fields deleted or replaced by values of any type."""
    doc: dict[str, Any] = copy.deepcopy(incident("0.fuzz", instance_id="4242"))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        where = draw(st.sampled_from(["version", "incident", *INCIDENT_KEYS]))
        value = draw(json_values)
        target = doc if where in ("version", "incident") else doc.get("incident")
        if not isinstance(target, dict):
            break
        if draw(st.booleans()):
            target.pop(where, None)
        else:
            target[where] = value
    return encode(doc)


def _assert_acknowledged(fn: Any, response: Any) -> None:
    assert response.status_code == 200, response.data
    records = fn.new_records()
    assert not [r for r in records if r.get("reason") in ("error", "transient-error")]
    assert len([r for r in records if "decision" in r]) == 1


@pytest.fixture
def fuzz_targets(load_function):
    return {name: load_function(name) for name in ("autoheal", "scale", "notify")}


@FUZZ
@given(data=st.binary(max_size=200), target=st.sampled_from(["autoheal", "scale", "notify"]))
def test_arbitrary_message_data(fuzz_targets, data, target):
    fn = fuzz_targets[target]
    _assert_acknowledged(fn, fn.post(data))


@FUZZ
@given(doc=json_values, target=st.sampled_from(["autoheal", "scale", "notify"]))
def test_arbitrary_json_documents(fuzz_targets, doc, target):
    fn = fuzz_targets[target]
    _assert_acknowledged(fn, fn.post(json.dumps(doc).encode()))


@FUZZ
@given(data=mutated_incidents(), target=st.sampled_from(["autoheal", "scale", "notify"]))
def test_mutated_monitoring_notifications(fuzz_targets, data, target):
    fn = fuzz_targets[target]
    _assert_acknowledged(fn, fn.post(data))


@FUZZ
@given(
    message=st.dictionaries(
        st.sampled_from(["data", "attributes", "messageId", "publishTime"]),
        json_values | st.text(alphabet="ABC=+/", max_size=12),
        max_size=4,
    ),
    subscription=json_values,
    target=st.sampled_from(["autoheal", "scale", "notify"]),
)
def test_malformed_cloudevent_bodies(fuzz_targets, message, subscription, target):
    """Bad base64, wrong types, missing message: the Pub/Sub envelope itself is broken."""
    fn = fuzz_targets[target]
    headers, _ = binary_cloudevent(ALERTS, "fuzz-1", b"{}")
    body = json.dumps({"message": message, "subscription": subscription}).encode()
    _assert_acknowledged(fn, fn.post_raw(headers, body))


@pytest.mark.parametrize(
    "body",
    [
        b"not json at all",
        b'{"message": "a string"}',
        json.dumps({"message": {"data": "%%%not-base64"}}).encode(),
        json.dumps({"message": {"data": base64.b64encode(b"\xff\xfe").decode()}}).encode(),
        json.dumps(
            {"message": {"data": base64.b64encode(b'{"version": "9.9", "incident": {}}').decode()}}
        ).encode(),
    ],
)
def test_known_malformed_shapes(fuzz_targets, body):
    for fn in fuzz_targets.values():
        headers, _ = binary_cloudevent(ALERTS, "bad-1", b"{}")
        _assert_acknowledged(fn, fn.post_raw(headers, body))
        assert fn.decisions()[-1]["reason"] == "malformed"


def test_wrong_event_type_is_malformed(fuzz_targets):
    fn = fuzz_targets["autoheal"]
    headers, body = binary_cloudevent(ALERTS, "t-1", encode(incident("0.t", instance_id="1")))
    headers["ce-type"] = "google.cloud.storage.object.v1.finalized"
    _assert_acknowledged(fn, fn.post_raw(headers, body))
    assert "is not google.cloud.pubsub.topic.v1.messagePublished" in fn.decisions()[-1]["message"]
