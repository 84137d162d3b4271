"""The local fleet's Compute API: a `ComputeBackend` whose instances ARE the fleet's containers.

One project (`local-project`), one zone (`europe-west1-b`) and one zonal MIG (`<fleet>-mig`, i.e.
`local-mig`) whose members are the instances `local-N`. Docker is the source of truth for what
exists; this backend adds what Compute has and Docker does not: labels with their fingerprint (per
instance id, so a recreated instance starts from the template's labels, `fleet-mig=<mig>`), the
project's common metadata (the fleet lock), operations, and the MIG's currentAction per member while
an action runs.
Both are persisted in `.fleet/<fleet>/compute/state.json`, so an endpoint restart keeps them.

Actions go through `LocalFleet` and come back the way a MIG brings them back:
  reset              `docker restart` (a reboot: same disk, same host key)        RESTARTING
  recreateInstances  a new container, NEW host key, same name and ports         RECREATING, VERIFYING
  resize up          new instances at the lowest free numbers                  CREATING, VERIFYING
  resize down        non-running members first, then the newest; drained out of   DELETING
                     the LB (DRAIN until in-flight requests end, then MAINT) before deletion
  setInstanceTemplate / patch   the MIG's versions and updatePolicy (standins/mig_updater.py's
                     rules, kept in state.json); PROACTIVE recreates outdated members by itself
  applyUpdatesToInstances  the named members not on their target version: recreated in place from
                     its template (as recreateInstances), their version the new template at once
VERIFYING is the instance template's startup script, run INSIDE the instance as GCE's guest
environment runs it at every boot (a reset's reboot too): fetched from the metadata server, it
installs the on-VM agent from the release store and runs `fleet-agent boot`, which brings up the
fleet's desired release (fleet/local/template.py, fleet/local/vmservices.py, docs/agent.md). No
operator process is involved. As on Compute, MIG operations are DONE once the actions are scheduled;
the members' currentAction (and the MIG's `status.isStable`) say when they have finished.

What the MIG is made of comes from the resources `fab infra.apply` created on this endpoint at bring-up
(fleet/local/infrasetup.py; kept by standins/compute_resources.py, saved in `resources.json`): its
regional insert is adopted (the MIG answers at its regional path too); each member is stamped with the
instance template it was created from, and shows (and its metadata server serves) that template's
labels, metadata, startup script, service account and scopes, with the stand-ins' endpoints laid over
(fleet/local/fromapi.py); the MIG's `autoHealingPolicies` and the backend service (affinity, draining,
readiness check) are read back whenever they change, the latter handed to the fleet's haproxy.

With autoHealingPolicies (infra.autohealing: the local inventory sets it from LocalConfig.autohealing), on
the liveness check (`lb.liveness`: nginx's own /nginx-health, never drain-aware) the MIG applies it itself:
each member is probed on the fleet network, shown in listManagedInstances' `instanceHealth`, and one
that fails `unhealthy_threshold` checks in a row past its initial delay is recreated through the
recreateInstances path (standins/autohealing.py decides; docs/gce.md).

The endpoint runs as its own process, started by `LocalFleet.up` and stopped by `LocalFleet.down`:
    python -m fleet.local.compute_docker --state-dir .fleet/local/compute [--port N]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import http.client
import json
import os
import re
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleet.errors import FleetError
from fleet.local import fromapi, template
from fleet.local.compute_endpoint import endpoint_file, load_config, mig_name
from fleet.local.config import LocalConfig
from fleet.local.fromapi import full_url
from standins import compute_resources, mig_updater
from standins.autohealing import HEALTHY, TIMEOUT, UNHEALTHY, Autohealer, HealingPolicy, HealthCheck, Member
from standins.compute_state import (
    ACTION_COUNTERS,
    BASE_URL,
    IGM_PATCHED,
    ComputeApiError,
    ComputeBackend,
    Operation,
    Operations,
    check_apply_updates,
    check_igm_patch,
    fingerprint,
    instance_url,
    invalid,
    not_found,
    parse_instance_url,
    rfc3339,
    scope_of,
)
from standins.errors import StandinError

if TYPE_CHECKING:
    from fleet.local.instances import Instance, LocalFleet
    from standins.metadata_server import GuestAttributes

MAX_SIZE = 20  # what this machine can hold; a bigger resize is refused like a quota error
_LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")
# docker state -> Compute instance status, when no action is running on the instance
_STATUS = {
    "running": "RUNNING",
    "created": "STAGING",
    "restarting": "STAGING",
    "paused": "SUSPENDED",
    "removing": "STOPPING",
    "exited": "TERMINATED",
    "dead": "TERMINATED",
}


def template_url(config: LocalConfig) -> str:
    """The built-in template's URL: what members show until infra.apply made the fleet's template."""
    return f"{BASE_URL}/projects/{config.project}/global/instanceTemplates/{config.name}-template"


def liveness_url(config: LocalConfig) -> str:
    return f"{BASE_URL}/projects/{config.project}/global/healthChecks/{config.name}-liveness"


def healing_policy(config: LocalConfig) -> HealingPolicy | None:
    """The autohealing policy the fleet's settings ask for (`lb.liveness`; None: autohealing off): what
    `infra.apply` puts on the MIG. The endpoint applies the MIG's own policy, read back (sync_resources);
    this one serves a backend built without infra (unit tests). The check probes each VM on its app
    port (80 inside the instance), as Google's probers do."""
    if not config.autohealing:
        return None
    live = config.lb_settings.liveness
    check = HealthCheck(
        url=liveness_url(config),
        path=live.path,
        port=80,
        check_interval=float(live.check_interval),
        timeout=float(live.timeout),
        healthy_threshold=live.healthy_threshold,
        unhealthy_threshold=live.unhealthy_threshold,
    )
    return HealingPolicy(check, float(live.initial_delay))


def http_probe(address: str, check: HealthCheck) -> str:
    """One HTTP health check of a VM: HEALTHY on 200, UNHEALTHY on another answer, TIMEOUT when
    nothing answered in time (refused connections included: nothing listens)."""
    if not address:
        return TIMEOUT
    conn = http.client.HTTPConnection(address, check.port, timeout=check.timeout)
    try:
        conn.request("GET", check.path, headers={"User-Agent": "GoogleHC/1.0", "Connection": "close"})
        resp = conn.getresponse()
        resp.read()
        return HEALTHY if resp.status == 200 else UNHEALTHY
    except (OSError, http.client.HTTPException):
        return TIMEOUT
    finally:
        conn.close()


def _stable_id(*parts: str) -> int:
    """A Compute-like 19-digit id that does not change across endpoint restarts."""
    return 10**18 + int(hashlib.sha256("/".join(parts).encode()).hexdigest()[:15], 16) % (8 * 10**18)


def _initial_fingerprint(instance_id: str) -> str:
    """The label fingerprint of an instance whose labels were never set (stable across reads)."""
    return base64.b64encode(hashlib.sha256(f"labels/{instance_id}".encode()).digest()[:8]).decode()


def docker_time(text: str) -> float:
    """Docker's `Created` (RFC 3339 with nanoseconds) as epoch seconds."""
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?$", text.strip())
    if not match:
        return 0.0
    base = datetime.fromisoformat(match.group(1) + (match.group(3) or "Z").replace("Z", "+00:00"))
    return base.timestamp() + float("0." + (match.group(2) or "0")[:6])


