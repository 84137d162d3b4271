"""What the operator side (fleet/) and the Cloud Functions must agree on, in one place.

fleet/ imports this file as `functions.fleet_contract`; in the deployed source directory it is the
top-level module `fleet_contract`. It uses the standard library only, so both sides can load it
without each other's dependencies. Change it and you change the contract for both sides at once.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime

# --- instance labels -------------------------------------------------------------------------------

# Set by a rollout on the instance it is working on (value: the rollout id); absent = not under
# rollout. Autoheal leaves such an instance alone.
ROLLOUT_LABEL = "fleet-rollout"
# Written by autoheal together with its action: "<step>-<epoch seconds>-<incident key>".
HEAL_LABEL = "fleet-heal"
# Written by autoheal when an incident's "closed" arrives before any action: "<incident key>".
HEAL_CLOSED_LABEL = "fleet-heal-closed"

# --- alert policy user labels the functions act on (fleet/alerting/policies.py sets them) ------------------

POLICY_ACTION_LABEL = "fleet-action"  # "autoheal" | "scale"
POLICY_ACTION_HEAL = "autoheal"
POLICY_ACTION_SCALE = "scale"
POLICY_SCALE_DIRECTION_LABEL = "fleet-scale-direction"  # "out" | "in"
POLICY_SCALE_STEP_LABEL = "fleet-scale-step"  # instances per action, default from configuration
POLICY_SCALE_MIN_LABEL = "fleet-scale-min"  # lower bound of the MIG size
POLICY_SCALE_MAX_LABEL = "fleet-scale-max"  # upper bound of the MIG size
POLICY_MIG_LABEL = "fleet-mig"  # name of the managed instance group a policy is about

# --- instance labels ------------------------------------------------------------------------------

# Every member of a fleet MIG carries this label with the MIG's name, set by the instance template
# (so it cannot drift from what the MIG creates, unlike a base-instance-name prefix). Monitoring sees
# it as `metadata.user_labels."fleet-mig"` on gce_instance metrics: the CPU scale policies select the
# MIG's members by it, and so does the local monitor.
INSTANCE_MIG_LABEL = "fleet-mig"

# --- the fleet lock --------------------------------------------------------------------------------

# Key in the Compute project's common instance metadata; written with compare-and-swap through the
# metadata fingerprint (setCommonInstanceMetadata with a stale fingerprint fails with 412).
LOCK_METADATA_KEY = "compose-fleet-lock"

# --- managed instance groups ----------------------------------------------------------------------

# GCE's own shapes: a region is two lowercase words and a number (us-central1, europe-west1,
# northamerica-northeast1); a zone is a region plus "-<letter>" (us-central1-a). One rule for every
# name, no special cases: stand-ins use real-looking names.
_REGION = re.compile(r"[a-z]+-[a-z]+[0-9]+")
_ZONE = re.compile(r"(?P<region>[a-z]+-[a-z]+[0-9]+)-[a-z]")
_PROJECT = re.compile(r"(?:[a-z0-9.-]+:)?[a-z][a-z0-9-]{4,28}[a-z0-9]")
_RESOURCE_NAME = re.compile(r"[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?")


def is_zone(location: str) -> bool:
    """A zone: a region plus `-<letter>` (us-central1-a)."""
    return isinstance(location, str) and len(location) <= 63 and _ZONE.fullmatch(location) is not None


def is_region(location: str) -> bool:
    """A region (us-central1)."""
    return isinstance(location, str) and len(location) <= 63 and _REGION.fullmatch(location) is not None


def region_of(location: str) -> str:
    """The region of a zone, or the region itself."""
    match = _ZONE.fullmatch(location)
    return match.group("region") if match else location


@dataclass(frozen=True, order=True)
class MigRef:
    """A managed instance group: zonal when `location` is a zone, regional when it is a region.

    Written `project/location/name` (FLEET_MIGS, events, logs); both sides build it with `parse`
    or `make`, which validate every part.
    """

    project: str
    location: str
    name: str

    @property
    def regional(self) -> bool:
        return is_region(self.location)

    @property
    def region(self) -> str:
        return region_of(self.location)

    def covers(self, location: str) -> bool:
        """`location` (a zone or region an incident names) is this MIG's zone, or a zone of its region."""
        if location == self.location:
            return True
        return self.regional and is_zone(location) and region_of(location) == self.location

    def __str__(self) -> str:
        return f"{self.project}/{self.location}/{self.name}"

    @classmethod
    def make(cls, project: str, location: str, name: str) -> MigRef:
        """A checked reference; ContractError says which part is wrong."""
        if not isinstance(project, str) or not _PROJECT.fullmatch(project):
            raise ContractError(f"{project!r} is not a GCP project id")
        if not (is_zone(location) or is_region(location)):
            raise ContractError(f"{location!r} is neither a zone (us-central1-a) nor a region (us-central1)")
        if not isinstance(name, str) or not _RESOURCE_NAME.fullmatch(name):
            raise ContractError(f"{name!r} is not a valid managed instance group name")
        return cls(project, location, name)

    @classmethod
    def parse(cls, text: str) -> MigRef:
        """`project/zone/name` or `project/region/name`."""
        parts = text.strip().split("/") if isinstance(text, str) else []
        if len(parts) != 3:
            raise ContractError(f"{text!r} is not project/zone/name or project/region/name")
        return cls.make(*parts)


