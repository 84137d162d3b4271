"""The Compute resources `fab infra.apply` manages, behind the local Compute endpoint.

Networks, subnetworks, routers (with their NAT), firewalls, instance templates, health checks,
backend services, URL maps, target HTTP(S) proxies, SSL certificates, global forwarding rules, and
the creation and patching of regional managed instance groups. One generic store with Compute's REST
semantics:

- insert: 400 on an invalid body (names, required fields, CIDRs, enums), 404 when a referenced
  resource does not exist, 409 alreadyExists (also while an insert of that name is still running);
- get 404; list with `filter` (`name = "x"`, `name eq x`, `description != "y"`, AND) and paging
  (`maxResults`, `pageToken`, `nextPageToken`);
- patch (JSON merge patch) / update (PUT, whole resource) where Compute has them; kinds that carry a
  fingerprint (backend services, URL maps, target proxies, MIGs) refuse a stale one with 412
  conditionNotMet, and the first four also a missing one;
- delete: 400 resourceInUseByAnotherResource while another resource references it;
- every write is a long-running operation on the backend's `Operations` (requestId dedupe,
  PENDING -> RUNNING -> DONE on a scheduler; the change lands when the operation is DONE), so
  `operations.wait` and `globalOperations.wait` of compute_api.py serve them;
- `fail_next(method, message)` makes the next operation of a method finish DONE with that error and
  change nothing (what a quota or a bad image does on the real API).

A regional MIG inserted here is created in the backend with `add_mig` (the in-memory backend:
members per targetSize over the distribution zones; the Docker-backed local MIG adopts the local
fleet's instances); a backend without it refuses the insert. The MIG's own fields this module knows
(instanceTemplate, autoHealingPolicies, namedPorts, updatePolicy, description) are kept here and
laid over the backend's view of the MIG.

Imports nothing of fleet/ (the stand-ins are Google's side of the wire).
"""

from __future__ import annotations

import contextlib
import copy
import ipaddress
import itertools
import json
import random
import re
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from standins.compute_state import (
    BASE_URL,
    ComputeApiError,
    ComputeBackend,
    Scheduler,
    fingerprint,
    invalid,
    not_found,
    rfc3339,
)

_NAME = re.compile(r"[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?")
_REGION = re.compile(r"[a-z]+-[a-z]+[0-9]+")
_ZONE = re.compile(r"[a-z]+-[a-z]+[0-9]+-[a-z]")
_REF = re.compile(r"(?:.*/)?projects/([^/]+)/(global|regions/[^/]+|zones/[^/]+)/([A-Za-z]+)/([^/]+)$")
_P = r"/compute/v1/projects/(?P<project>[^/]+)"
_GLOBAL = r"/global"
_REGIONAL = r"/regions/(?P<region>[^/]+)"
MAX_RESULTS = 500

Handler = Callable[[dict[str, str], dict[str, str], Any], tuple[int, Any]]
Route = tuple[str, str, str, Handler]


def conflict(message: str) -> ComputeApiError:
    return ComputeApiError(409, "alreadyExists", message)


def stale() -> ComputeApiError:
    return ComputeApiError(
        412,
        "conditionNotMet",
        "Invalid fingerprint. The resource was modified since the fingerprint was read; get it again.",
    )


def ref_key(url: str) -> tuple[str, str, str, str] | None:
    """(project, 'global' | 'regions/R' | 'zones/Z', collection, name) of a full or relative URL."""
    match = _REF.fullmatch(url) if isinstance(url, str) else None
    return match.groups() if match else None  # type: ignore[return-value]


@dataclass(frozen=True)
class Kind:
    collection: str  # URL path segment: firewalls, instanceTemplates, ...
    method: str  # Compute's method prefix: firewalls, globalForwardingRules, ...
    kind: str  # compute#firewall
    regional: bool = False
    patch: bool = True
    update: bool = False
    fingerprint: bool = False  # the resource has a fingerprint a write must carry (412 if stale/missing)
    refs: tuple[str, ...] = ()  # fields holding references checked at insert/patch (dotted, [] = list)


KINDS: dict[str, Kind] = {
    k.collection: k
    for k in (
        Kind("networks", "networks", "compute#network", patch=True),
        Kind("subnetworks", "subnetworks", "compute#subnetwork", regional=True, refs=("network",)),
        Kind("routers", "routers", "compute#router", regional=True, update=True, refs=("network",)),
        Kind("firewalls", "firewalls", "compute#firewall", update=True, refs=("network",)),
        Kind(
            "instanceTemplates",
            "instanceTemplates",
            "compute#instanceTemplate",
            patch=False,
            refs=("properties.networkInterfaces[].network", "properties.networkInterfaces[].subnetwork"),
        ),
        Kind("healthChecks", "healthChecks", "compute#healthCheck", update=True),
        Kind(
            "backendServices",
            "backendServices",
            "compute#backendService",
            update=True,
            fingerprint=True,
            refs=("healthChecks[]",),
        ),
        Kind("urlMaps", "urlMaps", "compute#urlMap", update=True, fingerprint=True, refs=("defaultService",)),
        Kind(
            "targetHttpProxies",
            "targetHttpProxies",
            "compute#targetHttpProxy",
            fingerprint=True,
            refs=("urlMap",),
        ),
        Kind(
            "targetHttpsProxies",
            "targetHttpsProxies",
            "compute#targetHttpsProxy",
            fingerprint=True,
            refs=("urlMap", "sslCertificates[]"),
        ),
        Kind("sslCertificates", "sslCertificates", "compute#sslCertificate", patch=False),
        Kind(
            "forwardingRules",
            "globalForwardingRules",
            "compute#forwardingRule",
            patch=False,
            refs=("target",),
        ),
    )
}