def gce_status(docker_state: str | None, action: Action | None, container_id: str = "") -> str:
    """The instance status Compute would show, from the container's state and the running action."""
    if action is not None:
        if action.kind == "DELETING":
            return "STOPPING"
        if action.kind in ("CREATING", "RECREATING"):
            if docker_state is None:
                return "PROVISIONING"
            if action.replaces and container_id == action.replaces:
                return "STOPPING"  # the old VM is still going away
            return "STAGING"  # the new one boots (sshd, dockerd)
    if docker_state is None:
        return "TERMINATED"
    return _STATUS.get(docker_state, "TERMINATED")


@dataclass
class Action:
    """What the MIG is doing to one member right now."""

    kind: str  # CREATING | RECREATING | VERIFYING | RESTARTING | DELETING
    replaces: str = ""  # RECREATING: the container id of the instance being replaced
    template: str = ""  # CREATING/RECREATING/VERIFYING: the template of the VM it becomes (full URL)
    started: float = field(default_factory=time.time)


# --------------------------------------------------------------------------- persisted state


class _Store:
    """Labels, metadata and MIG identity in one JSON file, rewritten atomically on every change."""

    def __init__(self, path: Path, config: LocalConfig) -> None:
        self.path = path
        self.lock = threading.RLock()
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {}
        if not isinstance(data, dict):
            data = {}
        now = time.time()
        self.project: dict[str, Any] = data.get("project") or {
            "id": str(_stable_id("project", config.project)),
            "fingerprint": fingerprint(),
            "items": [],
        }
        self.labels: dict[str, dict[str, Any]] = data.get("labels") or {}
        self.mig: dict[str, Any] = data.get("mig") or {"created": now, "fingerprint": fingerprint()}
        self.attempts: dict[str, str] = data.get("attempts") or {}  # name -> last startup error
        self.save()

    def save(self) -> None:
        with self.lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            doc = {
                "version": 1,
                "project": self.project,
                "labels": self.labels,
                "mig": self.mig,
                "attempts": self.attempts,
            }
            tmp.write_text(json.dumps(doc, indent=2, sort_keys=True))
            tmp.replace(self.path)

    def labels_of(
        self, instance_id: str, initial: Mapping[str, str] | None = None
    ) -> tuple[dict[str, str], str]:
        """An instance's labels: `initial` (the template's) until someone sets them."""
        with self.lock:
            entry = self.labels.get(instance_id)
            if entry is None:
                return dict(initial or {}), _initial_fingerprint(instance_id)
            return dict(entry["labels"]), str(entry["fingerprint"])

    def set_labels(self, instance_id: str, labels: Mapping[str, str]) -> None:
        with self.lock:
            self.labels[instance_id] = {"labels": dict(labels), "fingerprint": fingerprint()}
            self.save()

    def forget(self, live_ids: set[str]) -> None:
        """Drop what is kept of instances that no longer exist (deleted or recreated with a new id)."""
        with self.lock:
            gone = [i for i in self.labels if i not in live_ids]
            for instance_id in gone:
                del self.labels[instance_id]
            origins = self.mig.get("origins") or {}
            left = [i for i in origins if i not in live_ids]  # the template an unstamped member came from
            for instance_id in left:
                del origins[instance_id]
            if gone or left:
                self.save()


# --------------------------------------------------------------------------- the backend


Startup = Callable[[str], object]