# --- fleet events ----------------------------------------------------------------------------------

EVENT_SCHEMA_VERSION = "1"
EVENT_SCHEMA_ATTRIBUTE = "fleet-event-schema"  # message attribute that marks a fleet event
EVENT_KINDS = ("heal", "scale", "rollout", "lock")

_LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")
_TOKEN = re.compile(r"[a-z][a-z0-9_-]{0,62}")


class ContractError(ValueError):
    """A value does not follow the contract (bad label, lock or event)."""


def validate_label_key(key: str) -> str:
    """GCE label keys: lowercase letter first, then [a-z0-9_-], at most 63 characters."""
    if not isinstance(key, str) or not _LABEL_KEY.fullmatch(key):
        raise ContractError(f"invalid label key {key!r}: use a lowercase letter then [a-z0-9_-], <= 63 chars")
    return key


def validate_label_value(value: str) -> str:
    """GCE label values: [a-z0-9_-], at most 63 characters (we refuse non-ASCII letters too)."""
    if not isinstance(value, str) or not _LABEL_VALUE.fullmatch(value):
        raise ContractError(f"invalid label value {value!r}: use only [a-z0-9_-], <= 63 chars")
    return value


def incident_key(incident_id: str) -> str:
    """A label-safe, fixed-length stand-in for a Monitoring incident id (ids are long and mixed-case)."""
    return hashlib.sha256(incident_id.encode()).hexdigest()[:12]