# fields the server fills in when the client leaves them out (so a client must not diff on them)
_DEFAULTS: dict[str, dict[str, Any]] = {
    "networks": {
        "routingConfig": {"routingMode": "REGIONAL"},
        "networkFirewallPolicyEnforcementOrder": "AFTER_CLASSIC_FIREWALL",
    },
    "subnetworks": {"privateIpGoogleAccess": False, "stackType": "IPV4_ONLY", "purpose": "PRIVATE"},
    "firewalls": {"priority": 1000, "direction": "INGRESS", "disabled": False},
    "healthChecks": {"checkIntervalSec": 5, "timeoutSec": 5, "healthyThreshold": 2, "unhealthyThreshold": 2},
    "backendServices": {
        "sessionAffinity": "NONE",
        "timeoutSec": 30,
        "loadBalancingScheme": "EXTERNAL",
        "connectionDraining": {"drainingTimeoutSec": 300},
        "affinityCookieTtlSec": 0,
    },
    "forwardingRules": {"IPProtocol": "TCP", "loadBalancingScheme": "EXTERNAL", "networkTier": "PREMIUM"},
}
_ENUMS: dict[str, dict[str, tuple[str, ...]]] = {
    "backendServices": {
        "sessionAffinity": (
            "NONE",
            "CLIENT_IP",
            "CLIENT_IP_PROTO",
            "CLIENT_IP_PORT_PROTO",
            "GENERATED_COOKIE",
            "HEADER_FIELD",
            "HTTP_COOKIE",
            "CLIENT_IP_NO_DESTINATION",
        ),
        "protocol": ("HTTP", "HTTPS", "HTTP2", "TCP", "SSL", "UDP", "GRPC"),
        "loadBalancingScheme": (
            "EXTERNAL",
            "EXTERNAL_MANAGED",
            "INTERNAL_MANAGED",
            "INTERNAL",
            "INTERNAL_SELF_MANAGED",
        ),
    },
    "healthChecks": {"type": ("HTTP", "HTTPS", "HTTP2", "TCP", "SSL", "GRPC")},
    "firewalls": {"direction": ("INGRESS", "EGRESS")},
    "sslCertificates": {"type": ("MANAGED", "SELF_MANAGED")},
}


@dataclass
class _Record:
    kind: Kind
    project: str
    location: str  # "" (global) or the region
    name: str
    id: int
    created: float
    body: dict[str, Any]
    fingerprint: str = ""

    @property
    def where(self) -> str:
        return "global" if not self.location else f"regions/{self.location}"

    def path(self) -> str:
        return f"projects/{self.project}/{self.where}/{self.kind.collection}/{self.name}"

    def to_json(self) -> dict[str, Any]:
        out = {**copy.deepcopy(_DEFAULTS.get(self.kind.collection, {})), **copy.deepcopy(self.body)}
        for key, value in _DEFAULTS.get(self.kind.collection, {}).items():
            if isinstance(value, dict) and isinstance(self.body.get(key), dict):
                out[key] = {**value, **self.body[key]}
        out.update(
            kind=self.kind.kind,
            id=str(self.id),
            name=self.name,
            creationTimestamp=rfc3339(self.created),
            selfLink=f"{BASE_URL}/{self.path()}",
        )
        if self.location:
            out["region"] = f"{BASE_URL}/projects/{self.project}/regions/{self.location}"
        if self.kind.fingerprint or self.fingerprint:
            out["fingerprint"] = self.fingerprint
        if self.kind.collection == "sslCertificates" and out.get("type") == "MANAGED":
            domains = (out.get("managed") or {}).get("domains") or []
            out["managed"] = {
                **(out.get("managed") or {}),
                "status": "PROVISIONING",
                "domainStatus": dict.fromkeys(domains, "PROVISIONING"),
            }
        return out


