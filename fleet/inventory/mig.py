"""Hosts from managed instance groups: the members of `gce.migs`, read from Compute at load time.

Members appear and vanish as the group heals and scales, so they are not written down: the
inventory lists the MIGs (defaults.yaml, `gce.migs`) and each member becomes a host named after its
instance, with `gce.{project, zone, instance, instance_id}` from Compute, its internal IP as
`hostname`, and the groups/defaults data merged over it like any host. What Compute says about the
instance right now is kept in `gce.{mig, status, current_action, labels, internal_ip, created}`.

When discovery runs (`gce.discovery`):
  auto (default)  gce.migs is set and hosts.yaml lists no host
  mig             always with gce.migs; a host of the same name in hosts.yaml overrides that member
  off             never (hosts.yaml only)

Members that are not RUNNING, or that have a MIG action in progress, stay in the inventory (so
`fab hosts` shows them) and are skipped by every task that connects, with the reason (`skip_reason`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from fleet.commands.roles import beat_host as beat_host  # the rule the on-VM agent applies too
from fleet.errors import InventoryError

if TYPE_CHECKING:
    from fleet.gcp.compute import Compute, ManagedInstance

_HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def wanted(defaults: Mapping[str, Any], static_hosts: Mapping[str, Any]) -> bool:
    """Does this inventory take its hosts (also) from its MIGs?"""
    gce = (defaults.get("data") or {}).get("gce") or {}
    mode = gce.get("discovery", "auto")
    if mode == "off" or not gce.get("migs"):
        return False
    return mode == "mig" or not static_hosts


def mig_refs(gce: Mapping[str, Any], where: str) -> list[Any]:
    from fleet.errors import FleetError
    from fleet.gcp.compute import mig_ref

    refs = []
    for i, raw in enumerate(gce.get("migs") or []):
        spec = {"project": gce.get("project"), **raw}
        try:
            refs.append(mig_ref(spec, where=f"{where}: gce.migs[{i}]"))
        except FleetError as exc:
            raise InventoryError(exc.what, where=exc.where, hint=exc.hint) from None
    return refs


def member_spec(member: ManagedInstance, groups: Sequence[str]) -> dict[str, Any]:
    """A hosts.yaml-shaped entry for one member (validated like any host)."""
    return {
        "hostname": member.internal_ip or member.name,
        "groups": list(groups),
        "data": {
            "gce": {
                "project": member.mig.project,
                "zone": member.zone,
                "instance": member.name,
                **({"instance_id": member.id} if member.id else {}),
            },
            "lb": {"server": member.name},
        },
    }


def runtime_facts(member: ManagedInstance) -> dict[str, Any]:
    """What Compute says about the member now (not settings: merged after validation)."""
    return {
        "mig": str(member.mig),
        "status": member.status,
        "current_action": member.current_action,
        "labels": dict(member.labels),
        "internal_ip": member.internal_ip,
        "created": member.created,
    }


def discover(
    defaults: Mapping[str, Any],
    known_groups: Iterable[str],
    where: str,
    compute: Compute | None = None,
) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """{host name: (host spec, runtime facts)} for every member of every MIG of the inventory."""
    from fleet.gcp.compute import Compute, endpoint_for

    gce = (defaults.get("data") or {}).get("gce") or {}
    known = set(known_groups)
    common = list(gce.get("member_groups") or [])
    unknown = [g for g in common if g not in known]
    if unknown:
        raise InventoryError(
            f"gce.member_groups names unknown group(s) {', '.join(unknown)}",
            where=where,
            hint="define them in groups.yaml",
        )
    api = compute or Compute(endpoint_for(gce.get("api_endpoint")))
    found: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    for ref in mig_refs(gce, where):
        groups = ([ref.name] if ref.name in known else []) + [g for g in common if g != ref.name]
        for member in api.mig_members(ref):
            if not _HOST_NAME.fullmatch(member.name):
                raise InventoryError(f"member {member.name!r} of {ref} is not a valid host name", where=where)
            if member.name in found:
                raise InventoryError(
                    f"instance {member.name} is a member of two MIGs ({found[member.name][1]['mig']}, {ref})",
                    where=where,
                    hint="host names must be unique: list each MIG once",
                )
            found[member.name] = (member_spec(member, groups), runtime_facts(member))
    return found
