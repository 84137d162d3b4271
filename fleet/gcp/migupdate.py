"""The Compute side of `--strategy replace`: a release's instance template, the MIG's template and
update policy, targeted instance updates, and one shared view of the group while it moves.

A release template is the base template (the one `fab infra.apply` manages) with the release in its
metadata (`fleet-release`, `fleet-version`), named by a hash of its content: the same release on the
same base is the same template, so a retried or resumed rollout finds it instead of making another.

`GroupView` answers every host of a batch from one `listManagedInstances` and one
`backendServices.getHealth` per poll interval (shared by the batch's threads), plus one
`getGuestAttributes` per instance once it runs its new version: what polling costs grows with the
batches and the instances replaced, not with how long each one takes to boot.
"""

from __future__ import annotations

import copy
import hashlib
import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fleet.errors import FleetError
from fleet.gcp.compute import Compute, ComputeError
from functions import fleet_contract as contract

RELEASE_KEY = "fleet-release"
VERSION_KEY = "fleet-version"
BASE_KEY = "fleet-base-template"  # a release template names the base template it was made from
GUEST_NAMESPACE = "fleet"  # the agent's guest attributes: fleet/release, fleet/health (fleet/agent/apis.py)
_MAX_NAME = 63


def template_name(base: str, properties: Mapping[str, Any]) -> str:
    """`<base>-<10 hex of the content>`, within Compute's 63 characters."""
    digest = hashlib.sha256(json.dumps(properties, sort_keys=True).encode()).hexdigest()[:10]
    return f"{base[: _MAX_NAME - 11]}-{digest}"


def release_properties(base: Mapping[str, Any], release_id: str, version: str) -> dict[str, Any]:
    """The base template's properties with the release in the metadata (other keys kept, in order)."""
    props = copy.deepcopy(dict(base.get("properties") or {}))
    metadata = dict(props.get("metadata") or {})
    items = [
        i for i in metadata.get("items") or [] if i.get("key") not in (RELEASE_KEY, VERSION_KEY, BASE_KEY)
    ]
    items += [{"key": RELEASE_KEY, "value": release_id}, {"key": VERSION_KEY, "value": version}]
    if base.get("name"):
        items.append({"key": BASE_KEY, "value": str(base["name"])})
    metadata["items"] = items
    metadata.pop("fingerprint", None)
    props["metadata"] = metadata
    return props