class ComputeResources:
    """The store of one backend (shared by every HTTP front of it: see `for_backend`)."""

    def __init__(self, backend: ComputeBackend, op_seconds: float | None = None) -> None:
        self.backend = backend
        self.op_seconds = float(
            op_seconds if op_seconds is not None else getattr(backend, "op_seconds", 0.05)
        )
        self._lock = threading.RLock()
        self._records: dict[tuple[str, str, str, str], _Record] = {}  # (project, location, collection, name)
        self._pending: set[tuple[str, str, str, str]] = set()
        self._igm: dict[tuple[str, str, str], dict[str, Any]] = {}  # MIG fields kept here
        self._fail: dict[str, list[str]] = {}
        self._ids = itertools.count(2_000_000_000_000 + random.randrange(10**9))
        self._scheduler: Scheduler | None = None
        # a backend that runs the MIG updater owns a MIG's template, versions and update policy,
        # and creates members from the templates kept here
        self._updater = type(backend).update_igm is not ComputeBackend.update_igm
        if getattr(backend, "template_lookup", False) is None:
            backend.template_lookup = self.template_json  # type: ignore[attr-defined]

    def template_json(self, url: str) -> dict[str, Any] | None:
        """The instance template a URL names, as instanceTemplates.get answers, or None."""
        key = ref_key(url)
        if key is None or key[1] != "global" or key[2] != "instanceTemplates":
            return None
        with self._lock:
            rec = self._records.get((key[0], "", "instanceTemplates", key[3]))
            return rec.to_json() if rec is not None else None

    # --- test hooks ------------------------------------------------------------------------------

    def fail_next(self, method: str, message: str = "injected operation failure", times: int = 1) -> None:
        """The next `times` operations of `method` (e.g. backendServices.insert) end DONE with an error."""
        with self._lock:
            self._fail.setdefault(method, []).extend([message] * times)

    def dump(self) -> dict[str, list[dict[str, Any]]]:
        with self._lock:
            out: dict[str, list[dict[str, Any]]] = {}
            for rec in sorted(self._records.values(), key=lambda r: (r.kind.collection, r.name)):
                out.setdefault(rec.kind.collection, []).append(rec.to_json())
            return out

    def close(self) -> None:
        if self._scheduler is not None:
            self._scheduler.close()

    # --- reads and persistence for a backend that acts on these resources (the Docker-backed MIG) --

    def get(self, url: str) -> dict[str, Any] | None:
        """The resource a (full or relative) URL names, as the API returns it; None when absent."""
        key = ref_key(url)
        if key is None or key[2] not in KINDS:
            return None
        project, where, collection, name = key
        location = where.split("/", 1)[1] if where.startswith("regions/") else ""
        with self._lock:
            rec = self._records.get((project, location, collection, name))
            return rec.to_json() if rec is not None else None

    def igm_fields(self, project: str, region: str, name: str) -> dict[str, Any]:
        """The MIG fields this store keeps (instanceTemplate, autoHealingPolicies, ...); {} if none."""
        with self._lock:
            return copy.deepcopy(self._igm.get((project, region, name)) or {})

    def snapshot(self) -> dict[str, Any]:
        """Everything this store keeps, as JSON (a backend that outlives its process saves it)."""
        with self._lock:
            records = [
                {
                    "collection": r.kind.collection,
                    "project": r.project,
                    "location": r.location,
                    "name": r.name,
                    "id": r.id,
                    "created": r.created,
                    "body": copy.deepcopy(r.body),
                    "fingerprint": r.fingerprint,
                }
                for r in sorted(self._records.values(), key=lambda r: (r.kind.collection, r.location, r.name))
            ]
            igms = [
                {"project": p, "region": reg, "name": n, "fields": copy.deepcopy(f)}
                for (p, reg, n), f in sorted(self._igm.items())
            ]
        return {"version": 1, "records": records, "igms": igms}

    def restore(self, doc: dict[str, Any]) -> None:
        """Load what `snapshot` returned (at start, before any request)."""
        with self._lock:
            for item in doc.get("records") or []:
                kind = KINDS[item["collection"]]
                key = (item["project"], item["location"], kind.collection, item["name"])
                self._records[key] = _Record(
                    kind,
                    item["project"],
                    item["location"],
                    item["name"],
                    int(item["id"]),
                    float(item["created"]),
                    dict(item["body"]),
                    str(item.get("fingerprint") or ""),
                )
            for item in doc.get("igms") or []:
                self._igm[(item["project"], item["region"], item["name"])] = dict(item["fields"])

    # --- routes ----------------------------------------------------------------------------------

    def routes(self) -> list[Route]:
        """(HTTP verb, path regex, Compute method, handler), for ComputeApi's route table."""
        out: list[Route] = []
        for kind in KINDS.values():
            base = _P + (_REGIONAL if kind.regional else _GLOBAL) + "/" + kind.collection
            one = base + r"/(?P<name>[^/]+)"
            m = kind.method
            out += [
                ("POST", base + "$", f"{m}.insert", self._h_insert(kind)),
                ("GET", base + "$", f"{m}.list", self._h_list(kind)),
                ("GET", one + "$", f"{m}.get", self._h_get(kind)),
                ("DELETE", one + "$", f"{m}.delete", self._h_delete(kind)),
            ]
            if kind.patch:
                out.append(("PATCH", one + "$", f"{m}.patch", self._h_write(kind, replace=False)))
            if kind.update:
                out.append(("PUT", one + "$", f"{m}.update", self._h_write(kind, replace=True)))
        out = [
            (verb, path, method, self._dedupe(fn) if verb != "GET" else fn) for verb, path, method, fn in out
        ]
        health = _P + _GLOBAL + r"/backendServices/(?P<name>[^/]+)/getHealth$"
        out.append(("POST", health, "backendServices.getHealth", self._get_health))
        fr = _P + _GLOBAL + r"/forwardingRules/(?P<name>[^/]+)/setTarget$"
        igm = _P + _REGIONAL + r"/instanceGroupManagers"
        out += [
            ("POST", fr, "globalForwardingRules.setTarget", self._dedupe(self._set_target)),
            ("POST", igm + "$", "regionInstanceGroupManagers.insert", self._dedupe(self._igm_insert)),
            ("GET", igm + "$", "regionInstanceGroupManagers.list", self._igm_list),
            ("GET", igm + r"/(?P<name>[^/]+)$", "regionInstanceGroupManagers.get", self._igm_get),
            (
                "PATCH",
                igm + r"/(?P<name>[^/]+)$",
                "regionInstanceGroupManagers.patch",
                self._dedupe(self._igm_patch),
            ),
        ]
        return out

    def _dedupe(self, handler: Handler) -> Handler:
        """A write repeated with the requestId of an earlier one answers that operation and does
        nothing again (Compute's retry semantics), before any check that the first write changed."""

        def wrapped(p: dict[str, str], q: dict[str, str], body: Any) -> tuple[int, Any]:
            region = p.get("region")
            if region is not None and not _REGION.fullmatch(region):
                raise invalid(f"Invalid value for field 'region': '{region}'")
            seen = self.backend.ops.find(p["project"], _request_id(q))
            if seen is not None:
                return 200, seen.to_json()
            return handler(p, q, body)

        return wrapped

    # --- helpers ---------------------------------------------------------------------------------

    def _sched(self) -> Scheduler:
        with self._lock:
            if self._scheduler is None:
                self._scheduler = Scheduler()
            return self._scheduler

    @staticmethod
    def _location(kind: Kind, p: dict[str, str]) -> str:
        region = p.get("region", "")
        if kind.regional and not _REGION.fullmatch(region):
            raise invalid(f"Invalid value for field 'region': '{region}'")
        return region

    def _project(self, project: str) -> None:
        try:
            self.backend.project(project)
        except ComputeApiError:
            raise not_found(f"projects/{project}") from None

    def _record(self, kind: Kind, project: str, location: str, name: str) -> _Record:
        rec = self._records.get((project, location, kind.collection, name))
        if rec is None:
            where = f"regions/{location}" if location else "global"
            raise not_found(f"projects/{project}/{where}/{kind.collection}/{name}")
        return rec

    def _exists(self, url: str) -> bool:
        key = ref_key(url)
        if key is None:
            return False
        project, where, collection, name = key
        if collection == "instanceGroups" and where.startswith("regions/"):
            try:
                self.backend.igm(project, where.split("/", 1)[1], name)
                return True
            except ComputeApiError:
                return False
        if collection not in KINDS:
            return True  # images, machine types, ...: not ours to check
        location = where.split("/", 1)[1] if where.startswith("regions/") else ""
        return (project, location, collection, name) in self._records

    def _check_refs(self, kind: Kind | None, body: dict[str, Any], fields: tuple[str, ...]) -> None:
        for path in fields:
            for value in _values(body, path):
                if not isinstance(value, str) or ref_key(value) is None:
                    raise invalid(f"Invalid value for field 'resource.{path.replace('[]', '')}': '{value}'")
                if not self._exists(value):
                    raise not_found(value.split("/compute/v1/")[-1])

    def _begin(
        self,
        method: str,
        project: str,
        location: str,
        op_type: str,
        target: str,
        target_id: int,
        query: dict[str, str],
        apply: Callable[[], object],
        undo: Callable[[], object] = lambda: None,
    ) -> tuple[int, Any]:
        """A long-running operation that runs `apply` when DONE (or `undo`, failing, if one was injected)."""
        request_id = _request_id(query)
        scope = "regions" if location else "global"
        op, fresh = self.backend.ops.begin(project, scope, location, op_type, target, target_id, request_id)
        if not fresh:
            return 200, op.to_json()
        with self._lock:
            failures = self._fail.get(method) or []
            error = failures.pop(0) if failures else None

        def running() -> None:
            self.backend.ops.running(op)

        def done() -> None:
            with self._lock:
                if error is None:
                    apply()
                else:
                    undo()
            self.backend.ops.finish(op, error)

        self._sched().later(self.op_seconds / 2, running)
        self._sched().later(self.op_seconds, done)
        return 200, op.to_json()

    # --- generic handlers ------------------------------------------------------------------------

    def _h_insert(self, kind: Kind) -> Handler:
        def handler(p: dict[str, str], q: dict[str, str], body: Any) -> tuple[int, Any]:
            location = self._location(kind, p)
            project = p["project"]
            with self._lock:
                self._project(project)
                resource = _body(body)
                name = _name(resource)
                _validate(kind, resource, location)
                self._check_refs(kind, resource, kind.refs)
                key = (project, location, kind.collection, name)
                if key in self._records or key in self._pending:
                    where = f"regions/{location}" if location else "global"
                    raise conflict(
                        f"The resource 'projects/{project}/{where}/{kind.collection}/{name}' already exists"
                    )
                rec = _Record(
                    kind,
                    project,
                    location,
                    name,
                    next(self._ids),
                    time.time(),
                    {k: v for k, v in resource.items() if k not in _SERVER_FIELDS},
                    fingerprint() if kind.fingerprint else "",
                )
                self._pending.add(key)

            def apply() -> None:
                self._pending.discard(key)
                rec.created = time.time()
                self._records[key] = rec

            return self._begin(
                f"{kind.method}.insert",
                project,
                location,
                "insert",
                f"{BASE_URL}/{rec.path()}",
                rec.id,
                q,
                apply,
                lambda: self._pending.discard(key),
            )

        return handler

    def _h_get(self, kind: Kind) -> Handler:
        def handler(p: dict[str, str], q: dict[str, str], body: Any) -> tuple[int, Any]:
            location = self._location(kind, p)
            with self._lock:
                self._project(p["project"])
                return 200, self._record(kind, p["project"], location, p["name"]).to_json()

        return handler

    def _h_list(self, kind: Kind) -> Handler:
        def handler(p: dict[str, str], q: dict[str, str], body: Any) -> tuple[int, Any]:
            location = self._location(kind, p)
            project = p["project"]
            with self._lock:
                self._project(project)
                items = [
                    r.to_json()
                    for (proj, loc, coll, _), r in sorted(self._records.items())
                    if (proj, loc, coll) == (project, location, kind.collection)
                ]
            items = [i for i in items if matches(q.get("filter", ""), i)]
            try:
                size = int(q.get("maxResults") or MAX_RESULTS)
                start = int(q.get("pageToken") or 0)
            except ValueError:
                raise invalid("Invalid value for field 'maxResults' or 'pageToken'") from None
            if not 0 < size <= MAX_RESULTS or start < 0:
                raise invalid(f"Invalid value for field 'maxResults': {size}. Must be in [0, 500].")
            where = f"regions/{location}" if location else "global"
            out: dict[str, Any] = {
                "kind": kind.kind + "List",
                "id": f"projects/{project}/{where}/{kind.collection}",
                "items": items[start : start + size],
                "selfLink": f"{BASE_URL}/projects/{project}/{where}/{kind.collection}",
            }
            if start + size < len(items):
                out["nextPageToken"] = str(start + size)
            return 200, out

        return handler

    def _h_write(self, kind: Kind, replace: bool) -> Handler:
        verb = "update" if replace else "patch"

        def handler(p: dict[str, str], q: dict[str, str], body: Any) -> tuple[int, Any]:
            location = self._location(kind, p)
            project = p["project"]
            with self._lock:
                self._project(project)
                rec = self._record(kind, project, location, p["name"])
                change = _body(body)
                if "name" in change and change["name"] != rec.name:
                    raise invalid(
                        f"Invalid value for field 'resource.name': '{change['name']}'. "
                        "The name cannot change."
                    )
                if kind.fingerprint and change.get("fingerprint") != rec.fingerprint:
                    raise stale()
                clean = {k: v for k, v in change.items() if k not in _SERVER_FIELDS}
                new = {**clean, "name": rec.name} if replace else merge_patch(rec.body, clean)
                _validate(kind, new, location)
                self._check_refs(kind, new, kind.refs)

            def apply() -> None:
                rec.body = new
                if kind.fingerprint:
                    rec.fingerprint = fingerprint()

            return self._begin(
                f"{kind.method}.{verb}", project, location, verb, f"{BASE_URL}/{rec.path()}", rec.id, q, apply
            )

        return handler

    def _h_delete(self, kind: Kind) -> Handler:
        def handler(p: dict[str, str], q: dict[str, str], body: Any) -> tuple[int, Any]:
            location = self._location(kind, p)
            project = p["project"]
            with self._lock:
                self._project(project)
                rec = self._record(kind, project, location, p["name"])
                user = self._user_of(rec)
                if user:
                    raise ComputeApiError(
                        400,
                        "resourceInUseByAnotherResource",
                        f"The {kind.kind.split('#')[1]} resource '{rec.path()}' "
                        f"is already being used by '{user}'",
                    )
            key = (project, location, kind.collection, rec.name)
            return self._begin(
                f"{kind.method}.delete",
                project,
                location,
                "delete",
                f"{BASE_URL}/{rec.path()}",
                rec.id,
                q,
                lambda: self._records.pop(key, None),
            )

        return handler

    def _user_of(self, rec: _Record) -> str:
        """The path of a resource (or MIG) that references `rec`, or ''."""
        target = rec.path()
        for other in self._records.values():
            if other is not rec and target in _refs_in(other.body):
                return other.path()
        for (project, region, name), fields in self._igm.items():
            if target in _refs_in(fields):
                return f"projects/{project}/regions/{region}/instanceGroupManagers/{name}"
        return ""

    def _set_target(self, p: dict[str, str], q: dict[str, str], body: Any) -> tuple[int, Any]:
        kind = KINDS["forwardingRules"]
        project = p["project"]
        with self._lock:
            self._project(project)
            rec = self._record(kind, project, "", p["name"])
            target = _body(body).get("target")
            if not isinstance(target, str):
                raise invalid("Required field 'target' not specified")
            self._check_refs(None, {"target": target}, ("target",))

        def apply() -> None:
            rec.body = {**rec.body, "target": target}

        return self._begin(
            "globalForwardingRules.setTarget",
            project,
            "",
            "setTarget",
            f"{BASE_URL}/{rec.path()}",
            rec.id,
            q,
            apply,
        )

    # --- a backend service's view of its instance groups -------------------------------------------

    def _get_health(self, p: dict[str, str], q: dict[str, str], body: Any) -> tuple[int, Any]:
        """backendServices.getHealth: each instance of one backend group, as the health check sees it."""
        project = p["project"]
        with self._lock:
            self._project(project)
            rec = self._record(KINDS["backendServices"], project, "", p["name"])
            group = _body(body).get("group")
            key = ref_key(group) if isinstance(group, str) else None
            if key is None or key[2] != "instanceGroups":
                raise invalid(f"Invalid value for field 'resourceGroupReference.group': '{group}'")
            groups = {ref_key(str(b.get("group", ""))) for b in rec.body.get("backends") or []}
            if key not in groups:
                raise invalid(f"Instance group '{group}' is not a backend of backend service '{p['name']}'")
        location = key[1].split("/", 1)[1]
        members = self.backend.managed_instances(key[0], location, key[3])
        port = next(
            (
                int(n.get("port", 80))
                for n in (self._igm.get((key[0], location, key[3])) or {}).get("namedPorts") or []
            ),
            80,
        )
        statuses = []
        for m in members:
            _, zone_part, _, inst_name = ref_key(m["instance"]) or ("", "zones/-", "", m["name"])
            zone = zone_part.split("/", 1)[1]
            statuses.append(
                {
                    "instance": m["instance"],
                    "ipAddress": f"10.128.0.{int(m.get('id', 0)) % 250 + 2}",
                    "port": port,
                    "healthState": self.backend.instance_health(key[0], zone, inst_name),
                }
            )
        return 200, {"kind": "compute#backendServiceGroupHealth", "healthStatus": statuses}

    # --- regional MIGs ---------------------------------------------------------------------------

    def _igm_fields(self, body: dict[str, Any]) -> dict[str, Any]:
        return {k: copy.deepcopy(v) for k, v in body.items() if k in _IGM_FIELDS}

    def _igm_check(self, fields: dict[str, Any], region: str) -> None:
        template = fields.get("instanceTemplate")
        if template is not None:
            self._check_refs(None, {"t": template}, ("t",))
        for i, policy in enumerate(fields.get("autoHealingPolicies") or []):
            if not isinstance(policy, dict) or not isinstance(policy.get("healthCheck"), str):
                raise invalid(f"Invalid value for field 'resource.autoHealingPolicies[{i}].healthCheck'")
            self._check_refs(None, policy, ("healthCheck",))
            delay = policy.get("initialDelaySec", 0)
            if not isinstance(delay, int) or not 0 <= delay <= 3600:
                raise invalid(
                    f"Invalid value for field 'resource.autoHealingPolicies[{i}].initialDelaySec': '{delay}'"
                )
        for i, port in enumerate(fields.get("namedPorts") or []):
            if (
                not isinstance(port, dict)
                or not _NAME.fullmatch(str(port.get("name", "")))
                or not (isinstance(port.get("port"), int) and 1 <= port["port"] <= 65535)
            ):
                raise invalid(f"Invalid value for field 'resource.namedPorts[{i}]'")

    def _igm_insert(self, p: dict[str, str], q: dict[str, str], body: Any) -> tuple[int, Any]:
        project, region = p["project"], p["region"]
        if not _REGION.fullmatch(region):
            raise invalid(f"Invalid value for field 'region': '{region}'")
        add_mig = getattr(self.backend, "add_mig", None)
        if add_mig is None:
            raise invalid(
                "regionInstanceGroupManagers.insert: this local backend cannot create a MIG "
                "(the Docker-backed local MIG is made by `fab local.up`)"
            )
        with self._lock:
            self._project(project)
            resource = _body(body)
            name = _name(resource)
            base = resource.get("baseInstanceName")
            if not isinstance(base, str) or not re.fullmatch(r"[a-z][-a-z0-9]{0,57}", base):
                raise invalid(f"Invalid value for field 'resource.baseInstanceName': '{base}'")
            size = resource.get("targetSize", 0)
            if not isinstance(size, int) or size < 0:
                raise invalid(f"Invalid value for field 'resource.targetSize': '{size}'")
            if not isinstance(resource.get("instanceTemplate"), str):
                raise invalid("Required field 'resource.instanceTemplate' not specified")
            zones = []
            for item in (resource.get("distributionPolicy") or {}).get("zones") or []:
                zone = str((item or {}).get("zone", "")).rsplit("/", 1)[-1]
                if not _ZONE.fullmatch(zone) or zone.rsplit("-", 1)[0] != region:
                    raise invalid(f"Invalid value for field 'resource.distributionPolicy.zones': '{zone}'")
                zones.append(zone)
            zones = zones or [f"{region}-b", f"{region}-c", f"{region}-d"]
            fields = self._igm_fields(resource)
            self._igm_check(fields, region)
            check_new = getattr(self.backend, "check_new_mig", None)
            if check_new is not None:  # a backend that can hold only a MIG of its own kind says so here
                check_new(project, region, name, base, size, zones)
            key = (project, region, name)
            exists = True
            try:
                self.backend.igm(project, region, name)
            except ComputeApiError:
                exists = False
            if exists or key in self._igm:
                raise conflict(
                    f"The resource 'projects/{project}/regions/{region}/instanceGroupManagers/{name}' "
                    "already exists"
                )
            template_key = ref_key(fields["instanceTemplate"])
            labels: dict[str, str] = {}
            if template_key is not None:
                tpl = self._records.get((template_key[0], "", "instanceTemplates", template_key[3]))
                labels = dict(((tpl.body.get("properties") or {}).get("labels") or {}) if tpl else {})
            fields["fingerprint"] = fingerprint()
            self._igm[key] = fields  # reserved now: a second insert is refused while this one runs

        owned = {k: fields.pop(k) for k in _UPDATER_FIELDS & set(fields)} if self._updater else {}

        def apply() -> None:
            add_mig(
                project,
                region,
                name,
                size=size,
                age=0.0,
                base_instance_name=base,
                zones=zones,
                template_labels=labels,
                template=resource["instanceTemplate"],
            )
            if owned:
                self.backend.update_igm(project, region, name, owned)

        link = f"{BASE_URL}/projects/{project}/regions/{region}/instanceGroupManagers/{name}"
        return self._begin(
            "regionInstanceGroupManagers.insert",
            project,
            region,
            "insert",
            link,
            next(self._ids),
            q,
            apply,
            lambda: self._igm.pop(key, None),
        )

    def _igm_view(self, project: str, region: str, name: str) -> dict[str, Any]:
        view = self.backend.igm(project, region, name)
        fields = self._igm.get((project, region, name))
        if fields:
            view.update(copy.deepcopy(fields))
        return view

    def _igm_get(self, p: dict[str, str], q: dict[str, str], body: Any) -> tuple[int, Any]:
        if not _REGION.fullmatch(p["region"]):
            raise invalid(f"Invalid value for field 'region': '{p['region']}'")
        with self._lock:
            return 200, self._igm_view(p["project"], p["region"], p["name"])

    def _igm_list(self, p: dict[str, str], q: dict[str, str], body: Any) -> tuple[int, Any]:
        project, region = p["project"], p["region"]
        if not _REGION.fullmatch(region):
            raise invalid(f"Invalid value for field 'region': '{region}'")
        with self._lock:
            items = [self._igm_view(project, region, i["name"]) for i in self.backend.igms(project, region)]
        link = f"{BASE_URL}/projects/{project}/regions/{region}/instanceGroupManagers"
        return 200, {
            "kind": "compute#regionInstanceGroupManagerList",
            "id": link,
            "items": [i for i in items if matches(q.get("filter", ""), i)],
            "selfLink": link,
        }

    def _igm_patch(self, p: dict[str, str], q: dict[str, str], body: Any) -> tuple[int, Any]:
        project, region, name = p["project"], p["region"], p["name"]
        with self._lock:
            view = self._igm_view(project, region, name)
            change = _body(body)
            if "fingerprint" in change and change["fingerprint"] != view.get("fingerprint"):
                raise stale()
            unknown = sorted(set(change) - _IGM_FIELDS - {"fingerprint", "name"})
            if unknown:
                raise invalid(
                    f"Invalid value for field 'resource.{unknown[0]}': "
                    f"this stand-in patches {sorted(_IGM_FIELDS)}"
                )
            key = (project, region, name)
            owned: dict[str, Any] = {}
            if self._updater:  # the backend checks and keeps these itself
                owned = {k: change[k] for k in _UPDATER_FIELDS & set(change)}
                self.backend.update_igm(project, region, name, owned, check_only=True)
                change = {k: v for k, v in change.items() if k not in _UPDATER_FIELDS}
            current = self._igm.get(key) or {
                k: v
                for k, v in self._igm_fields(view).items()
                if not (self._updater and k in _UPDATER_FIELDS)
            }
            new = merge_patch(current, self._igm_fields(change))
            self._igm_check(new, region)

        def apply() -> None:
            self._igm[key] = {**new, "fingerprint": fingerprint()}
            if owned:
                # checked above; a template deleted meanwhile leaves the versions as they were
                with contextlib.suppress(ComputeApiError):
                    self.backend.update_igm(project, region, name, owned)

        link = f"{BASE_URL}/projects/{project}/regions/{region}/instanceGroupManagers/{name}"
        return self._begin(
            "regionInstanceGroupManagers.patch",
            project,
            region,
            "patch",
            link,
            int(view.get("id") or 0),
            q,
            apply,
        )


