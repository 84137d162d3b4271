"""The fleet's desired release: one small JSON object, moved only with a generation precondition, so two
operators never lose each other's update (the second gets a clear error), and only once a release has
become the fleet's release (end of a successful deploy, rollout or rollback)."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from fleet.commands import base
from fleet.errors import FleetError
from fleet.release import sealed as sealing
from fleet.store import releases
from fleet.store.location import Store

DESIRED = "desired.json"
FORMAT = 1
Action = Literal["rollout", "deploy", "rollback", "publish"]
ACTIONS = ("rollout", "deploy", "rollback", "publish")


def variant_key(roles: Sequence[str]) -> str:
    """The variant a host with these roles runs: sorted roles joined by '+' ("app", "app+beat")."""
    return "+".join(sorted({base.name(r, "role") for r in roles} or {"app"}))


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(frozen=True)
class Desired:
    """What every VM of the fleet should run (the contract's desired.json)."""

    version: str
    variants: dict[str, str]  # variant key -> release id
    published_by: str
    published_at: str
    action: str
    rollout_id: str | None = None
    previous: dict[str, Any] | None = None  # {"version", "variants"} of the one it replaced
    format: int = FORMAT
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("extra")
        return data

    def to_bytes(self) -> bytes:
        return (json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, obj: object, where: str) -> Desired:
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            raise FleetError(f"not a format-{FORMAT} desired release", where=where)
        variants = obj.get("variants")
        if not isinstance(variants, dict) or not variants:
            raise FleetError("desired release without variants", where=where)
        for rid in variants.values():
            base.release_id(rid)
        previous = obj.get("previous")
        known = {"format", "version", "variants", "published_by", "published_at", "action", "rollout_id"}
        return cls(
            version=base.version(obj.get("version")),
            variants={str(k): str(v) for k, v in variants.items()},
            published_by=str(obj.get("published_by") or ""),
            published_at=str(obj.get("published_at") or ""),
            action=str(obj.get("action") or ""),
            rollout_id=obj.get("rollout_id") or None,
            previous=previous if isinstance(previous, dict) else None,
            extra={k: v for k, v in obj.items() if k not in known | {"previous"}},
        )


def read(store: Store) -> tuple[Desired | None, int]:
    """The desired release and its object generation (0 when the fleet has none yet)."""
    from google.api_core import exceptions

    blob = store.blob(DESIRED)
    try:
        data = store.call("read the desired release", blob.download_as_bytes, DESIRED)
    except exceptions.NotFound:
        return None, 0
    where = f"{store.url}/{DESIRED}"
    try:
        obj = json.loads(data)
    except ValueError:
        raise FleetError("desired.json is not JSON", where=where) from None
    return Desired.from_json(obj, where), int(blob.generation or 0)


def move(store: Store, new: Desired, expect_generation: int) -> int:
    """Write `new` if desired.json is still at `expect_generation` (0: absent); the new generation.
    Another writer in between: a FleetError naming who moved it, never a lost update."""
    from google.api_core import exceptions

    blob = store.blob(DESIRED)
    blob.cache_control = "no-store"  # a VM must never read a stale pointer through a cache
    try:
        store.call(
            "move the desired release",
            lambda: blob.upload_from_string(
                new.to_bytes(), content_type="application/json", if_generation_match=expect_generation
            ),
            DESIRED,
        )
    except exceptions.PreconditionFailed:
        try:
            now, _ = read(store)
        except FleetError:
            now = None
        by = f" (by {now.published_by} at {now.published_at}, {now.action} of {now.version})" if now else ""
        raise FleetError(
            f"desired release changed under you{by}",
            where=f"{store.url}/{DESIRED}",
            hint="someone else published meanwhile: check `fab store.show` and `fab history`, then "
            "deploy/rollout again if your release should still be the fleet's",
        ) from None
    return int(blob.generation or 0)


def publish_fleet(
    store: Store,
    sealed_by_variant: Mapping[str, sealing.Sealed],
    *,
    version: str,
    action: str,
    actor: str,
    rollout_id: str | None,
) -> Desired:
    """Upload every variant's sealed release, then move desired to them (the old one becomes
    `previous`). Call it when the release has become the fleet's: after a successful deploy, rollout
    or rollback, so VMs created meanwhile kept getting the previous release."""
    if action not in ACTIONS:
        raise FleetError(f"unknown publish action {action!r}", where=store.url)
    if not sealed_by_variant:
        raise FleetError("nothing to publish: no variant", where=store.url)
    for sealed in sealed_by_variant.values():
        releases.publish(store, sealed)
    old, generation = read(store)
    new = Desired(
        version=base.version(version),
        variants={key: s.release_id for key, s in sorted(sealed_by_variant.items())},
        published_by=actor,
        published_at=now_iso(),
        action=action,
        rollout_id=rollout_id,
        previous={"version": old.version, "variants": dict(old.variants)} if old else None,
    )
    move(store, new, generation)
    return new
