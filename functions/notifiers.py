"""Turn incidents and fleet events into Slack, Google Chat and generic JSON webhook messages.

Formatting is pure; `deliver` is the one place that talks HTTP. Webhook URLs carry credentials, so
they stay inside settings.Secret and no error built here ever contains one.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from fleet_contract import FleetEvent
from incidents import Incident
from settings import Secret, Settings

USER_AGENT = "compose-fleet-notify/1"

# Every field posted is bounded: Slack refuses a section over 3000 characters, Chat a message over
# 4096, and an unbounded summary must not turn into a 1 MB POST that the receiver cuts off.
TITLE_MAX = 150
SUMMARY_MAX = 1000
LINE_MAX = 200
LINK_MAX = 800
ID_MAX = 128  # incident ids and thread keys; longer ones are replaced by a hash
DATA_STR_MAX = 1000
DATA_ITEMS_MAX = 32
ELLIPSIS = "…"


@dataclass(frozen=True)
class Note:
    """One notification, independent of where it goes."""

    key: str  # dedupe key: the same alert or event always has the same key
    kind: str  # incident | fleet-event
    status: str  # firing | resolved | done | started | failed | skipped | refused | ...
    title: str
    lines: tuple[str, ...]
    thread: str  # Chat thread key; "" = a thread of its own
    link: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)


class DeliveryError(Exception):
    """A webhook did not accept the message. The text never contains the URL."""

    def __init__(self, target: str, what: str, transient: bool) -> None:
        self.target = target
        self.transient = transient
        super().__init__(f"{target} webhook: {what}")


def clip(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, marked with an ellipsis when cut."""
    return text if len(text) <= limit else text[: limit - 1] + ELLIPSIS


def _ident(text: str) -> str:
    """An id fit for keys and thread names: itself when short, else a stable hash of it."""
    return text if len(text) <= ID_MAX else "h-" + hashlib.sha256(text.encode()).hexdigest()[:40]


