"""Cloud Functions (gen2) entry points: autoheal, scale, notify; each takes Pub/Sub CloudEvents.

Deploy:  gcloud functions deploy NAME --gen2 --runtime python312 --trigger-topic TOPIC
         --entry-point NAME --source functions/ --retry   (see docs/functions.md)

Cold start reads the configuration once; if it is invalid, one CRITICAL line names the variable and
every event is acknowledged with an ERROR line (no crash loop, no retry storm). Each event ends in
one decision record. Malformed events and permanent errors are acknowledged; transient Google API
errors are raised so Pub/Sub redelivers, and the redelivery decides again from live state.
"""

from __future__ import annotations

import os
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import fleet_contract as contract
import functions_framework
import gce
import incidents
import logs
import notifiers
import policy
import publisher
from cloudevents.http import CloudEvent
from settings import ConfigError, Settings, load

# Reasons for which a skipped decision is worth an event on the events topic (operators should know).
_NOTABLE_SKIPS = frozenset({"outside-migs", "budget-exhausted", "at-bound", "ambiguous-mig"})
_WARN_SKIPS = _NOTABLE_SKIPS | {"no-instance", "bad-policy-labels", "no-migs"}


def _load_settings() -> tuple[Settings | None, ConfigError | None]:
    try:
        return load(os.environ), None
    except ConfigError as exc:
        logs.log(
            "CRITICAL",
            f"invalid configuration, every event will be acknowledged unprocessed: {exc}",
            variable=exc.variable,
            problem=exc.problem,
            hint=exc.hint,
        )
        return None, exc


SETTINGS, CONFIG_ERROR = _load_settings()
_state: dict[str, Any] = {}
_sent: OrderedDict[tuple[str, str], None] = OrderedDict()  # notify: (target, key) delivered here
_SENT_MAX = 2048


def _preload(target: str) -> None:
    """Import what the deployed entry point needs now, during cold start, not in the first event."""
    if SETTINGS is None:
        return
    if target in ("autoheal", "scale"):
        gce.preload()
        if SETTINGS.events_topic:
            publisher.preload()


_preload(os.environ.get("FUNCTION_TARGET", ""))


def _compute(cfg: Settings) -> gce.Compute:
    if "compute" not in _state:
        _state["compute"] = gce.Compute(cfg.compute_endpoint, cfg.api_timeout)
    compute: gce.Compute = _state["compute"]
    return compute


def _publisher(cfg: Settings) -> publisher.Publisher:
    if "publisher" not in _state:
        _state["publisher"] = publisher.Publisher(cfg.events_topic, cfg.api_timeout)
    pub: publisher.Publisher = _state["publisher"]
    return pub


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, notifiers.DeliveryError):
        return exc.transient
    return gce.is_transient(exc)


def _run(
    function: str,
    event: CloudEvent,
    handler: Callable[[Settings, incidents.PubsubMessage, dict[str, Any]], None],
) -> None:
    base: dict[str, Any] = {
        "function": function,
        "event_id": event.get("id"),
        "event_type": event.get("type"),
        "event_source": event.get("source"),
    }
    if SETTINGS is None:
        assert CONFIG_ERROR is not None
        logs.log(
            "ERROR",
            f"{function}: event acknowledged unprocessed, invalid configuration ({CONFIG_ERROR.variable})",
            decision="none",
            reason="invalid-config",
            variable=CONFIG_ERROR.variable,
            **base,
        )
        return
    try:
        message = incidents.pubsub_message(str(event.get("type")), str(event.get("source")), event.get_data())
        base["message_id"] = message.message_id
        handler(SETTINGS, message, base)
    except incidents.MalformedEvent as exc:
        logs.log(
            "WARNING",
            f"{function}: malformed event acknowledged: {exc}",
            decision="none",
            reason="malformed",
            **base,
        )
    except Exception as exc:
        if _is_transient(exc):
            logs.log(
                "WARNING",
                f"{function}: transient error, raising so Pub/Sub redelivers: {gce.describe_error(exc)}",
                decision="retry",
                reason="transient-error",
                **base,
            )
            raise
        fields: dict[str, Any] = {"decision": "none", "reason": "error", **base}
        if not isinstance(exc, notifiers.DeliveryError) and not hasattr(exc, "code"):
            fields["stack_trace"] = traceback.format_exc()
        logs.log("ERROR", f"{function}: error, event acknowledged: {gce.describe_error(exc)}", **fields)


def _incident_fields(incident: incidents.Incident) -> dict[str, Any]:
    return {"incident_id": incident.incident_id, "state": incident.state, "policy": incident.policy_name}


