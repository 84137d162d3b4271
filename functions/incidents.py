"""Monitoring incidents (notification schema 1.2) out of Pub/Sub CloudEvents.

Every way an event can be off-shape raises MalformedEvent with a reason, so the entry point can
log it and acknowledge the message: a bad payload is never retried (it would fail forever).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

PUBSUB_EVENT_TYPE = "google.cloud.pubsub.topic.v1.messagePublished"
_PUBSUB_SOURCE = re.compile(r"//pubsub\.googleapis\.com/projects/[^/]+/topics/[^/]+")
KNOWN_VERSIONS = ("1.2",)
STATES = ("open", "closed")
_DIGITS = re.compile(r"[0-9]{1,20}")  # ASCII only: "²" and "١٢" pass str.isdigit(), then int() fails


class MalformedEvent(ValueError):
    """The event cannot be understood; acknowledge it (log, no retry)."""


@dataclass(frozen=True)
class PubsubMessage:
    """The Pub/Sub message carried by a messagePublished CloudEvent."""

    data: bytes
    attributes: Mapping[str, str]
    message_id: str
    publish_time: str
    subscription: str


@dataclass(frozen=True)
class Incident:
    """The fields of a Monitoring incident the functions use; optional ones may be empty."""

    incident_id: str
    state: str
    version: str
    started_at: int | None = None
    ended_at: int | None = None
    policy_name: str = ""
    policy_user_labels: Mapping[str, str] = field(default_factory=dict)
    condition_name: str = ""
    resource_type: str = ""
    resource_labels: Mapping[str, str] = field(default_factory=dict)
    metric_type: str = ""
    metric_labels: Mapping[str, str] = field(default_factory=dict)
    observed_value: str = ""
    threshold_value: str = ""
    summary: str = ""
    url: str = ""
    scoping_project_id: str = ""

    @property
    def dedupe_key(self) -> str:
        """Incident id + state: what makes two deliveries the same alert."""
        return f"{self.incident_id}|{self.state}"


def pubsub_message(event_type: str, event_source: str, data: object) -> PubsubMessage:
    """Check the CloudEvent is a Pub/Sub messagePublished event and return its message."""
    if event_type != PUBSUB_EVENT_TYPE:
        raise MalformedEvent(f"event type {event_type[:100]!r} is not {PUBSUB_EVENT_TYPE}")
    if not isinstance(event_source, str) or not _PUBSUB_SOURCE.fullmatch(event_source):
        raise MalformedEvent(f"event source {str(event_source)[:200]!r} is not a Pub/Sub topic")
    if not isinstance(data, Mapping):
        raise MalformedEvent("event data is not a JSON object")
    message = data.get("message")
    if not isinstance(message, Mapping):
        raise MalformedEvent("event data has no message object")
    encoded = message.get("data", "")
    if not isinstance(encoded, str):
        raise MalformedEvent("message.data is not a string")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MalformedEvent(f"message.data is not base64: {exc}") from None
    attributes = message.get("attributes") or {}
    if not isinstance(attributes, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in attributes.items()
    ):
        raise MalformedEvent("message.attributes is not a string map")
    message_id = message.get("messageId", message.get("message_id", ""))
    publish_time = message.get("publishTime", message.get("publish_time", ""))
    subscription = data.get("subscription", "")
    for name, value in (
        ("messageId", message_id),
        ("publishTime", publish_time),
        ("subscription", subscription),
    ):
        if not isinstance(value, str):
            raise MalformedEvent(f"{name} is not a string")
    return PubsubMessage(raw, dict(attributes), message_id, publish_time, subscription)


def _str(raw: Mapping[str, Any], key: str, where: str, default: str = "") -> str:
    value = raw.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise MalformedEvent(f"{where}.{key} is not a string")
    return str(value)


# 9999-12-31T23:59:59Z: a later time cannot be a datetime, so it cannot be a real incident's either
MAX_EPOCH = 253402300799


def _epoch(raw: Mapping[str, Any], key: str) -> int | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool):
        raise MalformedEvent(f"incident.{key} is not epoch seconds")
    whole_number = (
        isinstance(value, int)
        or (isinstance(value, float) and value.is_integer())
        or (isinstance(value, str) and _DIGITS.fullmatch(value) is not None)
    )
    if not whole_number:
        raise MalformedEvent(f"incident.{key} is not epoch seconds")
    seconds = int(value)
    if not 0 <= seconds <= MAX_EPOCH:
        raise MalformedEvent(f"incident.{key} is out of range ({seconds})")
    return seconds


def _labels(raw: Mapping[str, Any], key: str, where: str) -> dict[str, str]:
    value = raw.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise MalformedEvent(f"{where}.{key} is not an object")
    out: dict[str, str] = {}
    for k, v in value.items():
        if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, str | int | float):
            raise MalformedEvent(f"{where}.{key} has a non-string value")
        out[k] = str(v)
    return out


def _typed(raw: Mapping[str, Any], key: str) -> tuple[str, dict[str, str]]:
    value = raw.get(key)
    if value is None:
        return "", {}
    if not isinstance(value, Mapping):
        raise MalformedEvent(f"incident.{key} is not an object")
    return _str(value, "type", f"incident.{key}"), _labels(value, "labels", f"incident.{key}")


def parse_incident(data: bytes) -> Incident:
    """The incident in a Monitoring notification payload (the decoded Pub/Sub message data)."""
    try:
        doc = json.loads(data)
    except (ValueError, TypeError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise MalformedEvent(f"payload is not JSON: {type(exc).__name__}: {exc}"[:300]) from None
    if not isinstance(doc, Mapping):
        raise MalformedEvent("payload is not a JSON object")
    version = doc.get("version")
    if not isinstance(version, str):
        raise MalformedEvent("payload has no version string (not a Monitoring notification)")
    if version not in KNOWN_VERSIONS:
        raise MalformedEvent(
            f"unknown notification version {version[:40]!r} (know {', '.join(KNOWN_VERSIONS)})"
        )
    raw = doc.get("incident")
    if not isinstance(raw, Mapping):
        raise MalformedEvent("payload has no incident object")
    incident_id = raw.get("incident_id")
    if not isinstance(incident_id, str) or not incident_id.strip():
        raise MalformedEvent("incident.incident_id is missing or empty")
    state = raw.get("state")
    if not isinstance(state, str) or state.lower() not in STATES:
        raise MalformedEvent(f"incident.state {str(state)[:40]!r} is not open or closed")
    resource_type, resource_labels = _typed(raw, "resource")
    metric_type, metric_labels = _typed(raw, "metric")
    condition_name = _str(raw, "condition_name", "incident")
    condition = raw.get("condition")
    if not condition_name and isinstance(condition, Mapping):
        condition_name = _str(condition, "displayName", "incident.condition")
    return Incident(
        incident_id=incident_id,
        state=state.lower(),
        version=version,
        started_at=_epoch(raw, "started_at"),
        ended_at=_epoch(raw, "ended_at"),
        policy_name=_str(raw, "policy_name", "incident"),
        policy_user_labels=_labels(raw, "policy_user_labels", "incident"),
        condition_name=condition_name,
        resource_type=resource_type,
        resource_labels=resource_labels,
        metric_type=metric_type,
        metric_labels=metric_labels,
        observed_value=_str(raw, "observed_value", "incident"),
        threshold_value=_str(raw, "threshold_value", "incident"),
        summary=_str(raw, "summary", "incident"),
        url=_str(raw, "url", "incident"),
        scoping_project_id=_str(raw, "scoping_project_id", "incident"),
    )