class DockerCompute(ComputeBackend):
    """Compute's view of one local fleet. Reads ask Docker each time; actions run in worker threads."""

    def __init__(
        self,
        fleet: LocalFleet,
        state_path: Path,
        startup: Startup | None = None,
        log: Callable[[str], None] | None = None,
        guest: GuestAttributes | None = None,
        metadata: Callable[[], Mapping[str, str]] | None = None,
        healing: HealingPolicy | None = None,
        overrides: Callable[[], Mapping[str, str]] | None = None,
        probe: Callable[[str, HealthCheck], str] = http_probe,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.fleet = fleet
        self.config = fleet.config
        self.project_id = self.config.project
        self.zone = self.config.zone
        self.region = self.zone.rsplit("-", 1)[0]
        self.mig = mig_name(self.config)
        self.ops = Operations()
        self.startup = startup
        self.guest = guest  # what the VMs wrote through the metadata server (fleet/local/vmservices.py)
        self.metadata = metadata or dict  # the built-in template's metadata (no infra template yet)
        self.overrides = overrides or dict  # the stand-ins' endpoints, laid over a template's metadata
        self._log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self._lock = threading.RLock()
        self._store = _Store(state_path, self.config)
        self.template_labels = template.labels(self.config)  # every member starts with these
        self._actions: dict[str, Action] = {}  # instance name -> what the MIG is doing to it
        self._pool = ThreadPoolExecutor(8, thread_name_prefix="compute-action")
        # the MIG's autohealing policy (fleet/local/config.py lb.liveness): None = no policy
        self.healer = Autohealer(healing) if healing is not None else None
        self._probe = probe
        self._clock = clock
        self._stop = threading.Event()
        self._healing_thread: threading.Thread | None = None
        # what infra.apply created here (instance templates, health checks, backend service, the MIG's
        # fields), shared with every HTTP front of this backend and saved beside the store
        self.resources = compute_resources.for_backend(self)
        self._resources_path = state_path.with_name("resources.json")
        self._specs: dict[str, fromapi.TemplateSpec | None] = {}
        self._seen: dict[str, Any] | None = None
        # member name -> when (time.monotonic) its container was last being created, replaced or
        # removed: the metadata server must not answer for it from a member list older than that
        self._member_changes: dict[str, float] = {}
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):  # none yet: a new endpoint
            self.resources.restore(json.loads(self._resources_path.read_text()))

    # --- helpers -----------------------------------------------------------------------------------

    def changed_since(self, name: str, since: float) -> bool:
        """Was member `name`'s container created, replaced or removed at or after `since`
        (time.monotonic)? A recreated VM keeps its name and, often, its address, not its id."""
        with self._lock:
            return self._member_changes.get(name, float("-inf")) >= since

    def _changing(self, names: Sequence[str], fn: Callable[[], object]) -> Callable[[], object]:
        """`fn`, marking `names` as changed when it starts and again when it ends."""

        def run() -> object:
            self._mark_changed(names)
            try:
                return fn()
            finally:
                self._mark_changed(names)

        return run

    def _mark_changed(self, names: Sequence[str]) -> None:
        now = time.monotonic()
        with self._lock:
            for name in names:
                self._member_changes[name] = now

    def _check_project(self, project: str) -> None:
        if project != self.project_id:
            raise not_found(f"projects/{project}")

    def _check_zone(self, project: str, zone: str) -> None:
        self._check_project(project)
        if zone != self.zone:
            raise not_found(f"projects/{project}/zones/{zone}")

    def _regional(self) -> bool:
        """Did infra.apply create this MIG (regionInstanceGroupManagers.insert, adopted)?"""
        with self._store.lock:
            return self._store.mig.get("region") == self.region

    def _infra_fields(self) -> dict[str, Any]:
        return self.resources.igm_fields(self.project_id, self.region, self.mig) if self._regional() else {}

    def current_template(self) -> str:
        """The MIG's instance template (full URL): what a member created now is made from. The
        updater's (setInstanceTemplate, patch), else the one infra.apply's insert named, else the
        built-in one."""
        with self._store.lock:
            versions = self._store.mig.get("versions")
        if versions:
            return full_url(next(v["instanceTemplate"] for v in versions if "targetSize" not in v))
        ref = self._infra_fields().get("instanceTemplate")
        return full_url(ref) if isinstance(ref, str) else template_url(self.config)

    def template_of(self, rec: Instance) -> str:
        """The template a member was created from (its stamp), else the MIG's template when the
        updater first changed it, else the MIG's current one."""
        if rec.template:
            return full_url(rec.template)
        with self._store.lock:
            origin = (self._store.mig.get("origins") or {}).get(rec.instance_id)
        return str(origin) if origin else self.current_template()

    def spec_of(self, url: str) -> fromapi.TemplateSpec | None:
        """An instance template created on this endpoint, as a member's spec; None: no such template
        (a fleet whose infra was not applied: the built-in template of fleet/local/template.py)."""
        with self._lock:
            if url in self._specs:
                return self._specs[url]
        found = self.resources.get(url)
        spec = fromapi.template_spec(found) if found is not None else None
        with self._lock:
            self._specs[url] = spec
        return spec

    def instance_metadata(self, rec: Instance) -> tuple[dict[str, str], str, tuple[str, ...]]:
        """(metadata, service account, scopes) of a member, as its metadata server answers them."""
        spec = self.spec_of(self.template_of(rec))
        if spec is None:
            return dict(self.metadata()), "", ()
        return {**spec.metadata, **self.overrides()}, spec.service_account, spec.scopes

    def check_new_mig(
        self, project: str, region: str, name: str, base: str, size: int, zones: list[str]
    ) -> None:
        """regionInstanceGroupManagers.insert: only this fleet's MIG, as the local fleet has it."""
        self._check_project(project)
        want = (self.region, self.mig, self.config.host_prefix)
        if (region, name, base) != want or self.zone not in zones:
            raise invalid(
                f"this local endpoint holds one MIG: {self.mig} in region {self.region} (its members in "
                f"zone {self.zone}), base instance name {self.config.host_prefix}; "
                f"got {name} in {region} over {zones}, base {base}"
            )

    def add_mig(
        self,
        project: str,
        region: str,
        name: str,
        *,
        size: int,
        base_instance_name: str,
        zones: list[str],
        **_: Any,
    ) -> None:
        """The insert's end: the MIG (the fleet's containers) is now also this regional one."""
        with self._store.lock:
            self._store.mig.update(region=region, zones=list(zones))
            self._store.save()
        self._log(
            f"MIG {name} created by regionInstanceGroupManagers.insert in {region} over {', '.join(zones)}: "
            f"it adopts the members `local.up` made (all in {self.zone}; targetSize {size} is not acted on)"
        )

    def _check_mig(self, project: str, location: str, name: str) -> None:
        self._check_project(project)
        if location == self.region and name == self.mig and self._regional():
            return
        if location != self.zone or name != self.mig:
            scope = scope_of(location)
            raise not_found(f"projects/{project}/{scope}/{location}/instanceGroupManagers/{name}")

    def _members(self) -> dict[str, Instance]:
        """Existing instances by name (Docker's view), lowest number first."""
        records = self.fleet.instances()
        self._store.forget({r.instance_id for r in records})
        return {r.name: r for r in records}

    def _mig_path(self) -> str:
        where = f"regions/{self.region}" if self._regional() else f"zones/{self.zone}"
        return f"projects/{self.project_id}/{where}/instanceGroupManagers/{self.mig}"

    def _instance_json(self, rec: Instance) -> dict[str, Any]:
        tpl = self.template_of(rec)
        spec = self.spec_of(tpl)
        initial = spec.labels if spec is not None else self.template_labels
        labels, label_fp = self._store.labels_of(rec.instance_id, initial)
        metadata, account, scopes = self.instance_metadata(rec)
        with self._lock:
            action = self._actions.get(rec.name)
        created = docker_time(rec.created)
        mig_path = self._mig_path()
        out: dict[str, Any] = {
            "kind": "compute#instance",
            "id": rec.instance_id,
            "creationTimestamp": rfc3339(created),
            "name": rec.name,
            "zone": f"{BASE_URL}/projects/{self.project_id}/zones/{self.zone}",
            "machineType": f"{BASE_URL}/projects/{self.project_id}/zones/{self.zone}/machineTypes/e2-medium",
            "status": gce_status(rec.state, action, rec.container_id),
            "labelFingerprint": label_fp,
            "selfLink": instance_url(self.project_id, self.zone, rec.name),
            "networkInterfaces": [
                {
                    "kind": "compute#networkInterface",
                    "name": "nic0",
                    "network": f"{BASE_URL}/projects/{self.project_id}/global/networks/{self.config.network}",
                    "networkIP": rec.ip,
                }
            ],
            "metadata": {
                "kind": "compute#metadata",
                "fingerprint": _initial_fingerprint("metadata/" + rec.instance_id),
                "items": [
                    {"key": "created-by", "value": mig_path},
                    {"key": "instance-template", "value": tpl.removeprefix(BASE_URL + "/")},
                    {"key": "enable-guest-attributes", "value": "TRUE"},
                    *(
                        {"key": k, "value": v}
                        for k, v in metadata.items()
                        if k not in ("created-by", "instance-template", "enable-guest-attributes")
                    ),
                ],
            },
        }
        if labels:
            out["labels"] = labels
        if spec is not None:
            out["serviceAccounts"] = [{"email": account, "scopes": list(scopes)}] if account else []
            if spec.tags:
                out["tags"] = {"items": list(spec.tags)}
        return out

    # --- reads -------------------------------------------------------------------------------------

    def project(self, project: str) -> dict[str, Any]:
        self._check_project(project)
        with self._store.lock:
            proj = self._store.project
            return {
                "kind": "compute#project",
                "id": proj["id"],
                "name": project,
                "commonInstanceMetadata": {
                    "kind": "compute#metadata",
                    "fingerprint": proj["fingerprint"],
                    "items": [dict(i) for i in proj["items"]],
                },
                "selfLink": f"{BASE_URL}/projects/{project}",
            }

    def instance(self, project: str, zone: str, name: str) -> dict[str, Any]:
        self._check_zone(project, zone)
        rec = self._members().get(name)
        if rec is None:
            raise not_found(f"projects/{project}/zones/{zone}/instances/{name}")
        return self._instance_json(rec)

    def instances(self, project: str, zone: str) -> list[dict[str, Any]]:
        self._check_zone(project, zone)
        return [self._instance_json(r) for r in self._members().values()]

    def guest_attributes(
        self, project: str, zone: str, name: str, query_path: str, key: str
    ) -> dict[str, Any]:
        """`hostkeys/<type>` = the base64 of the instance's own host key (what the guest agent publishes)."""
        self._check_zone(project, zone)
        rec = self._members().get(name)
        if rec is None:
            raise not_found(f"projects/{project}/zones/{zone}/instances/{name}")
        attributes: dict[str, str] = dict(self.guest.list(name)) if self.guest is not None else {}
        parts = rec.host_key.split()
        if rec.state == "running" and len(parts) >= 2:
            attributes[f"hostkeys/{parts[0]}"] = parts[1]
        base = {
            "kind": "compute#guestAttributes",
            "selfLink": instance_url(project, zone, name) + "/guestAttributes",
        }
        if key:
            if key not in attributes:
                raise not_found(f"projects/{project}/zones/{zone}/instances/{name}/guestAttributes/{key}")
            return {**base, "variableKey": key, "variableValue": attributes[key]}
        prefix = query_path.rstrip("/") + "/" if query_path else ""
        items = [
            {"namespace": k.split("/", 1)[0], "key": k.split("/", 1)[1], "value": v}
            for k, v in sorted(attributes.items())
            if k.startswith(prefix)
        ]
        return {**base, "queryPath": query_path, "queryValue": {"items": items}}

    def _absent(self, members: Mapping[str, Instance]) -> dict[str, int]:
        """Members under an action whose container does not exist right now -> number (being created,
        replaced, or deleted: Compute lists them until the action ends)."""
        with self._lock:
            return {n: self.config.index_of(n) for n in self._actions if n not in members}

    def _target_size(self, members: Mapping[str, Instance]) -> int:
        with self._lock:
            deleting = sum(1 for a in self._actions.values() if a.kind == "DELETING")
        return len(members) + len(self._absent(members)) - deleting

    def _igm_json(self, members: Mapping[str, Instance], location: str = "") -> dict[str, Any]:
        counts = dict.fromkeys(ACTION_COUNTERS, 0)
        with self._lock:
            names = set(members) | set(self._absent(members))
            actions = {n: (self._actions[n].kind if n in self._actions else "NONE") for n in names}
        for action in actions.values():
            camel = re.sub(r"_([a-z])", lambda m: m.group(1).upper(), action.lower())
            counts[camel] = counts.get(camel, 0) + 1
        target = self._target_size(members)
        stable = all(a == "NONE" for a in actions.values()) and len(members) == target
        regional = location == self.region
        scope = f"regions/{self.region}" if regional else f"zones/{self.zone}"
        where = f"{BASE_URL}/projects/{self.project_id}/{scope}"
        link = f"{where}/instanceGroupManagers/{self.mig}"
        fields = self._infra_fields()
        out: dict[str, Any] = {
            "kind": "compute#instanceGroupManager",
            "id": str(_stable_id("mig", self.project_id, self.zone, self.mig)),
            "creationTimestamp": rfc3339(float(self._store.mig["created"])),
            "name": self.mig,
            "region" if regional else "zone": where,
            "baseInstanceName": self.config.host_prefix,
            "instanceTemplate": self.current_template(),
            "instanceGroup": f"{where}/instanceGroups/{self.mig}",
            "fingerprint": self._store.mig["fingerprint"],
            "currentActions": counts,
            "targetSize": target,
            "selfLink": link,
            **({"autoHealingPolicies": [self.healer.policy.to_json()]} if self.healer else {}),
        }
        if regional:
            zones = self._store.mig.get("zones") or [self.zone]
            out["distributionPolicy"] = {
                "zones": [{"zone": f"{BASE_URL}/projects/{self.project_id}/zones/{z}"} for z in zones]
            }
        # what infra.apply set on the MIG (its template, autohealing policy, named port, update policy);
        # its targetSize was the insert's: the size is the members' now (a resize changes it)
        out.update({k: v for k, v in fields.items() if k not in ("fingerprint", "targetSize")})
        for policy in out.get("autoHealingPolicies") or []:
            policy["healthCheck"] = full_url(str(policy.get("healthCheck", "")))
        out["instanceTemplate"] = self.current_template()
        out["versions"] = [mig_updater.version_json(v, target) for v in self._versions()]
        out["updatePolicy"] = mig_updater.policy_json(self._policy(), target)
        reached = mig_updater.version_target_reached(self._views(members), self._versions(), target)
        out["status"] = {"isStable": stable, "versionTarget": {"isReached": reached}}
        return out

    def igm(self, project: str, location: str, name: str) -> dict[str, Any]:
        self._check_mig(project, location, name)
        return self._igm_json(self._members(), location)

    def igms(self, project: str, location: str) -> list[dict[str, Any]]:
        self._check_project(project)
        if location == self.zone or (location == self.region and self._regional()):
            return [self._igm_json(self._members(), location)]
        return []

    def managed_instances(self, project: str, location: str, name: str) -> list[dict[str, Any]]:
        self._check_mig(project, location, name)
        members = self._members()
        with self._lock:
            pending = self._absent(members)
            actions = dict(self._actions)
        attempts = dict(self._store.attempts)
        out = []
        rows: list[tuple[int, str, Instance | None]] = [(r.index, n, r) for n, r in members.items()]
        rows += [(i, n, None) for n, i in pending.items()]
        for _, member, rec in sorted(rows):
            action = actions.get(member)
            entry: dict[str, Any] = {
                "instance": instance_url(project, self.zone, member),
                "name": member,
                "instanceStatus": gce_status(
                    rec.state if rec else None, action, rec.container_id if rec else ""
                ),
                "currentAction": action.kind if action else "NONE",
                "version": {"instanceTemplate": self._template_now(member, rec, action)},
            }
            if rec is not None:
                entry["id"] = rec.instance_id
                if self.healer is not None:
                    entry["instanceHealth"] = self.healer.instance_health(member)
            if member in attempts:
                entry["lastAttempt"] = {
                    "errors": {"errors": [{"code": "STARTUP_SCRIPT_FAILED", "message": attempts[member]}]}
                }
            out.append(entry)
        return out

    def autoscaler(self, project: str, location: str, name: str) -> dict[str, Any]:
        self._check_project(project)
        raise not_found(f"projects/{project}/zones/{location}/autoscalers/{name}")

    def autoscalers(self, project: str, location: str) -> list[dict[str, Any]]:
        self._check_project(project)
        return []

    # --- actions -----------------------------------------------------------------------------------

    def set_labels(
        self,
        project: str,
        zone: str,
        name: str,
        labels: Mapping[str, str],
        label_fingerprint: str,
        request_id: str,
    ) -> Operation:
        self._check_zone(project, zone)
        rec = self._members().get(name)
        if rec is None:
            raise not_found(f"projects/{project}/zones/{zone}/instances/{name}")
        if len(labels) > 64:
            raise invalid("Invalid value for field 'resource.labels': at most 64 labels are allowed")
        for key, value in labels.items():
            if not isinstance(key, str) or not _LABEL_KEY.fullmatch(key):
                raise invalid(f"Invalid value for field 'resource.labels': '{key}'")
            if not isinstance(value, str) or not _LABEL_VALUE.fullmatch(value):
                raise invalid(f"Invalid value for field 'resource.labels': '{value}'")
        with self._store.lock:
            seen = self.ops.find(project, request_id)
            if seen is not None:
                return seen
            _, current = self._store.labels_of(rec.instance_id)
            if label_fingerprint != current:
                raise ComputeApiError(
                    412,
                    "conditionNotMet",
                    "Labels fingerprint either invalid or resource labels have changed",
                )
            op, _ = self.ops.begin(
                project,
                "zones",
                zone,
                "setLabels",
                instance_url(project, zone, name),
                int(rec.instance_id),
                request_id,
            )
            self._store.set_labels(rec.instance_id, labels)
            self.ops.finish(op)
            return op

    def set_common_metadata(self, project: str, body: Mapping[str, Any], request_id: str) -> Operation:
        self._check_project(project)
        items = body.get("items") or []
        if not isinstance(items, list) or not all(
            isinstance(i, Mapping) and isinstance(i.get("key"), str) and isinstance(i.get("value", ""), str)
            for i in items
        ):
            raise invalid("Invalid value for field 'resource.items'")
        keys = [i["key"] for i in items]
        if len(set(keys)) != len(keys):
            raise invalid("Invalid value for field 'resource.items': duplicate keys")
        with self._store.lock:
            seen = self.ops.find(project, request_id)
            if seen is not None:
                return seen
            proj = self._store.project
            if body.get("fingerprint") != proj["fingerprint"]:
                raise ComputeApiError(
                    412,
                    "conditionNotMet",
                    "Supplied fingerprint does not match current metadata fingerprint.",
                )
            op, _ = self.ops.begin(
                project,
                "global",
                "",
                "compute.projects.setCommonInstanceMetadata",
                f"{BASE_URL}/projects/{project}",
                int(proj["id"]),
                request_id,
            )
            proj["items"] = [{"key": i["key"], "value": i.get("value", "")} for i in items]
            proj["fingerprint"] = fingerprint()
            self._store.save()
            self.ops.finish(op)
            return op

    def _busy(self, name: str) -> ComputeApiError:
        action = self._actions[name].kind
        return ComputeApiError(
            400,
            "resourceNotReady",
            f"The resource 'projects/{self.project_id}/zones/{self.zone}/instances/{name}' is not ready "
            f"(action {action} in progress)",
        )

    def reset(self, project: str, zone: str, name: str, request_id: str) -> Operation:
        self._check_zone(project, zone)
        rec = self._members().get(name)
        if rec is None:
            raise not_found(f"projects/{project}/zones/{zone}/instances/{name}")
        with self._lock:
            seen = self.ops.find(project, request_id)
            if seen is not None:
                return seen
            if name in self._actions:
                raise self._busy(name)
            if rec.state != "running":
                raise ComputeApiError(
                    400,
                    "resourceNotReady",
                    f"The resource 'projects/{project}/zones/{zone}/instances/{name}' is not ready",
                )
            op, _ = self.ops.begin(
                project,
                "zones",
                zone,
                "reset",
                instance_url(project, zone, name),
                int(rec.instance_id),
                request_id,
            )
            self._actions[name] = Action("RESTARTING")

        def run() -> None:
            self.ops.running(op)
            error = self._attempt(f"reset {name}", lambda: self.fleet.restart_instance(name))
            with self._lock:
                self._actions.pop(name, None)
            self.ops.finish(op, error)
            if not error and self.startup is not None:
                # GCE runs the startup script at every boot; the instance is RUNNING meanwhile
                startup = self.startup
                self._attempt(f"startup {name} (after reset)", lambda: startup(name))

        self._pool.submit(run)
        return op

    def resize(self, project: str, location: str, name: str, size: int, request_id: str) -> Operation:
        self._check_mig(project, location, name)
        if size < 0:
            raise invalid(f"Invalid value for field 'size': '{size}'. Must be greater than or equal to 0.")
        if size > MAX_SIZE:
            raise ComputeApiError(
                403, "quotaExceeded", f"Quota 'INSTANCES' exceeded. Limit: {MAX_SIZE}.0 in zone {self.zone}."
            )
        members = self._members()
        # what the versions lack at the new size, in the updater's order: a version with a fixed or
        # percent targetSize (a canary) gets its members before the rest, as on Compute (read before
        # this backend's lock: the resource store's comes first)
        planned = mig_updater.plan(self._views(members), self._versions(), size, {}).create
        with self._lock:
            # the operation is where the request was made: the zonal MIG's, or the regional one's
            op, new = self._mig_op(project, location, "compute.instanceGroupManagers.resize", request_id)
            if not new:
                return op
            live = [n for n in members if self._actions.get(n, Action("NONE")).kind != "DELETING"]
            live += [n for n in self._absent(members) if self._actions[n].kind != "DELETING"]
            create: list[tuple[str, int]] = []
            delete: list[str] = []
            if size > len(live):
                used = {r.index for r in members.values()} | {self.config.index_of(n) for n in self._actions}
                free = (i for i in range(1, 10000) if i not in used)
                for k in range(size - len(live)):
                    index = next(free)
                    member = self.config.host_name(index)
                    template = planned[k] if k < len(planned) else self.current_template()
                    self._actions[member] = Action("CREATING", template=full_url(template))
                    create.append((member, index))
            elif size < len(live):
                # Like a MIG: members that are not running go first, then the newest.
                def order(member: str) -> tuple[int, float]:
                    rec = members.get(member)
                    running = rec is not None and rec.state == "running" and member not in self._actions
                    return (1 if running else 0, -(docker_time(rec.created) if rec else time.time()))

                for member in sorted((n for n in live if n in members), key=order)[: len(live) - size]:
                    self._actions[member] = Action("DELETING")
                    delete.append(member)

        def run() -> None:
            self.ops.running(op)
            if create:
                self._pool.submit(self._create, create)
            for member in delete:
                self._pool.submit(self._delete, member)
            self.ops.finish(op)

        self._pool.submit(run)
        return op

    def _create(self, targets: list[tuple[str, int]]) -> None:
        """New VMs, each from the template its CREATING action names (one fleet call per template)."""
        for member, _ in targets:
            self._forget_guest(member)
        groups: dict[str, list[tuple[str, int]]] = {}
        with self._lock:
            for member, index in targets:
                action = self._actions.get(member)
                groups.setdefault((action.template if action else "") or "", []).append((member, index))
        for wanted, group in groups.items():
            template = wanted or self.current_template()
            names = [n for n, _ in group]
            indices = [i for _, i in group]

            def make(indices: list[int] = indices, template: str = template) -> object:
                return self.fleet.add_instances(indices, template=template)

            error = self._attempt(f"create {', '.join(names)}", self._changing(names, make))
            with self._lock:
                for member in names:
                    if error:
                        self._actions.pop(member, None)
                    else:
                        self._actions[member] = Action("VERIFYING", template=template)
            if error:
                self._record_attempt(names, error)
                continue
            list(self._pool.map(self._startup, names))

    def _delete(self, member: str) -> None:
        # As a backend service does with connection draining: no new requests, the ones in flight
        # finish, and only then does the VM go away (a scale-in must not fail a single request).
        self._attempt(f"drain {member}", lambda: self._drain(member))
        remove = self._changing([member], lambda: self.fleet.remove_instance(member))
        self._attempt(f"delete {member}", remove)
        self._forget_guest(member)
        with self._lock:
            self._actions.pop(member, None)
        with self._store.lock:
            if self._store.attempts.pop(member, None) is not None:
                self._store.save()

    def _drain(self, member: str) -> None:
        lb = self.fleet.lb
        if lb.running() and not lb.drain(member):
            self._log(f"drain {member}: requests still in flight after {lb.settings.draining_timeout:g} s")

    def recreate(
        self, project: str, location: str, name: str, instances: list[str], request_id: str
    ) -> Operation:
        self._check_mig(project, location, name)
        members = self._members()
        targets = []
        for url in instances:
            p, zone, member = parse_instance_url(url)
            if p != project or zone != self.zone or member not in members:
                raise invalid(f"Instance '{url}' is not a member of the managed instance group '{name}'")
            targets.append(member)
        if not targets:
            raise invalid("Required field 'instances' not specified")
        with self._lock:
            seen = self.ops.find(project, request_id)
            if seen is not None:
                return seen
            return self._schedule_recreate(
                members,
                targets,
                "compute.instanceGroupManagers.recreateInstances",
                request_id,
                location=location,
            )

    def _schedule_recreate(
        self,
        members: Mapping[str, Instance],
        targets: list[str],
        op_type: str,
        request_id: str = "",
        templates: Mapping[str, str] | None = None,
        location: str = "",
    ) -> Operation:
        """RECREATING for each target, then (in workers) drain, a new VM from the member's target
        version (`templates`, else what the MIG's versions say), its startup script: what
        recreateInstances and applyUpdatesToInstances do, and what autohealing does to an unhealthy
        member."""
        if templates is None:  # read before this backend's lock (the resource store's comes first)
            wanted, _ = mig_updater.targets(
                self._views(members), self._versions(), self._target_size(members)
            )
            current = self.current_template()
            templates = {m: wanted.get(m) or current for m in targets}
        with self._lock:
            busy = [m for m in targets if self._busy_with(m)]
            if busy:
                raise self._busy(busy[0])
            # the operation is where the request was made: the zonal MIG's, or the regional one's
            op, _ = self._mig_op(self.project_id, location or self.zone, op_type, request_id)
            for member in targets:
                self._actions[member] = Action("RECREATING", members[member].container_id, templates[member])

        def run() -> None:
            self.ops.running(op)
            for member in targets:
                self._pool.submit(self._recreate, member)
            self.ops.finish(op)

        self._pool.submit(run)
        return op

    def _forget_guest(self, member: str) -> None:
        """A new or deleted VM has none of the old one's guest attributes."""
        if self.guest is not None:
            self.guest.forget(member)

    def _drain_out(self, member: str) -> None:
        """Connection draining before the VM goes, then out of the backend: the new VM (same name and
        port) is added back DOWN and serves only once the LB's health checks pass, as on GCP."""
        self._drain(member)
        lb = self.fleet.lb
        if lb.running() and member in lb.servers():
            lb.remove(member)

    def _recreate(self, member: str) -> None:
        with self._lock:
            action = self._actions.get(member)
        template = (action.template if action else "") or self.current_template()
        self._forget_guest(member)
        self._attempt(f"drain {member}", lambda: self._drain_out(member))
        error = self._attempt(
            f"recreate {member} from {template.rsplit('/', 1)[-1]}",
            self._changing([member], lambda: self.fleet.recreate_instance(member, template=template)),
        )
        with self._lock:
            if error:
                self._actions.pop(member, None)
            else:
                self._actions[member] = Action("VERIFYING", template=template)
        if error:
            self._record_attempt([member], error)
            return
        self._startup(member)

    def _busy_with(self, member: str) -> bool:
        """An action that a recreate must wait for. VERIFYING (the startup script) is not one: on GCE
        the guest's startup script is no MIG action, and a VM still booting (e.g. a broken release
        whose agent waits for its health) is recreated at once when asked. Under self._lock."""
        action = self._actions.get(member)
        return action is not None and action.kind != "VERIFYING"

    def _startup(self, member: str) -> None:
        """The instance template's startup script; a failure shows in the member's lastAttempt."""
        with self._lock:
            mine = self._actions.get(member)
        error = None
        if self.startup is not None:
            startup = self.startup
            error = self._attempt(f"startup {member}", lambda: startup(member))
        with self._lock:
            if self._actions.get(member) is not mine:
                # the VM was recreated while its startup script ran: the new VM's own startup reports
                self._log(f"startup {member}: the VM was recreated meanwhile; its result is dropped")
                return
            self._actions.pop(member, None)
        self._record_attempt([member], error)
        self._attempt("MIG updater", self._reconcile)  # a PROACTIVE update moves on

    def _record_attempt(self, members: list[str], error: str | None) -> None:
        with self._store.lock:
            for member in members:
                if error:
                    self._store.attempts[member] = error[:500]
                else:
                    self._store.attempts.pop(member, None)
            self._store.save()

    def _attempt(self, what: str, fn: Callable[[], object]) -> str | None:
        """Run one action; its error (logged) becomes the operation's or the member's error."""
        started = time.monotonic()
        try:
            fn()
        except (FleetError, StandinError) as exc:
            self._log(f"{what}: FAILED after {time.monotonic() - started:.1f} s: {exc.render()}")
            return exc.what
        except Exception as exc:  # a worker thread must not die silently
            self._log(f"{what}: FAILED: {traceback.format_exc()}")
            return f"{type(exc).__name__}: {exc}"
        self._log(f"{what}: done in {time.monotonic() - started:.1f} s")
        return None

    # --- the MIG updater: versions, updatePolicy, setInstanceTemplate, applyUpdatesToInstances ---------
    # The arithmetic is standins/mig_updater.py's (as the in-memory backend's); the moves are this
    # backend's own actions on the fleet's containers: a recreate in place (same name, ports and LB
    # server) from the member's target template, its startup script booting what that template says.
    # Members keep their names, so a PROACTIVE update must recreate (replacementMethod RECREATE).

    def _versions(self) -> list[dict[str, Any]]:
        with self._store.lock:
            versions = self._store.mig.get("versions")
        if versions:
            return [dict(v) for v in versions]
        return [{"instanceTemplate": self.current_template()}]

    def _zones(self) -> int:
        with self._store.lock:
            zones = self._store.mig.get("zones") or [self.zone]
        return len(zones) if self._regional() else 1

    def _policy(self) -> dict[str, Any]:
        with self._store.lock:
            policy = self._store.mig.get("updatePolicy")
        if policy:
            return dict(policy)
        return mig_updater.check_policy(None, self._zones(), self._regional())

    def _template_now(self, name: str, rec: Instance | None, action: Action | None) -> str:
        """A member's version: the template of the VM an action is making, else the one it runs."""
        if action is not None and action.template:
            return action.template
        return self.template_of(rec) if rec is not None else self.current_template()

    def _views(self, members: Mapping[str, Instance]) -> list[mig_updater.Member]:
        """The members as the updater's arithmetic sees them (oldest first)."""
        with self._lock:
            actions = dict(self._actions)
            absent = self._absent(members)
        rows: list[tuple[int, str, Instance | None]] = [(r.index, n, r) for n, r in members.items()]
        rows += [(i, n, None) for n, i in absent.items()]
        out = []
        for _, name, rec in sorted(rows):
            action = actions.get(name)
            ready = rec is not None and rec.state == "running" and action is None
            kind = action.kind if action is not None else "NONE"
            out.append(mig_updater.Member(name, self._template_now(name, rec, action), kind, ready))
        return out

    def _template_exists(self, url: str) -> bool:
        return self.resources.get(full_url(url)) is not None

    def update_igm(
        self, project: str, location: str, name: str, fields: Mapping[str, Any], *, check_only: bool = False
    ) -> None:
        """instanceTemplate / versions / updatePolicy: checked as Compute does (400), then kept (in
        state.json) and acted on (a PROACTIVE policy starts recreating outdated members)."""
        self._check_mig(project, location, name)
        versions: list[dict[str, Any]] | None = None
        policy: dict[str, Any] | None = None
        try:
            if "versions" in fields:
                versions = mig_updater.check_versions(fields["versions"], self._template_exists)
            elif fields.get("instanceTemplate") is not None:
                template = fields["instanceTemplate"]
                if not isinstance(template, str) or not self._template_exists(template):
                    raise mig_updater.UpdateError(
                        f"Invalid value for field 'resource.instanceTemplate': '{template}' does not exist"
                    )
                versions = [{"instanceTemplate": template}]
            if "updatePolicy" in fields:
                change = fields["updatePolicy"] or {}
                if not isinstance(change, Mapping):
                    raise mig_updater.UpdateError("Invalid value for field 'resource.updatePolicy'")
                given = {**mig_updater.policy_input(self._policy()), **change}
                # the rules of the MIG the request names: the zonal one's, or the regional one's
                regional = location == self.region
                policy = mig_updater.check_policy(given, self._zones() if regional else 1, regional)
                if policy["type"] == "PROACTIVE" and policy["replacementMethod"] != "RECREATE":
                    raise mig_updater.UpdateError(
                        "Invalid value for field 'resource.updatePolicy.replacementMethod': the local "
                        "MIG keeps its members' names and ports: a PROACTIVE update needs RECREATE"
                    )
        except mig_updater.UpdateError as exc:
            raise invalid(str(exc)) from None
        if check_only:
            return
        members = self._members()
        before = self.current_template()
        with self._store.lock:
            origins = self._store.mig.setdefault("origins", {})
            for rec in members.values():  # a member without a stamp keeps the template it came from
                if not rec.template:
                    origins.setdefault(rec.instance_id, before)
            if versions is not None:
                self._store.mig["versions"] = [
                    {**v, "instanceTemplate": full_url(v["instanceTemplate"])} for v in versions
                ]
            if policy is not None:
                self._store.mig["updatePolicy"] = policy
            self._store.mig["fingerprint"] = fingerprint()
            self._store.save()
        if versions is not None:
            self._log(f"MIG {self.mig}: template {self.current_template().rsplit('/', 1)[-1]}")
        self._reconcile()

    def _reconcile(self) -> None:
        """Start what the updater starts now: with PROACTIVE, recreations of outdated members within
        maxUnavailable. OPPORTUNISTIC starts nothing: applyUpdatesToInstances, recreateInstances,
        autohealing and a resize use the versions."""
        if self._policy()["type"] != "PROACTIVE":
            return
        members = self._members()
        moves = mig_updater.plan(
            self._views(members), self._versions(), self._target_size(members), self._policy()
        )
        with self._lock:
            todo = {m: t for m, t in moves.recreate if m in members and m not in self._actions}
        if todo:
            with contextlib.suppress(ComputeApiError):  # an action started meanwhile: the next round
                self._schedule_recreate(
                    members, list(todo), "compute.instanceGroupManagers.proactiveUpdate", templates=todo
                )

    def _mig_op(self, project: str, location: str, op_type: str, request_id: str) -> tuple[Operation, bool]:
        scope = scope_of(location)
        return self.ops.begin(
            project,
            scope,
            location,
            op_type,
            f"{BASE_URL}/projects/{project}/{scope}/{location}/instanceGroupManagers/{self.mig}",
            _stable_id("mig", self.project_id, self.zone, self.mig),
            request_id,
        )

    def _change(
        self, project: str, location: str, fields: Mapping[str, Any], op_type: str, request_id: str
    ) -> Operation:
        """An operation that lays `fields` over the MIG (checked first: a bad one is a 400, no operation)."""
        self.update_igm(project, location, self.mig, fields, check_only=True)
        with self._lock:
            op, new = self._mig_op(project, location, op_type, request_id)
        if not new:
            return op

        def run() -> None:
            self.ops.running(op)
            error = None
            try:
                self.update_igm(project, location, self.mig, fields)
            except ComputeApiError as exc:  # changed meanwhile (a template deleted)
                error = exc.message
            self.ops.finish(op, error)

        self._pool.submit(run)
        return op

    def patch_igm(
        self, project: str, location: str, name: str, body: Mapping[str, Any], request_id: str
    ) -> Operation:
        """instanceGroupManagers.patch of the zonal MIG (the regional one's goes through the resource
        store, which hands these fields here)."""
        self._check_mig(project, location, name)
        check_igm_patch(body)
        seen = self.ops.find(project, request_id)
        if seen is not None:
            return seen
        with self._store.lock:
            current = self._store.mig["fingerprint"]
        if "fingerprint" in body and body["fingerprint"] != current:
            raise ComputeApiError(
                412, "conditionNotMet", "Invalid fingerprint. The resource was modified; get it again."
            )
        fields = {k: v for k, v in body.items() if k in IGM_PATCHED}
        return self._change(project, location, fields, "patch", request_id)

    def set_instance_template(
        self, project: str, location: str, name: str, template: str, request_id: str
    ) -> Operation:
        self._check_mig(project, location, name)
        if not isinstance(template, str) or not template:
            raise invalid("Required field 'instanceTemplate' not specified")
        seen = self.ops.find(project, request_id)
        if seen is not None:
            return seen
        return self._change(
            project,
            location,
            {"instanceTemplate": template},
            "compute.instanceGroupManagers.setInstanceTemplate",
            request_id,
        )

    def apply_updates(
        self, project: str, location: str, name: str, body: Mapping[str, Any], request_id: str
    ) -> Operation:
        """applyUpdatesToInstances: each listed (or every) member not on its target version is
        recreated in place from it now, whatever maxUnavailable says (with REPLACE allowed: a template
        change needs it). DONE once scheduled; the members' currentAction shows the rest."""
        self._check_mig(project, location, name)
        everyone, urls = check_apply_updates(body)
        members = self._members()
        names = []
        for url in urls:
            p, zone, member = parse_instance_url(str(url), project)
            if p != project or zone != self.zone or member not in members:
                raise invalid(f"Instance '{url}' is not a member of the managed instance group '{name}'")
            names.append(member)
        seen = self.ops.find(project, request_id)
        if seen is not None:
            return seen
        wanted: dict[str, str] = {}
        if body.get("mostDisruptiveAllowedAction", "REPLACE") == "REPLACE":  # a template change needs it
            wanted, _ = mig_updater.targets(
                self._views(members), self._versions(), self._target_size(members)
            )
        runs = {m: self.template_of(members[m]) for m in (list(members) if everyone else names)}
        with self._lock:
            todo = {
                m: wanted[m]
                for m, now in runs.items()
                if wanted.get(m) and wanted[m] != now and not self._busy_with(m)  # busy ones: skipped
            }
            if todo:
                op = self._schedule_recreate(
                    members,
                    list(todo),
                    "compute.instanceGroupManagers.applyUpdatesToInstances",
                    request_id,
                    templates=todo,
                    location=location,
                )
            else:
                op, _ = self._mig_op(
                    project, location, "compute.instanceGroupManagers.applyUpdatesToInstances", request_id
                )
                self.ops.finish(op)
        if todo:
            self._log(f"applyUpdatesToInstances: recreating {', '.join(todo)}")
        return op

    def instance_health(self, project: str, zone: str, name: str) -> str:
        """backendServices.getHealth: the fleet's haproxy's verdict (its check is the backend service's
        readiness check): HEALTHY while it sends the member traffic; UNKNOWN without a running LB."""
        self._check_zone(project, zone)
        lb = self.fleet.lb
        if not lb.running():
            return "UNKNOWN"
        state = lb.servers().get(name)
        return "HEALTHY" if state is not None and state.serving else "UNHEALTHY"

    # --- autohealing --------------------------------------------------------------------------------

    def set_healing(self, policy: HealingPolicy | None) -> None:
        """Apply this autohealing policy from now on (None: none); a changed one starts judging afresh."""
        with self._lock:
            if (self.healer.policy if self.healer else None) == policy:
                return
            self.healer = Autohealer(policy) if policy is not None else None
        if policy is None:
            self._log("autohealing: the MIG has no autohealing policy")
            return
        check = policy.health_check
        self._log(
            f"autohealing: {check.path} on port {check.port} every {check.check_interval:g} s, "
            f"unhealthy after {check.unhealthy_threshold}, initial delay {policy.initial_delay:g} s"
        )
        self.start_autohealing()

    def start_autohealing(self) -> None:
        """Apply the MIG's autohealing policy (whichever it is at each round) in a thread until close()."""
        with self._lock:
            if self.healer is None or self._healing_thread is not None:
                return
            self._healing_thread = threading.Thread(target=self._heal_loop, name="autohealing", daemon=True)
        self._healing_thread.start()

    def _heal_loop(self) -> None:
        with ThreadPoolExecutor(4, thread_name_prefix="health-check") as probes:
            while True:
                healer = self.healer
                tick = healer.policy.health_check.check_interval if healer else 1.0  # one round each
                if self._stop.wait(tick):
                    return
                try:
                    self.heal_once(probes)
                except Exception:  # the loop must outlive one bad round (docker busy, a race)
                    self._log(f"autohealing: round failed: {traceback.format_exc()}")

    # --- what infra.apply created, read back -------------------------------------------------------

    def sync_resources(self) -> bool:
        """Save the resources when they changed, and act on them as Compute does: the MIG's
        autohealing policy, the backend service's settings on the fleet's haproxy. True on a change."""
        snap = self.resources.snapshot()
        if snap == self._seen:
            return False
        tmp = self._resources_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(snap, indent=1, sort_keys=True))
        tmp.replace(self._resources_path)
        self._seen = snap
        with self._lock:
            self._specs.clear()
        if self._regional():
            self.set_healing(fromapi.healing_policy(self._infra_fields(), self.resources.get))
        service = self.resources.get(
            f"projects/{self.project_id}/global/backendServices/{self.config.backend}"
        )
        if service is not None and self.fleet.lb.configure(
            fromapi.backend_config(service, self.resources.get)
        ):
            self._log(f"load balancer: configured from backend service {self.config.backend}")
        return True

    def watch_resources(self, interval: float = 0.5) -> None:
        """`sync_resources` in a thread of its own until close() (a patch lands when its operation is
        DONE, on the stand-in's scheduler: it is seen within `interval`)."""

        def loop() -> None:
            while True:
                try:
                    self.sync_resources()
                except (FleetError, OSError) as exc:
                    self._log(f"resources: {exc}")
                except Exception:  # the loop must outlive one bad round
                    self._log(f"resources: {traceback.format_exc()}")
                if self._stop.wait(interval):
                    return

        threading.Thread(target=loop, name="resources", daemon=True).start()

    def heal_once(self, probes: ThreadPoolExecutor | None = None) -> list[str]:
        """One round: probe the members that are due, recreate those found unhealthy; their names."""
        healer = self.healer
        if healer is None:
            return []
        members = self._members()
        with self._lock:
            busy = set(self._actions)
        views = [
            Member(name, rec.state == "running", name in busy, docker_time(rec.started or rec.created))
            for name, rec in members.items()
        ]
        due = healer.due(views, self._clock())
        if not due:
            return []
        check = healer.policy.health_check

        def probe(name: str) -> tuple[str, str]:
            return name, self._probe(members[name].ip, check)

        results = list(probes.map(probe, due)) if probes is not None else [probe(n) for n in due]
        healed = []
        for name, result in results:
            if healer.record(name, result, self._clock()):
                healed.append(name)
                self._autoheal(members, name, result)
        return healed

    def _autoheal(self, members: Mapping[str, Instance], name: str, result: str) -> None:
        assert self.healer is not None
        check = self.healer.policy.health_check
        self._log(
            f"autohealing: {name} is {result} ({check.unhealthy_threshold} failed checks of {check.path} "
            "in a row): recreate"
        )
        try:
            self._schedule_recreate(members, [name], "compute.instances.repair.recreateInstance")
        except ComputeApiError as exc:  # an action started meanwhile: judged again once it has ended
            self._log(f"autohealing: {name}: not recreated: {exc}")

    def patch_autoscaler(
        self, project: str, location: str, name: str, body: Mapping[str, Any], request_id: str, replace: bool
    ) -> Operation:
        self._check_project(project)
        raise not_found(f"projects/{project}/zones/{location}/autoscalers/{name}")

    # --- inspection --------------------------------------------------------------------------------

    def idle(self) -> bool:
        with self._lock:
            return not self._actions

    def dump(self) -> dict[str, Any]:
        members = self._members()
        with self._store.lock:
            store = {"labels": dict(self._store.labels), "attempts": dict(self._store.attempts)}
        return {
            "projects": {self.project_id: self.project(self.project_id)},
            "instances": [self._instance_json(r) for r in members.values()],
            "migs": [
                self._igm_json(members)
                | {"members": self.managed_instances(self.project_id, self.zone, self.mig)}
            ],
            "operations": [op.to_json() for op in self.ops.all()],
            "store": store,
        }

    def close(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)