def _log_decision(
    function: str, decision: policy.Decision, fields: dict[str, Any], op: gce.OpResult | None = None
) -> None:
    if op is not None and op.error:
        severity = "ERROR"
    elif decision.acts:
        severity = "NOTICE"
    elif decision.reason in _WARN_SKIPS:
        severity = "WARNING"
    else:
        severity = "INFO"
    what = decision.action if decision.acts else "no action"
    logs.log(
        severity,
        f"{function}: {what} ({decision.reason}): {decision.detail}",
        decision=decision.action,
        reason=decision.reason,
        detail=decision.detail,
        mig=str(decision.mig) if decision.mig else None,
        instance=decision.member.name if decision.member else None,
        request_id=decision.request_id or None,
        operation=op.name if op else None,
        operation_status=op.status if op else None,
        operation_error=op.error or None if op else None,
        result=op.result if op else ("skipped" if not decision.acts else None),
        **fields,
    )


def _publish(
    cfg: Settings,
    kind: str,
    decision: policy.Decision,
    incident: incidents.Incident,
    op: gce.OpResult | None,
    fields: dict[str, Any],
) -> None:
    if not cfg.events_topic:
        return
    if decision.acts:
        if decision.action == "mark-closed" or decision.reason == "replay":
            return  # nothing new to report: a replay repeats an action already reported
        result = op.result if op is not None else "started"
    elif decision.reason in _NOTABLE_SKIPS and incident.state == "open":
        result = "refused" if decision.reason == "outside-migs" else "skipped"
    else:
        return
    ref = decision.mig
    event = contract.FleetEvent(
        kind=kind,
        action=decision.action if decision.acts else decision.reason,
        result=result,
        fleet=cfg.fleet,
        project=ref.project if ref else "",
        zone=ref.location if ref else "",
        mig=ref.name if ref else "",
        instance=decision.member.name if decision.member else "",
        incident_id=incident.incident_id,
        time=contract.format_time(datetime.now(UTC)),
        detail=decision.detail[:500],
    )
    try:
        message_id = _publisher(cfg).publish(event)
    except Exception as exc:  # the action is done either way; a lost event must not redo it
        logs.log("ERROR", f"fleet event not published: {gce.describe_error(exc)}", event_kind=kind, **fields)
        return
    logs.log("DEBUG", "fleet event published", published_message_id=message_id, event_kind=kind, **fields)


def _read_lock(compute: gce.Compute, project: str, fields: dict[str, Any]) -> contract.Lock | None:
    """The fleet lock in `project`; an unreadable one is logged and treated as absent."""
    text = compute.lock_text(project)
    problem = contract.lock_problem(text)
    if problem:
        logs.log(
            "WARNING", f"fleet lock in {project} is unreadable, treated as not held: {problem}", **fields
        )
    return contract.parse_lock(text)


def _lock_held(compute: gce.Compute, project: str, fields: dict[str, Any]) -> bool:
    return contract.is_held(_read_lock(compute, project, fields), datetime.now(UTC))


# --- autoheal ---------------------------------------------------------------------------------------


def _autoheal(cfg: Settings, message: incidents.PubsubMessage, base: dict[str, Any]) -> None:
    incident = incidents.parse_incident(message.data)
    fields = {**base, **_incident_fields(incident)}
    target = policy.heal_target(incident)
    if isinstance(target, policy.Decision):
        _log_decision("autoheal", target, fields)
        return
    if not cfg.migs:
        _log_decision("autoheal", policy.Decision("none", "no-migs", "FLEET_MIGS is empty"), fields)
        return
    compute = _compute(cfg)
    fleet = compute.fleet_state(cfg.migs)
    found = policy.locate(target, fleet)
    lock = (
        _read_lock(compute, found[0].ref.project, fields)
        if incident.state == "open" and found is not None
        else None
    )
    decision = policy.decide_heal(incident, target, fleet, lock, time.time(), cfg)
    op = None
    if decision.acts:
        assert decision.mig is not None and decision.member is not None
        project, member = decision.mig.project, decision.member
        if decision.labels is not None:
            op = compute.set_labels(
                project, member, dict(decision.labels), policy.request_id(decision.request_id, "labels")
            )
        if decision.action == "reset":
            op = compute.reset(project, member, decision.request_id)
        elif decision.action == "recreate":
            op = compute.recreate(decision.mig, member, decision.request_id)
        if op is not None and cfg.operation_wait > 0:
            op = compute.wait(op, cfg.operation_wait)
    _log_decision("autoheal", decision, fields, op)
    _publish(cfg, "heal", decision, incident, op, fields)