def metadata_diff(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """`key: old -> new` for each metadata item that differs (what the plan shows)."""

    def items(t: Mapping[str, Any]) -> dict[str, str]:
        found = (t.get("properties") or {}).get("metadata") or {}
        return {i["key"]: str(i.get("value", "")) for i in found.get("items") or []}

    old, new = items(before), items(after)
    out = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            shown = "(long value)" if key in ("startup-script", "user-data") else None
            out.append(f"{key}: {shown or old.get(key, '-')} -> {shown or new.get(key, '-')}")
    return out


def replace_policy(batch: int, zones: int) -> dict[str, Any]:
    """The update policy a replace rollout sets: the MIG never moves on its own (OPPORTUNISTIC: new
    VMs from autohealing or a resize use the new template), each batch is recreated in place by name
    (RECREATE, maxSurge 0), and maxUnavailable says how many at once (a regional MIG: at least its
    number of zones, as Compute requires)."""
    return {
        "type": "OPPORTUNISTIC",
        "minimalAction": "REPLACE",
        "mostDisruptiveAllowedAction": "REPLACE",
        "replacementMethod": "RECREATE",
        "maxSurge": {"fixed": 0},
        "maxUnavailable": {"fixed": max(batch, zones, 1)},
    }


def _plain(message: Any) -> dict[str, Any]:
    return dict(type(message).to_dict(message, preserving_proto_field_name=False))


@dataclass
class Member:
    """One MIG member as listManagedInstances shows it."""

    name: str
    zone: str
    template: str  # its version's template name (last URL segment)
    action: str
    status: str
    health: str  # instanceHealth detailedHealthState, or ""


@dataclass
class MigMove:
    """What a replace rollout does to one MIG. `backend_service` is the LB's backend service whose
    getHealth judges the instances (empty: no LB gate, only the guest attributes)."""

    compute: Compute
    mig: contract.MigRef
    backend_service: str = ""
    poll: float = 2.0
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # ------------------------------------------------------------------ templates

    def _templates(self) -> Any:
        return self.compute.client("InstanceTemplatesClient")

    def template(self, name: str) -> dict[str, Any] | None:
        from google.api_core import exceptions as gexc

        try:
            got = self._templates().get(project=self.mig.project, instance_template=name)
        except gexc.NotFound:
            return None
        except gexc.GoogleAPICallError as exc:
            raise ComputeError(
                f"instanceTemplates.get {name}: {exc.code} {exc.message}", where=str(self.mig)
            ) from None
        return _plain(got)

    def current_template(self) -> str:
        """The MIG's instanceTemplate (name)."""
        return str(self.compute.mig(self.mig).instance_template).rsplit("/", 1)[-1]

    def base_template(self) -> str:
        """The template infra manages: the MIG's template, or the base a release template names."""
        current = self.current_template()
        found = self.template(current) or {}
        items = ((found.get("properties") or {}).get("metadata") or {}).get("items") or []
        return next((str(i.get("value")) for i in items if i.get("key") == BASE_KEY), current)

    def release_template(self, base: str, release_id: str, version: str) -> tuple[str, dict[str, Any], bool]:
        """(name, body, created): the release's template, inserted unless it exists already."""
        found = self.template(base)
        if found is None:
            raise FleetError(
                f"base instance template {base} does not exist",
                where=str(self.mig),
                hint="create it with `fab infra.apply` (it manages the MIG's template)",
            )
        props = release_properties(found, release_id, version)
        name = template_name(base, props)
        existing = self.template(name)
        if existing is not None:
            return name, existing, False
        t = self.compute.types()
        body = {
            "name": name,
            "description": f"release {release_id} ({version}) on {base}: fab rollout --strategy replace",
            "properties": props,
        }
        op = self.compute._call(
            lambda: self._templates().insert(
                project=self.mig.project,
                instance_template_resource=t.InstanceTemplate.from_json(
                    json.dumps(body), ignore_unknown_fields=True
                ),
            ),
            f"template {name}",
        )
        self.compute.wait(op, project=self.mig.project)
        return name, body, True

    def url(self, template: str) -> str:
        return f"projects/{self.mig.project}/global/instanceTemplates/{template}"

    # ------------------------------------------------------------------ the MIG

    def _igm(self) -> tuple[Any, dict[str, str], dict[str, str]]:
        client, where = self.compute._igm(self.mig)
        wait = {"region": self.mig.location} if self.mig.regional else {"zone": self.mig.location}
        return client, where, wait

    def zones(self) -> int:
        if not self.mig.regional:
            return 1
        igm = self.compute.mig(self.mig)
        return max(1, len(igm.distribution_policy.zones))

    def set_policy(self, policy: Mapping[str, Any]) -> None:
        client, where, wait = self._igm()
        t = self.compute.types()
        resource = t.InstanceGroupManager.from_json(json.dumps({"updatePolicy": policy}))
        op = self.compute._call(
            lambda: client.patch(**where, instance_group_manager_resource=resource), str(self.mig)
        )
        self.compute.wait(op, project=self.mig.project, **wait)

    def set_template(self, template: str) -> None:
        client, where, wait = self._igm()
        t = self.compute.types()
        if self.mig.regional:
            req = t.RegionInstanceGroupManagersSetTemplateRequest(instance_template=self.url(template))
            call = lambda: client.set_instance_template(  # noqa: E731
                **where, region_instance_group_managers_set_template_request_resource=req
            )
        else:
            req = t.InstanceGroupManagersSetInstanceTemplateRequest(instance_template=self.url(template))
            call = lambda: client.set_instance_template(  # noqa: E731
                **where, instance_group_managers_set_instance_template_request_resource=req
            )
        self.compute.wait(self.compute._call(call, str(self.mig)), project=self.mig.project, **wait)

    def apply(self, instances: Sequence[Member]) -> None:
        """applyUpdatesToInstances for these members (recreated in place from the MIG's template)."""
        if not instances:
            return
        client, where, wait = self._igm()
        t = self.compute.types()
        urls = [f"zones/{m.zone}/instances/{m.name}" for m in instances]
        body = {"instances": urls, "minimal_action": "REPLACE", "most_disruptive_allowed_action": "REPLACE"}
        if self.mig.regional:
            req = t.RegionInstanceGroupManagersApplyUpdatesRequest(body)
            call = lambda: client.apply_updates_to_instances(  # noqa: E731
                **where, region_instance_group_managers_apply_updates_request_resource=req
            )
        else:
            req = t.InstanceGroupManagersApplyUpdatesRequest(body)
            call = lambda: client.apply_updates_to_instances(  # noqa: E731
                **where, instance_group_managers_apply_updates_request_resource=req
            )
        self.compute.wait(self.compute._call(call, str(self.mig)), project=self.mig.project, **wait)


class GroupView:
    """The MIG's members and the LB's verdicts, fetched at most once per `poll` for every caller."""

    def __init__(self, move: MigMove) -> None:
        self.move = move
        self._lock = threading.Lock()
        self._members: dict[str, Member] = {}
        self._health: dict[str, str] = {}
        self._at = float("-inf")

    def refresh(self, force: bool = False) -> None:
        with self._lock:
            if not force and self.move.clock() - self._at < self.move.poll:
                return
            members = {}
            for m in self.move.compute.managed_instances(self.move.mig):
                zone = m.instance.split("/zones/", 1)[1].split("/", 1)[0] if "/zones/" in m.instance else ""
                health = m.instance_health[0].detailed_health_state if m.instance_health else ""
                members[m.name] = Member(
                    m.name,
                    zone,
                    m.version.instance_template.rsplit("/", 1)[-1],
                    str(m.current_action),
                    str(m.instance_status),
                    str(health),
                )
            self._members = members
            self._health = self._lb_health() if self.move.backend_service else {}
            self._at = self.move.clock()

    def _lb_health(self) -> dict[str, str]:
        t = self.move.compute.types()
        ref = self.move.mig
        scope = "regions" if ref.regional else "zones"
        group = f"projects/{ref.project}/{scope}/{ref.location}/instanceGroups/{ref.name}"
        got = self.move.compute._call(
            lambda: self.move.compute.client("BackendServicesClient").get_health(
                project=ref.project,
                backend_service=self.move.backend_service,
                resource_group_reference_resource=t.ResourceGroupReference(group=group),
            ),
            f"backend service {self.move.backend_service}",
        )
        return {
            s.instance.rsplit("/", 1)[-1]: str(s.health_state).rsplit(".", 1)[-1] for s in got.health_status
        }

    def member(self, name: str) -> Member | None:
        self.refresh()
        return self._members.get(name)

    def members(self) -> dict[str, Member]:
        self.refresh()
        return dict(self._members)

    def lb_state(self, name: str) -> str:
        """HEALTHY / UNHEALTHY / ... as the backend service sees the instance; HEALTHY without an LB gate."""
        self.refresh()
        if not self.move.backend_service:
            return "HEALTHY"
        return self._health.get(name, "UNKNOWN")

    def release_of(self, member: Member) -> dict[str, str]:
        """The agent's report (fleet/release, fleet/health, ...) of one instance."""
        attrs = self.move.compute.guest_attributes(
            self.move.mig.project, member.zone, member.name, f"{GUEST_NAMESPACE}/"
        )
        return {key: value for ns, key, value in attrs if ns == GUEST_NAMESPACE}