# --- time ------------------------------------------------------------------------------------------


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with a Z, to the second: the only time format in the contract."""
    if moment.tzinfo is None:
        raise ContractError("naive datetime: the contract only carries UTC times")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    """Parse an RFC 3339 time with an explicit offset; naive or garbled times are refused."""
    if not isinstance(text, str):
        raise ContractError(f"time must be a string, got {type(text).__name__}")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ContractError(f"not an RFC 3339 time: {text!r}") from exc
    if moment.tzinfo is None:
        raise ContractError(f"time without offset: {text!r} (use ...Z)")
    return moment.astimezone(UTC)


# --- lock ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lock:
    """Who holds the fleet and until when. Expired = not held: a crashed owner never blocks forever."""

    fleet: str
    owner: str
    reason: str
    rollout_id: str
    created: datetime
    expires: datetime
    # which process holds it (host:pid:token), so that the same rollout id run from a second process
    # is refused; optional (locks written before it existed have none)
    holder: str = ""


_LOCK_FIELDS = ("fleet", "owner", "reason", "rollout_id", "created", "expires")


def lock_to_json(lock: Lock) -> str:
    """The metadata value for `lock` (compact JSON, stable key order)."""
    value = {
        "fleet": lock.fleet,
        "owner": lock.owner,
        "reason": lock.reason,
        "rollout_id": lock.rollout_id,
        "created": format_time(lock.created),
        "expires": format_time(lock.expires),
    }
    if lock.holder:
        value["holder"] = lock.holder
    return json.dumps(
        value,
        separators=(",", ":"),
        sort_keys=True,
    )


def _parse_lock(text: str | None) -> tuple[Lock | None, str | None]:
    if text is None or text == "":
        return None, None
    try:
        raw = json.loads(text)
    except (ValueError, TypeError) as exc:
        return None, f"lock is not JSON: {exc}"
    if not isinstance(raw, dict):
        return None, "lock is not a JSON object"
    missing = [k for k in _LOCK_FIELDS if k not in raw]
    if missing:
        return None, f"lock lacks {', '.join(missing)}"
    for key in ("fleet", "owner", "reason", "rollout_id", "created", "expires"):
        if not isinstance(raw[key], str):
            return None, f"lock field {key} is not a string"
    try:
        created = parse_time(raw["created"])
        expires = parse_time(raw["expires"])
    except ContractError as exc:
        return None, f"lock time: {exc}"
    if not raw["fleet"] or not raw["owner"]:
        return None, "lock has an empty fleet or owner"
    if raw["rollout_id"]:
        try:
            validate_label_value(raw["rollout_id"])
        except ContractError as exc:
            return None, f"lock rollout_id: {exc}"
    holder = raw.get("holder", "")
    if not isinstance(holder, str):
        return None, "lock field holder is not a string"
    lock = Lock(raw["fleet"], raw["owner"], raw["reason"], raw["rollout_id"], created, expires, holder)
    return lock, None


def parse_lock(text: str | None) -> Lock | None:
    """The lock stored in metadata, or None when absent or garbled (see `lock_problem` for why)."""
    return _parse_lock(text)[0]


def lock_problem(text: str | None) -> str | None:
    """Why `text` is not a valid lock; None when it is valid or absent."""
    return _parse_lock(text)[1]


def is_held(lock: Lock | None, now: datetime) -> bool:
    """A lock holds the fleet until it expires."""
    return lock is not None and now < lock.expires


# --- fleet events ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FleetEvent:
    """A heal/scale/rollout/lock result published to the events topic (for notify and audit).

    `zone` holds the MIG's zone, or its region for a regional MIG. `result` is a short token such
    as started, done, failed, skipped, refused.
    """

    kind: str
    action: str
    result: str
    fleet: str
    project: str = ""
    zone: str = ""
    mig: str = ""
    instance: str = ""
    incident_id: str = ""
    rollout_id: str = ""
    time: str = ""
    detail: str = ""
    schema: str = EVENT_SCHEMA_VERSION

    def __post_init__(self) -> None:
        for f in fields(self):
            if not isinstance(getattr(self, f.name), str):
                raise ContractError(f"fleet event field {f.name} must be a string")
        if self.schema != EVENT_SCHEMA_VERSION:
            raise ContractError(f"unknown fleet event schema {self.schema!r} (know {EVENT_SCHEMA_VERSION})")
        if self.kind not in EVENT_KINDS:
            raise ContractError(f"fleet event kind {self.kind!r} not one of {', '.join(EVENT_KINDS)}")
        for name in ("action", "result"):
            if not _TOKEN.fullmatch(getattr(self, name)):
                raise ContractError(
                    f"fleet event {name} must be a lowercase token, got {getattr(self, name)!r}"
                )
        if not self.fleet:
            raise ContractError("fleet event without fleet")
        if self.time:
            parse_time(self.time)

    @property
    def event_id(self) -> str:
        """Same facts, same id (time and detail excluded): a redelivered result dedupes downstream."""
        ident = [self.schema, self.kind, self.action, self.result, self.fleet, self.project, self.zone]
        ident += [self.mig, self.instance, self.incident_id, self.rollout_id]
        return hashlib.sha256("\x1f".join(ident).encode()).hexdigest()[:24]

    def to_message(self) -> tuple[bytes, dict[str, str]]:
        """Pub/Sub data and attributes (attributes let subscribers filter without parsing)."""
        data = json.dumps(asdict(self), separators=(",", ":"), sort_keys=True).encode()
        attributes = {
            EVENT_SCHEMA_ATTRIBUTE: self.schema,
            "kind": self.kind,
            "result": self.result,
            "fleet": self.fleet,
            "event-id": self.event_id,
        }
        return data, attributes

    @classmethod
    def from_message(cls, data: bytes, attributes: Mapping[str, str] | None = None) -> FleetEvent:
        """Parse a published event; anything off-contract raises ContractError."""
        if attributes is not None and attributes.get(EVENT_SCHEMA_ATTRIBUTE, EVENT_SCHEMA_VERSION) != (
            EVENT_SCHEMA_VERSION
        ):
            raise ContractError(f"unknown fleet event schema {attributes.get(EVENT_SCHEMA_ATTRIBUTE)!r}")
        try:
            raw = json.loads(data)
        except (ValueError, TypeError) as exc:
            raise ContractError(f"fleet event is not JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise ContractError("fleet event is not a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ContractError(f"fleet event has unknown fields: {', '.join(unknown)}")
        for required in ("kind", "action", "result", "fleet"):
            if required not in raw:
                raise ContractError(f"fleet event lacks {required}")
        try:
            return cls(**raw)
        except TypeError as exc:
            raise ContractError(f"fleet event: {exc}") from exc