@functions_framework.cloud_event
def autoheal(cloud_event: CloudEvent) -> None:
    """Reset, then recreate, an instance named by an open incident of a policy labelled for healing."""
    _run("autoheal", cloud_event, _autoheal)


# --- scale ------------------------------------------------------------------------------------------


def _scale(cfg: Settings, message: incidents.PubsubMessage, base: dict[str, Any]) -> None:
    incident = incidents.parse_incident(message.data)
    fields = {**base, **_incident_fields(incident)}
    intent = policy.scale_intent(incident, cfg)
    if isinstance(intent, policy.Decision):
        _log_decision("scale", intent, fields)
        return
    for note in intent.notes:
        logs.log("WARNING", f"scale: policy label clamped: {note}", reason="label-clamped", **fields)
    ref = policy.choose_mig(incident, cfg.migs)
    if isinstance(ref, policy.Decision):
        _log_decision("scale", ref, fields)
        _publish(cfg, "scale", ref, incident, None, fields)
        return
    compute = _compute(cfg)
    mig = compute.mig_state(ref, with_autoscaler=True)
    lock_held = intent.direction == "in" and _lock_held(compute, ref.project, fields)
    decision = policy.decide_scale(incident, intent, mig, lock_held, time.time(), cfg)
    op = None
    if decision.action == "resize":
        assert decision.new_size is not None
        op = compute.resize(ref, decision.new_size, decision.request_id)
    elif decision.action == "autoscaler":
        assert mig.autoscaler is not None and decision.new_min is not None and decision.new_max is not None
        op = compute.set_autoscaler_bounds(
            ref, mig.autoscaler.name, decision.new_min, decision.new_max, decision.request_id
        )
    if op is not None and cfg.operation_wait > 0:
        op = compute.wait(op, cfg.operation_wait)
    _log_decision("scale", decision, fields, op)
    _publish(cfg, "scale", decision, incident, op, fields)


@functions_framework.cloud_event
def scale(cloud_event: CloudEvent) -> None:
    """Resize a MIG (or move its autoscaler's bounds) on an open incident of a scaling policy."""
    _run("scale", cloud_event, _scale)


# --- notify -----------------------------------------------------------------------------------------


def _note(message: incidents.PubsubMessage) -> tuple[notifiers.Note, dict[str, Any]]:
    if contract.EVENT_SCHEMA_ATTRIBUTE in message.attributes:
        try:
            event = contract.FleetEvent.from_message(message.data, message.attributes)
        except contract.ContractError as exc:
            raise incidents.MalformedEvent(f"fleet event: {exc}") from None
        return notifiers.event_note(event), {"fleet_event_id": event.event_id, "event_kind": event.kind}
    incident = incidents.parse_incident(message.data)
    return notifiers.incident_note(incident), _incident_fields(incident)


def _notify(cfg: Settings, message: incidents.PubsubMessage, base: dict[str, Any]) -> None:
    note, extra = _note(message)
    fields = {**base, **extra, "note_key": note.key}
    sent: list[str] = []
    duplicate: list[str] = []
    failed: list[notifiers.DeliveryError] = []
    for kind, url in notifiers.targets(cfg):
        if (kind, note.key) in _sent:
            duplicate.append(kind)
            continue
        try:
            notifiers.deliver(kind, url, note, cfg.webhook_timeout)
        except notifiers.DeliveryError as exc:
            failed.append(exc)
            continue
        _sent[(kind, note.key)] = None
        while len(_sent) > _SENT_MAX:
            _sent.popitem(last=False)
        sent.append(kind)
    if failed:
        severity, reason = "ERROR", "delivery-failed"
    elif sent:
        severity, reason = "NOTICE", "sent"
    elif duplicate:
        severity, reason = "INFO", "duplicate"
    else:
        severity, reason = "WARNING", "no-targets"
    logs.log(
        severity,
        f"notify: {note.title} ({reason})",
        decision="notify" if sent else "none",
        reason=reason,
        sent=sent,
        duplicate=duplicate,
        failed=[str(e) for e in failed],
        **fields,
    )
    retry = [e for e in failed if e.transient]
    if retry:
        raise retry[0]


@functions_framework.cloud_event
def notify(cloud_event: CloudEvent) -> None:
    """Post incidents and fleet events to Slack, Google Chat and a generic JSON webhook."""
    _run("notify", cloud_event, _notify)