_IGM_FIELDS = frozenset(
    {"instanceTemplate", "versions", "autoHealingPolicies", "namedPorts", "updatePolicy", "description"}
)
_UPDATER_FIELDS = frozenset({"instanceTemplate", "versions", "updatePolicy"})
_SERVER_FIELDS = frozenset(
    {"id", "kind", "selfLink", "creationTimestamp", "fingerprint", "region", "selfLinkWithId"}
)

_STORES: weakref.WeakKeyDictionary[ComputeBackend, ComputeResources] = weakref.WeakKeyDictionary()
_STORES_LOCK = threading.Lock()


def for_backend(backend: ComputeBackend) -> ComputeResources:
    """The one resource store of `backend` (every HTTP front of a backend shares it)."""
    with _STORES_LOCK:
        store = _STORES.get(backend)
        if store is None:
            store = _STORES[backend] = ComputeResources(backend)
        return store


# --- validation ----------------------------------------------------------------------------------


def _request_id(query: dict[str, str]) -> str:
    import uuid

    raw = query.get("requestId", "")
    if not raw:
        return ""
    try:
        if uuid.UUID(raw).int != 0:
            return raw
    except ValueError:
        pass
    raise invalid(f"Invalid value for field 'requestId': '{raw}'. The request id must be a valid UUID.")


