"""Sealed releases in the store: content-addressed, written once (if_generation_match=0), so publishing
the same release twice is a no-op and a release id never names two contents."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fleet.commands import base
from fleet.errors import FleetError
from fleet.release import sealed as sealing
from fleet.store.location import Store

if TYPE_CHECKING:
    from fleet.release.bundle import Bundle

MANIFEST = "manifest.json"
ARCHIVE = "files.tar"


def _rel(rid: str, leaf: str) -> str:
    return f"releases/{base.release_id(rid)}/{leaf}"


def seal_bundle(bundle: Bundle, pinned_refs: dict[str, str], roles: Sequence[str]) -> sealing.Sealed:
    """A rendered Bundle in the store's form; `pinned_refs` = KEY -> projects/P/secrets/S/versions/N."""
    return sealing.seal(
        {p: (f.data, f.mode) for p, f in bundle.files.items()},
        bundle.env,
        bundle.secret_keys,
        pinned_refs,
        release_id=bundle.release_id,
        version=bundle.version,
        services=bundle.services,
        disabled_services=bundle.disabled_services,
        roles=roles,
    )


def _create(store: Store, rel: str, data: bytes, content_type: str) -> bool:
    """Write the object unless it exists; True when this call wrote it."""
    from google.api_core import exceptions

    blob = store.blob(rel)
    try:
        store.call(
            "publish the release",
            lambda: blob.upload_from_string(data, content_type=content_type, if_generation_match=0),
            rel,
        )
        return True
    except exceptions.PreconditionFailed:
        return False


def publish(store: Store, sealed: sealing.Sealed) -> bool:
    """Upload one sealed release (manifest last, so a manifest present means a complete release). True
    if it was new; an existing one must hold the same content, else its id names two releases."""
    rid = sealed.release_id
    hint = f"the stored copy is damaged or was written by hand: delete releases/{rid}/ in the bucket "
    hint += "(roles/storage.objectAdmin) and publish again"
    if not _create(store, _rel(rid, ARCHIVE), sealed.archive, "application/x-tar"):
        there = read_archive(store, rid)
        if there is None or sealing.sha256(there) != sealing.sha256(sealed.archive):
            raise FleetError(
                "the stored archive differs from the one being published under the same id",
                where=f"{store.url}/{_rel(rid, ARCHIVE)}",
                hint=hint,
            )
    if _create(store, _rel(rid, MANIFEST), sealed.manifest_bytes(), "application/json"):
        return True
    try:
        manifest = read_manifest(store, rid)
    except FleetError:
        manifest = None
    if manifest is None or manifest != sealed.manifest:
        raise FleetError(
            "the stored manifest differs from the one being published under the same id",
            where=f"{store.url}/{_rel(rid, MANIFEST)}",
            hint=hint,
        )
    return False


def _read(store: Store, rel: str) -> bytes | None:
    from google.api_core import exceptions

    blob = store.blob(rel)
    try:
        return store.call("read the store", blob.download_as_bytes, rel)
    except exceptions.NotFound:
        return None


def read_manifest(store: Store, rid: str) -> dict[str, Any] | None:
    """The release's manifest, checked; None if the store has no such release."""
    data = _read(store, _rel(rid, MANIFEST))
    if data is None:
        return None
    where = f"{store.url}/{_rel(rid, MANIFEST)}"
    try:
        obj = json.loads(data)
    except ValueError:
        raise FleetError("the manifest is not JSON", where=where) from None
    return sealing.check_manifest(obj, where=where)


def read_archive(store: Store, rid: str) -> bytes | None:
    """The release's files.tar; None if absent."""
    return _read(store, _rel(rid, ARCHIVE))
