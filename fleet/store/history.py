"""The fleet's central history: one object per event (append-only, so writers never contend), named by
time so a listing is already in order. A recreated VM's past survives its boot disk."""

from __future__ import annotations

import json
import secrets as rnd
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fleet.commands import base
from fleet.errors import FleetError
from fleet.release import secrets
from fleet.store.location import Store

PREFIX = "history/"
FORMAT = 1
ACTIONS = ("deploy", "rollout", "rollback", "agent-boot", "agent-apply", "publish")
DETAIL_MAX = 2000


@dataclass(frozen=True)
class Event:
    """One history entry (the contract's fields); `detail` is masked when appended."""

    action: str
    result: str
    actor: str
    instance: str | None = None
    release: str | None = None
    version: str | None = None
    rollout_id: str | None = None
    detail: str | None = None
    at: datetime | None = None  # None: now


def object_name(at: datetime) -> str:
    """history/<YYYYmmddTHHMMSSffffffZ>-<8 hex>.json: sorts by time, unique across writers."""
    return f"{PREFIX}{at.astimezone(UTC).strftime('%Y%m%dT%H%M%S%fZ')}-{rnd.token_hex(4)}.json"


def append(store: Store, event: Event) -> str:
    """Write one event (detail masked with every secret value this process knows); its object name."""
    if event.action not in ACTIONS:
        raise FleetError(f"unknown history action {event.action!r}", where=store.url)
    at = event.at or datetime.now(UTC)
    detail = base.mask(event.detail, secrets.known())[:DETAIL_MAX] if event.detail else None
    doc = {
        "format": FORMAT,
        "at": at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "fleet": store.fleet,
        "action": event.action,
        "result": event.result,
        "actor": event.actor,
        "instance": event.instance,
        "release": base.release_id(event.release) if event.release else None,
        "version": event.version,
        "rollout_id": event.rollout_id,
        "detail": detail,
    }
    name = object_name(at)
    blob = store.blob(name)
    store.call(
        "append to the history",
        lambda: blob.upload_from_string(
            json.dumps(doc, sort_keys=True) + "\n", content_type="application/json", if_generation_match=0
        ),
        name,
    )
    return name


def _since_key(since: datetime) -> str:
    return f"{PREFIX}{since.astimezone(UTC).strftime('%Y%m%dT%H%M%S%fZ')}"


def read(
    store: Store, limit: int | None = None, instance: str | None = None, since: datetime | None = None
) -> list[dict[str, Any]]:
    """Events oldest first (newest last): at most `limit` (the newest ones), only `instance`'s, only
    at or after `since`. An unreadable object is listed as {"name", "unparsed"}, not dropped."""
    client = store.client()
    kwargs: dict[str, Any] = {"prefix": store.name(PREFIX)}
    if since is not None:
        kwargs["start_offset"] = store.name(_since_key(since))
    blobs = store.call("list the history", lambda: list(client.list_blobs(store.bucket, **kwargs)), PREFIX)
    blobs.sort(key=lambda b: b.name)
    if instance is None and limit is not None:
        blobs = blobs[-limit:] if limit > 0 else []
    events: list[dict[str, Any]] = []
    for blob in reversed(blobs):  # newest first, so a limit with a filter stops early
        rel = blob.name.removeprefix(store.prefix + "/")
        try:
            doc = json.loads(store.call("read the history", blob.download_as_bytes, rel))
            if not isinstance(doc, dict):
                raise ValueError
        except ValueError:
            doc = {"name": rel, "unparsed": "not a JSON object"}
        if instance is not None and doc.get("instance") != instance:
            continue
        events.append(doc)
        if limit is not None and len(events) >= limit:
            break
    events.reverse()
    return events