def _body(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise invalid("Required field 'resource' not specified")
    return body


def _name(resource: dict[str, Any]) -> str:
    name = resource.get("name")
    if not isinstance(name, str) or not name:
        raise invalid("Required field 'resource.name' not specified")
    if not _NAME.fullmatch(name):
        raise invalid(
            f"Invalid value for field 'resource.name': '{name}'. "
            "Must be a match of regex '(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)'"
        )
    return name


def _cidr(value: Any, field_name: str) -> None:
    try:
        ipaddress.ip_network(str(value), strict=True)
    except ValueError:
        raise invalid(f"Invalid value for field '{field_name}': '{value}'. Must be a CIDR range.") from None


def _require(resource: dict[str, Any], *paths: str) -> None:
    for path in paths:
        if not list(_values(resource, path)):
            raise invalid(f"Required field 'resource.{path.replace('[]', '')}' not specified")


def _validate(kind: Kind, resource: dict[str, Any], location: str) -> None:
    c = kind.collection
    for field_name, allowed in _ENUMS.get(c, {}).items():
        value = resource.get(field_name)
        if value is not None and value not in allowed:
            raise invalid(f"Invalid value for field 'resource.{field_name}': '{value}'")
    if c == "subnetworks":
        _require(resource, "network", "ipCidrRange")
        _cidr(resource["ipCidrRange"], "resource.ipCidrRange")
    elif c == "routers":
        _require(resource, "network")
        for i, nat in enumerate(resource.get("nats") or []):
            if not isinstance(nat, dict) or not _NAME.fullmatch(str(nat.get("name", ""))):
                raise invalid(f"Invalid value for field 'resource.nats[{i}].name'")
            if nat.get("natIpAllocateOption") not in ("AUTO_ONLY", "MANUAL_ONLY"):
                raise invalid(f"Invalid value for field 'resource.nats[{i}].natIpAllocateOption'")
            if nat.get("sourceSubnetworkIpRangesToNat") not in (
                "ALL_SUBNETWORKS_ALL_IP_RANGES",
                "ALL_SUBNETWORKS_ALL_PRIMARY_IP_RANGES",
                "LIST_OF_SUBNETWORKS",
            ):
                raise invalid(f"Invalid value for field 'resource.nats[{i}].sourceSubnetworkIpRangesToNat'")
    elif c == "firewalls":
        _require(resource, "network")
        if not resource.get("allowed") and not resource.get("denied"):
            raise invalid("Required field 'resource.allowed' not specified")
        for cidr in resource.get("sourceRanges") or []:
            _cidr(cidr, "resource.sourceRanges")
        for rule in (resource.get("allowed") or []) + (resource.get("denied") or []):
            if not isinstance(rule, dict) or not rule.get("IPProtocol"):
                raise invalid("Invalid value for field 'resource.allowed[].IPProtocol'")
    elif c == "instanceTemplates":
        _require(resource, "properties.machineType", "properties.disks[]", "properties.networkInterfaces[]")
        labels = (resource.get("properties") or {}).get("labels") or {}
        for key, value in labels.items():
            if not re.fullmatch(r"[a-z][a-z0-9_-]{0,62}", key) or not re.fullmatch(
                r"[a-z0-9_-]{0,63}", str(value)
            ):
                raise invalid(f"Invalid value for field 'resource.properties.labels': '{key}'")
    elif c == "healthChecks":
        _require(resource, "type")
        sub = {
            "HTTP": "httpHealthCheck",
            "HTTPS": "httpsHealthCheck",
            "HTTP2": "http2HealthCheck",
            "TCP": "tcpHealthCheck",
            "SSL": "sslHealthCheck",
            "GRPC": "grpcHealthCheck",
        }[resource["type"]]
        if not isinstance(resource.get(sub), dict):
            raise invalid(f"Required field 'resource.{sub}' not specified")
        path = resource[sub].get("requestPath")
        if path is not None and not str(path).startswith("/"):
            raise invalid(f"Invalid value for field 'resource.{sub}.requestPath': '{path}'")
        timeout, interval = resource.get("timeoutSec", 5), resource.get("checkIntervalSec", 5)
        if isinstance(timeout, int) and isinstance(interval, int) and timeout > interval:
            raise invalid("timeoutSec should be less than or equal to checkIntervalSec")
    elif c == "urlMaps":
        _require(resource, "defaultService")
    elif c in ("targetHttpProxies", "targetHttpsProxies"):
        _require(resource, "urlMap")
        if c == "targetHttpsProxies":
            _require(resource, "sslCertificates[]")
    elif c == "sslCertificates":
        if resource.get("type", "SELF_MANAGED") == "MANAGED":
            _require(resource, "managed.domains[]")
        else:
            _require(resource, "certificate", "privateKey")
    elif c == "forwardingRules":
        _require(resource, "target")
        port_range = str(resource.get("portRange", ""))
        if port_range and not re.fullmatch(r"[0-9]{1,5}(-[0-9]{1,5})?", port_range):
            raise invalid(f"Invalid value for field 'resource.portRange': '{port_range}'")


def _values(node: Any, path: str) -> list[Any]:
    """Values at a dotted path; `x[]` walks every element of list x."""
    current = [node]
    for part in path.split("."):
        listed = part.endswith("[]")
        key = part.removesuffix("[]")
        nxt: list[Any] = []
        for item in current:
            if isinstance(item, dict) and item.get(key) not in (None, "", [], {}):
                value = item[key]
                if listed:
                    nxt.extend(value if isinstance(value, list) else [])
                else:
                    nxt.append(value)
        current = nxt
    return current


def _refs_in(node: Any) -> set[str]:
    """Every resource path referenced anywhere in `node` (normalised to projects/...)."""
    out: set[str] = set()
    if isinstance(node, dict):
        for value in node.values():
            out |= _refs_in(value)
    elif isinstance(node, list):
        for value in node:
            out |= _refs_in(value)
    elif isinstance(node, str):
        key = ref_key(node)
        if key is not None:
            out.add("projects/{}/{}/{}/{}".format(*key))
    return out


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge patch (what Compute's PATCH methods apply)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


# --- list filters --------------------------------------------------------------------------------

_TERM = re.compile(
    r"""\s*\(?\s*(?P<field>[A-Za-z][A-Za-z0-9_.]*)\s*(?P<op>=|!=|:|\beq\b|\bne\b)\s*"""
    r"""(?P<value>"(?:[^"\\]|\\.)*"|'[^']*'|[^\s()]+)\s*\)?\s*"""
)


def matches(expression: str, item: dict[str, Any]) -> bool:
    """Compute's list filter: terms `field = "v"`, `field != "v"`, `field eq REGEX`, `field ne REGEX`,
    `labels.k:*`, joined by spaces or AND. Anything else is a 400, as on the real API."""
    expression = expression.strip()
    if not expression:
        return True
    pos = 0
    ok = True
    while pos < len(expression):
        match = _TERM.match(expression, pos)
        if match is None:
            raise invalid(f"Invalid list filter expression '{expression}'.")
        pos = match.end()
        rest = expression[pos:]
        if rest.upper().startswith("AND "):
            pos += 4
        elif rest.upper().startswith("OR "):
            raise invalid(f"Invalid list filter expression '{expression}': OR is not supported here.")
        ok = ok and _term(match["field"], match["op"], match["value"], item)
    return ok


def _term(field_name: str, op: str, raw: str, item: dict[str, Any]) -> bool:
    value = raw[1:-1] if raw[:1] in "\"'" and raw[-1:] == raw[:1] and len(raw) >= 2 else raw
    actual: Any = item
    for part in field_name.split("."):
        actual = actual.get(part) if isinstance(actual, dict) else None
    if op == ":":
        return actual is not None and (value == "*" or str(actual) == value)
    text = "" if actual is None else (json.dumps(actual) if isinstance(actual, (dict, list)) else str(actual))
    if isinstance(actual, bool):
        text = "true" if actual else "false"
    if op in ("eq", "ne"):
        try:
            hit = re.fullmatch(value, text) is not None
        except re.error:
            raise invalid(f"Invalid regular expression '{value}' in list filter.") from None
        return hit if op == "eq" else not hit
    return (text == value) if op == "=" else (text != value)