def serve(directory: Path, port: int) -> int:
    from fleet.local import template
    from fleet.local.instances import LocalFleet
    from fleet.local.vmservices import VmServices
    from standins.compute_api import ComputeApi
    from standins.metadata_server import GuestAttributes

    config = load_config(directory)
    fleet = LocalFleet(config)

    def log(line: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)

    guest = GuestAttributes(directory / "guest-attributes.json")
    services = VmServices(config, directory, guest)
    backend = DockerCompute(
        fleet,
        directory / "state.json",
        lambda name: template.run_startup_script(fleet, name, log),
        log,
        guest=guest,
        metadata=services.metadata_items,
        overrides=services.endpoint_items,
    )
    try:
        api = ComputeApi(backend, port=port).start()
    except OSError as exc:
        if port == 0:
            raise
        log(f"port {port} is taken ({exc}); using a free one")
        api = ComputeApi(backend, port=0).start()
    services.start(backend)
    backend.watch_resources()  # the autohealing policy and the LB's settings: what infra.apply made
    tmp = endpoint_file(config).with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "port": api.port, "url": api.url}))
    tmp.replace(endpoint_file(config))
    log(
        f"compute endpoint for fleet {config.name!r} on {api.url}: "
        f"{config.project}/{config.zone}/{mig_name(config)}"
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    services.stop()
    api.stop()
    backend.close()
    log("stopped (actions still running were abandoned)")
    # Like deleting a MIG: actions in flight stop where they are, nobody waits for a startup script.
    os._exit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fleet.local.compute_docker", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--state-dir", type=Path, required=True, help="the fleet's compute state directory")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0 = any free port)")
    args = parser.parse_args(argv)
    try:
        return serve(args.state_dir, args.port)
    except FleetError as exc:
        print(exc.render(), file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