def _bounded(value: Any, limit: int = DATA_STR_MAX) -> Any:
    """A JSON value with every string, list and map cut to size (the generic webhook's `data`);
    strings nested in a map or list (labels) get a fifth of the room."""
    if isinstance(value, str):
        return clip(value, limit)
    inner = max(64, limit // 5)
    if isinstance(value, Mapping):
        items = list(value.items())[:DATA_ITEMS_MAX]
        return {clip(str(k), inner): _bounded(v, inner) for k, v in items}
    if isinstance(value, list | tuple):
        return [_bounded(v, inner) for v in value[:DATA_ITEMS_MAX]]
    return value


def _when(epoch: int | None) -> str:
    if epoch is None:
        return ""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def incident_note(incident: Incident) -> Note:
    firing = incident.state == "open"
    where = incident.resource_labels.get("instance_id") or incident.metric_labels.get("instance_name") or ""
    zone = incident.resource_labels.get("zone", "")
    lines = [clip(incident.summary, SUMMARY_MAX)] if incident.summary else []
    if incident.condition_name:
        lines.append(clip(f"Condition: {incident.condition_name}", LINE_MAX))
    if incident.resource_type:
        lines.append(clip(f"Resource: {incident.resource_type} {where} {zone}".rstrip(), LINE_MAX))
    if incident.observed_value or incident.threshold_value:
        lines.append(
            clip(
                f"Observed {incident.observed_value or '?'} (threshold {incident.threshold_value or '?'})",
                LINE_MAX,
            )
        )
    if firing and incident.started_at is not None:
        lines.append(f"Started {_when(incident.started_at)}")
    if not firing and incident.ended_at is not None:
        lines.append(f"Ended {_when(incident.ended_at)}")
    ident = _ident(incident.incident_id)
    return Note(
        key=f"incident|{ident}|{incident.state}",
        kind="incident",
        status="firing" if firing else "resolved",
        title=clip(f"[{'FIRING' if firing else 'RESOLVED'}] {incident.policy_name or 'alert'}", TITLE_MAX),
        lines=tuple(lines),
        thread=f"incident-{ident}",
        link=safe_link(incident.url),
        data={
            "incident_id": incident.incident_id,
            "state": incident.state,
            "policy_name": incident.policy_name,
            "condition_name": incident.condition_name,
            "resource": {"type": incident.resource_type, "labels": dict(incident.resource_labels)},
            "observed_value": incident.observed_value,
            "threshold_value": incident.threshold_value,
            "started_at": incident.started_at,
            "ended_at": incident.ended_at,
            "summary": incident.summary,
            "url": incident.url,
        },
    )


def event_note(event: FleetEvent) -> Note:
    target = event.instance or event.mig or event.fleet
    title = clip(f"[{event.kind.upper()} {event.result.upper()}] {event.action} {target}", TITLE_MAX)
    lines = [clip(event.detail, SUMMARY_MAX)] if event.detail else []
    place = "/".join(p for p in (event.project, event.zone, event.mig) if p)
    if place:
        lines.append(clip(f"MIG: {place}", LINE_MAX))
    if event.rollout_id:
        lines.append(clip(f"Rollout: {event.rollout_id}", LINE_MAX))
    if event.incident_id:
        lines.append(clip(f"Incident: {event.incident_id}", LINE_MAX))
    if event.time:
        lines.append(clip(f"At {event.time}", LINE_MAX))
    if event.incident_id:
        thread = f"incident-{_ident(event.incident_id)}"
    elif event.rollout_id:
        thread = f"rollout-{_ident(event.rollout_id)}"
    else:
        thread = ""
    data = {k: v for k, v in event.__dict__.items()}
    data["event_id"] = event.event_id
    return Note(
        key=f"event|{event.event_id}",
        kind="fleet-event",
        status=event.result,
        title=title,
        lines=tuple(lines),
        thread=thread,
        data=data,
    )


def _escape(text: str) -> str:
    """Slack and Chat both treat &, < and > as markup: `<!channel>`, `<users/all>`, `<url|text>`."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def safe_link(url: str) -> str:
    """An http(s) link that cannot break out of `<url|text>` markup (|, <, > and spaces encoded),
    or "" when it is not one or too long to be a real console link."""
    if not url.startswith(("https://", "http://")):
        return ""
    encoded = quote(url, safe=":/?#[]@$&'()*+,;=%~-._")
    return encoded if len(encoded) <= LINK_MAX else ""


def _text(note: Note) -> str:
    body = "\n".join(_escape(line) for line in note.lines)
    text = f"*{_escape(note.title)}*" + (f"\n{body}" if body else "")
    link = safe_link(note.link)
    if link:
        text += f"\n<{link}|Open in Cloud Console>"
    return text


def slack_body(note: Note) -> dict[str, Any]:
    """An incoming-webhook message: `text` is the notification fallback, blocks the display."""
    blocks: list[dict[str, Any]] = [{"type": "section", "text": {"type": "mrkdwn", "text": _text(note)}}]
    return {"text": _escape(note.title), "blocks": blocks}


def chat_body(note: Note) -> dict[str, Any]:
    body: dict[str, Any] = {"text": _text(note)}
    if note.thread:
        body["thread"] = {"threadKey": note.thread}
    return body


def generic_body(note: Note) -> dict[str, Any]:
    return {
        "source": "compose-fleet",
        "kind": note.kind,
        "key": note.key,
        "status": note.status,
        "title": note.title,
        "text": "\n".join(note.lines),
        "data": {clip(str(k), LINE_MAX): _bounded(v) for k, v in list(note.data.items())[:DATA_ITEMS_MAX]},
    }


def idempotency_key(note: Note) -> str:
    return hashlib.sha256(note.key.encode()).hexdigest()[:32]


def _with_query(url: str, extra: Mapping[str, str]) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in extra]
    query += list(extra.items())
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))


def targets(cfg: Settings) -> list[tuple[str, Secret]]:
    """The configured webhooks, in a fixed order."""
    out = []
    for kind, url in (
        ("slack", cfg.slack_webhook),
        ("chat", cfg.chat_webhook),
        ("generic", cfg.generic_webhook),
    ):
        if url is not None:
            out.append((kind, url))
    return out


def request_for(kind: str, url: Secret, note: Note) -> tuple[str, dict[str, Any], dict[str, str]]:
    """URL, JSON body and extra headers for one target (pure; the URL stays with the caller)."""
    key = idempotency_key(note)
    if kind == "slack":
        return url.reveal(), slack_body(note), {}
    if kind == "chat":
        # requestId makes Chat return the message already created for it instead of a second one;
        # the reply option threads the closed notification under the open one.
        extra = {"requestId": key}
        if note.thread:
            extra["messageReplyOption"] = "REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD"
        return _with_query(url.reveal(), extra), chat_body(note), {}
    if kind == "generic":
        return url.reveal(), generic_body(note), {"Idempotency-Key": key}
    raise ValueError(f"unknown webhook kind {kind!r}")


def deliver(kind: str, url: Secret, note: Note, timeout: float) -> int:
    """POST the note to one webhook; returns the HTTP status or raises DeliveryError."""
    full_url, body, headers = request_for(kind, url, note)
    request = urllib.request.Request(  # noqa: S310 - scheme checked in settings (https, or http to loopback)
        full_url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json; charset=UTF-8", "User-Agent": USER_AGENT, **headers},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as exc:
        status = exc.code
        exc.close()
        raise DeliveryError(kind, f"HTTP {status}", transient=status == 429 or status >= 500) from None
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        # The receiver cut the connection after reading (part of) the request: it refuses this
        # message, and sending it again will not change that (seen with oversized bodies).
        closed = isinstance(reason, http.client.RemoteDisconnected | ConnectionResetError | BrokenPipeError)
        what = f"{type(reason).__name__}" + (" (connection closed by the receiver)" if closed else "")
        raise DeliveryError(kind, what, transient=not closed) from None
