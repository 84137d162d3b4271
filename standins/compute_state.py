"""State behind the local Compute endpoint: the backend interface and an in-memory backend.

The HTTP layer (compute_api.py) only parses requests and renders JSON; what an action does lives
behind `ComputeBackend`, so a backend driven by the local Docker fleet can replace the in-memory one
(resize creates containers, reset restarts one, recreate replaces one). Operations go through
`Operations`, which gives every backend Compute's requestId semantics (same id, same operation, no
second action) and honest PENDING -> RUNNING -> DONE transitions.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import itertools
import json
import random
import re
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from standins import mig_updater
from standins.errors import StandinError

BASE_URL = "https://www.googleapis.com/compute/v1"
_REGION = re.compile(r"[a-z]+-[a-z]+[0-9]+")  # europe-west1
_ZONE = re.compile(r"[a-z]+-[a-z]+[0-9]+-[a-z]")  # europe-west1-b
_NAME = re.compile(r"[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?")
_LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")
# a full URL, projects/P/zones/Z/instances/N, or the partial zones/Z/instances/N (Compute takes all three)
_INSTANCE_URL = re.compile(r"(?:(?:.*/)?projects/([^/]+)/)?zones/([^/]+)/instances/([^/]+)")
# currentAction counters of a MIG (instanceGroupManagers.get): shared by every backend
ACTION_COUNTERS = (
    "none",
    "creating",
    "creatingWithoutRetries",
    "verifying",
    "recreating",
    "deleting",
    "abandoning",
    "restarting",
    "refreshing",
    "suspending",
    "resuming",
    "stopping",
    "starting",
)


class ComputeApiError(Exception):
    """An error the endpoint returns in Compute's JSON error format."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "code": self.status,
                "message": self.message,
                "errors": [{"message": self.message, "domain": "global", "reason": self.reason}],
            }
        }


def not_found(path: str) -> ComputeApiError:
    return ComputeApiError(404, "notFound", f"The resource '{path}' was not found")


def invalid(message: str) -> ComputeApiError:
    return ComputeApiError(400, "invalid", message)


IGM_PATCHED = ("instanceTemplate", "versions", "updatePolicy")  # what the stand-ins' igm patch changes


def check_apply_updates(body: Mapping[str, Any]) -> tuple[bool, list[Any]]:
    """applyUpdatesToInstances: its actions, and exactly one of `instances` / `allInstances`; returns
    (all instances, the instance URLs). Membership is the backend's to check."""
    for key in ("minimalAction", "mostDisruptiveAllowedAction"):
        if body.get(key, "REPLACE") not in mig_updater.ACTIONS:
            raise invalid(f"Invalid value for field '{key}': '{body.get(key)}'")
    everyone = bool(body.get("allInstances"))
    urls = body.get("instances") or []
    if not isinstance(urls, list) or everyone == bool(urls):
        raise invalid("Exactly one of 'instances' or 'allInstances' must be specified")
    return everyone, urls


def check_igm_patch(body: Mapping[str, Any]) -> None:
    """instanceGroupManagers.patch: a field the stand-ins do not patch is a 400, not silently kept."""
    unknown = sorted(set(body) - set(IGM_PATCHED) - {"fingerprint", "name"})
    if unknown:
        raise invalid(
            f"Invalid value for field 'resource.{unknown[0]}': this stand-in patches {sorted(IGM_PATCHED)}"
        )


def rfc3339(epoch: float) -> str:
    """Compute's timestamp format (with milliseconds and an explicit offset)."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")


def fingerprint() -> str:
    return base64.b64encode(random.randbytes(8)).decode()


def scope_of(location: str) -> str:
    """'zones' for a zone, 'regions' for a region (how Compute spells them in URLs); like Google, the
    stand-in checks names itself, by GCE's shapes (us-central1, us-central1-a), with no local names."""
    if _ZONE.fullmatch(location):
        return "zones"
    if _REGION.fullmatch(location):
        return "regions"
    raise invalid(f"Invalid value for field 'location': '{location}'")


def instance_url(project: str, zone: str, name: str) -> str:
    return f"{BASE_URL}/projects/{project}/zones/{zone}/instances/{name}"


def parse_instance_url(url: str, project: str = "") -> tuple[str, str, str]:
    """(project, zone, name); a partial URL (zones/Z/instances/N) is in `project`."""
    match = _INSTANCE_URL.fullmatch(url)
    if match is None:
        raise invalid(f"Invalid value for field 'instances': '{url}'")
    return match.group(1) or project, match.group(2), match.group(3)


# --- operations ------------------------------------------------------------------------------------


@dataclass
class Operation:
    """A Compute operation; `scope` is zones, regions or global."""

    id: int
    name: str
    project: str
    scope: str
    location: str
    operation_type: str
    target_link: str
    target_id: int
    request_id: str
    status: str = "PENDING"
    progress: int = 0
    insert_time: float = field(default_factory=time.time)
    start_time: float | None = None
    end_time: float | None = None
    error: str | None = None

    def self_link(self) -> str:
        where = "global" if self.scope == "global" else f"{self.scope}/{self.location}"
        return f"{BASE_URL}/projects/{self.project}/{where}/operations/{self.name}"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": "compute#operation",
            "id": str(self.id),
            "name": self.name,
            "operationType": self.operation_type,
            "targetLink": self.target_link,
            "targetId": str(self.target_id),
            "status": self.status,
            "user": "local@compose-fleet",
            "progress": self.progress,
            "insertTime": rfc3339(self.insert_time),
            "selfLink": self.self_link(),
        }
        if self.scope == "zones":
            out["zone"] = f"{BASE_URL}/projects/{self.project}/zones/{self.location}"
        elif self.scope == "regions":
            out["region"] = f"{BASE_URL}/projects/{self.project}/regions/{self.location}"
        if self.start_time is not None:
            out["startTime"] = rfc3339(self.start_time)
        if self.end_time is not None:
            out["endTime"] = rfc3339(self.end_time)
        if self.error:
            out["error"] = {"errors": [{"code": "OPERATION_FAILED", "message": self.error}]}
            out["httpErrorStatusCode"] = 400
            out["httpErrorMessage"] = "BAD REQUEST"
        return out


class Operations:
    """Every operation of a backend, with requestId dedupe and waiting."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._ops: dict[tuple[str, str], Operation] = {}
        self._by_request: dict[tuple[str, str], Operation] = {}
        self._ids = itertools.count(int(time.time() * 1000))

    def begin(
        self,
        project: str,
        scope: str,
        location: str,
        operation_type: str,
        target_link: str,
        target_id: int,
        request_id: str = "",
    ) -> tuple[Operation, bool]:
        """A new PENDING operation, or (existing, False) when request_id was seen: do nothing then."""
        with self._cond:
            if request_id and (project, request_id) in self._by_request:
                return self._by_request[(project, request_id)], False
            op_id = next(self._ids)
            name = f"operation-{op_id}-{uuid.uuid4().hex[:12]}"
            op = Operation(
                op_id, name, project, scope, location, operation_type, target_link, target_id, request_id
            )
            self._ops[(project, name)] = op
            if request_id:
                self._by_request[(project, request_id)] = op
            return op, True

    def find(self, project: str, request_id: str) -> Operation | None:
        """The operation an earlier request with this id started, if any."""
        with self._cond:
            return self._by_request.get((project, request_id)) if request_id else None

    def running(self, op: Operation) -> None:
        with self._cond:
            if op.status == "PENDING":
                op.status, op.progress, op.start_time = "RUNNING", 50, time.time()
                self._cond.notify_all()

    def finish(self, op: Operation, error: str | None = None) -> None:
        with self._cond:
            if op.start_time is None:
                op.start_time = time.time()
            op.status, op.progress, op.end_time, op.error = "DONE", 100, time.time(), error
            self._cond.notify_all()

    def get(self, project: str, scope: str, location: str, name: str) -> Operation:
        with self._cond:
            op = self._ops.get((project, name))
            if op is None or op.scope != scope or (scope != "global" and op.location != location):
                where = "global" if scope == "global" else f"{scope}/{location}"
                raise not_found(f"projects/{project}/{where}/operations/{name}")
            return op

    def wait(self, project: str, scope: str, location: str, name: str, timeout: float) -> Operation:
        """Like operations.wait: return when DONE or when `timeout` is up, whichever first."""
        op = self.get(project, scope, location, name)
        with self._cond:
            self._cond.wait_for(lambda: op.status == "DONE", timeout)
        return op

    def all(self) -> list[Operation]:
        with self._cond:
            return list(self._ops.values())


class Scheduler:
    """One thread that runs callbacks at their time (instead of a Timer thread per transition)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="compute-scheduler", daemon=True)
        self._thread.start()

    def later(self, delay: float, fn: Callable[[], None]) -> None:
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + max(0.0, delay), next(self._seq), fn))
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (not self._heap or self._heap[0][0] > time.monotonic()):
                    self._cond.wait(None if not self._heap else self._heap[0][0] - time.monotonic())
                if self._closed:
                    return
                _, _, fn = heapq.heappop(self._heap)
            fn()

    def idle(self) -> bool:
        with self._cond:
            return not self._heap

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=5)


# --- backend interface -----------------------------------------------------------------------------


class ComputeBackend(ABC):
    """What the endpoint can read and do. Reads return Compute JSON (camelCase dicts).

    Actions check their input (raising ComputeApiError like Compute would), then call
    `self.ops.begin(...)`; when that says the requestId was seen, they return the existing operation
    without acting again.
    """

    ops: Operations

    @abstractmethod
    def project(self, project: str) -> dict[str, Any]: ...

    @abstractmethod
    def instance(self, project: str, zone: str, name: str) -> dict[str, Any]: ...

    @abstractmethod
    def instances(self, project: str, zone: str) -> list[dict[str, Any]]: ...

    @abstractmethod
    def guest_attributes(
        self, project: str, zone: str, name: str, query_path: str, key: str
    ) -> dict[str, Any]: ...

    @abstractmethod
    def igm(self, project: str, location: str, name: str) -> dict[str, Any]: ...

    @abstractmethod
    def igms(self, project: str, location: str) -> list[dict[str, Any]]: ...

    @abstractmethod
    def managed_instances(self, project: str, location: str, name: str) -> list[dict[str, Any]]: ...

    @abstractmethod
    def autoscaler(self, project: str, location: str, name: str) -> dict[str, Any]: ...

    @abstractmethod
    def autoscalers(self, project: str, location: str) -> list[dict[str, Any]]: ...

    @abstractmethod
    def set_labels(
        self,
        project: str,
        zone: str,
        name: str,
        labels: Mapping[str, str],
        label_fingerprint: str,
        request_id: str,
    ) -> Operation: ...

    @abstractmethod
    def reset(self, project: str, zone: str, name: str, request_id: str) -> Operation: ...

    @abstractmethod
    def resize(self, project: str, location: str, name: str, size: int, request_id: str) -> Operation: ...

    @abstractmethod
    def recreate(
        self, project: str, location: str, name: str, instances: list[str], request_id: str
    ) -> Operation: ...

    @abstractmethod
    def patch_autoscaler(
        self, project: str, location: str, name: str, body: Mapping[str, Any], request_id: str, replace: bool
    ) -> Operation: ...

    @abstractmethod
    def set_common_metadata(self, project: str, body: Mapping[str, Any], request_id: str) -> Operation: ...

    # --- the MIG updater (versions, update policy); optional: a backend without it answers 400 ---

    def update_igm(
        self, project: str, location: str, name: str, fields: Mapping[str, Any], *, check_only: bool = False
    ) -> None:
        """Lay instanceTemplate / versions / updatePolicy over the MIG now (the caller runs the
        operation); with `check_only`, only raise what Compute would refuse."""
        raise invalid("this local backend does not run the MIG updater (versions, updatePolicy)")

    def patch_igm(
        self, project: str, location: str, name: str, body: Mapping[str, Any], request_id: str
    ) -> Operation:
        raise invalid("this local backend does not run the MIG updater (instanceGroupManagers.patch)")

    def set_instance_template(
        self, project: str, location: str, name: str, template: str, request_id: str
    ) -> Operation:
        raise invalid("this local backend does not run the MIG updater (setInstanceTemplate)")

    def apply_updates(
        self, project: str, location: str, name: str, body: Mapping[str, Any], request_id: str
    ) -> Operation:
        raise invalid("this local backend does not run the MIG updater (applyUpdatesToInstances)")

    def instance_health(self, project: str, zone: str, name: str) -> str:
        """HEALTHY / UNHEALTHY / UNKNOWN as a load balancer's health check sees the instance."""
        return "UNKNOWN"

    def dump(self) -> dict[str, Any]:
        """A JSON view of the whole state, for tests and the demo."""
        return {}

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release threads or other resources."""


# --- in-memory backend -----------------------------------------------------------------------------


@dataclass
class _Instance:
    project: str
    zone: str
    name: str
    id: int
    created: float
    status: str = "RUNNING"
    labels: dict[str, str] = field(default_factory=dict)
    label_fingerprint: str = field(default_factory=fingerprint)
    metadata: list[dict[str, str]] = field(default_factory=list)
    guest_attributes: dict[str, str] = field(default_factory=dict)  # "namespace/key" -> value
    resets: int = 0
    mig: tuple[str, str, str] | None = None
    template: str = ""  # the instance template it was created from (a MIG member)
    health: str = "HEALTHY"  # what a health check sees: HEALTHY, UNHEALTHY, UNKNOWN (booting)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": "compute#instance",
            "id": str(self.id),
            "creationTimestamp": rfc3339(self.created),
            "name": self.name,
            "zone": f"{BASE_URL}/projects/{self.project}/zones/{self.zone}",
            "machineType": f"{BASE_URL}/projects/{self.project}/zones/{self.zone}/machineTypes/e2-medium",
            "status": self.status,
            "labelFingerprint": self.label_fingerprint,
            "selfLink": instance_url(self.project, self.zone, self.name),
            "metadata": {"kind": "compute#metadata", "fingerprint": "local", "items": list(self.metadata)},
        }
        if self.labels:
            out["labels"] = dict(self.labels)
        return out


@dataclass
class _Mig:
    project: str
    location: str
    name: str
    id: int
    created: float
    base_instance_name: str
    template: str
    target_size: int
    zones: list[str]
    template_labels: dict[str, str] = field(default_factory=dict)
    members: list[str] = field(default_factory=list)  # instance names, in creation order
    actions: dict[str, str] = field(default_factory=dict)  # instance name -> currentAction
    fingerprint: str = field(default_factory=fingerprint)
    versions: list[dict[str, Any]] = field(default_factory=list)
    update_policy: dict[str, Any] = field(default_factory=dict)

    @property
    def scope(self) -> str:
        return scope_of(self.location)

    def self_link(self) -> str:
        where = f"{BASE_URL}/projects/{self.project}/{self.scope}/{self.location}"
        return f"{where}/instanceGroupManagers/{self.name}"


@dataclass
class _Autoscaler:
    project: str
    location: str
    name: str
    id: int
    target: tuple[str, str, str]  # MIG key
    policy: dict[str, Any]
    created: float

    def self_link(self) -> str:
        where = f"{BASE_URL}/projects/{self.project}/{scope_of(self.location)}/{self.location}"
        return f"{where}/autoscalers/{self.name}"


class InMemoryCompute(ComputeBackend):
    """MIGs, instances, autoscalers and project metadata in memory, with timed transitions.

    `action_seconds` is how long a reset, a recreate, a creation or a deletion takes (the instance's
    currentAction shows it meanwhile); `op_seconds` is how long a MIG or autoscaler operation stays
    PENDING/RUNNING before DONE. Both are short in tests and benchmarks.

    The MIG updater (standins/mig_updater.py) runs on every change of a MIG: versions, updatePolicy,
    setInstanceTemplate and applyUpdatesToInstances create, delete and recreate members from their
    target template. A new member is RUNNING after `action_seconds`, then VERIFYING for `boot_seconds`
    while it "boots"; then `boot(instance, template)` (when given: what the VM's agent would do with
    the template's metadata) returns its guest attributes and health (HEALTHY or UNHEALTHY); without a
    hook it comes up HEALTHY with no attributes. `template_lookup(url)` (set by the resource store)
    gives a template's JSON to that hook.
    """

    def __init__(
        self,
        action_seconds: float = 0.2,
        op_seconds: float = 0.05,
        *,
        boot_seconds: float = 0.0,
        boot: Callable[[dict[str, Any], dict[str, Any] | None], tuple[dict[str, str], str]] | None = None,
    ) -> None:
        self.action_seconds = action_seconds
        self.op_seconds = op_seconds
        self.boot_seconds = boot_seconds
        self.boot = boot
        self.template_lookup: Callable[[str], dict[str, Any] | None] | None = None
        self.ops = Operations()
        self._lock = threading.RLock()
        self._scheduler = Scheduler()
        self._ids = itertools.count(1_000_000_000_000 + random.randrange(10**9))
        self._projects: dict[str, dict[str, Any]] = {}
        self._instances: dict[tuple[str, str, str], _Instance] = {}
        self._migs: dict[tuple[str, str, str], _Mig] = {}
        self._autoscalers: dict[tuple[str, str, str], _Autoscaler] = {}

    # --- building state (tests, the demo, the CLI) -------------------------------------------------

    def add_project(self, project: str, metadata: Mapping[str, str] | None = None) -> None:
        with self._lock:
            if project not in self._projects:
                self._projects[project] = {"id": next(self._ids), "fingerprint": fingerprint(), "items": []}
            if metadata:
                self._projects[project]["items"] = [{"key": k, "value": v} for k, v in metadata.items()]
                self._projects[project]["fingerprint"] = fingerprint()

    def add_instance(
        self,
        project: str,
        zone: str,
        name: str,
        *,
        age: float = 3600.0,
        labels: Mapping[str, str] | None = None,
        status: str = "RUNNING",
        guest_attributes: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """An instance outside any MIG (or the building block of one)."""
        if not _NAME.fullmatch(name) or not _ZONE.fullmatch(zone):
            raise StandinError(f"bad instance {project}/{zone}/{name}", hint="use GCE names and zones")
        with self._lock:
            self.add_project(project)
            inst = _Instance(
                project,
                zone,
                name,
                next(self._ids),
                time.time() - age,
                status=status,
                labels=dict(labels or {}),
                guest_attributes=dict(guest_attributes or {}),
            )
            self._instances[(project, zone, name)] = inst
            return inst.to_json()

    def add_mig(
        self,
        project: str,
        location: str,
        name: str,
        *,
        size: int = 3,
        age: float = 3600.0,
        base_instance_name: str | None = None,
        zones: Iterable[str] | None = None,
        template_labels: Mapping[str, str] | None = None,
        template: str | None = None,
        guest_attributes: Mapping[str, str] | None = None,
    ) -> list[str]:
        """A MIG with `size` RUNNING members created `age` seconds ago; returns the member names."""
        if not _NAME.fullmatch(name):
            raise StandinError(f"bad MIG name {name!r}")
        scope = scope_of(location)
        member_zones = [location] if scope == "zones" else list(zones or [f"{location}-a", f"{location}-b"])
        with self._lock:
            self.add_project(project)
            mig = _Mig(
                project,
                location,
                name,
                next(self._ids),
                time.time() - age,
                base_instance_name or name,
                template or f"{BASE_URL}/projects/{project}/global/instanceTemplates/{name}-template",
                size,
                member_zones,
                template_labels=dict(template_labels or {}),
            )
            mig.versions = [{"instanceTemplate": mig.template}]
            mig.update_policy = mig_updater.check_policy(None, len(member_zones), scope == "regions")
            self._migs[(project, location, name)] = mig
            for _ in range(size):
                inst = self._new_member(mig, age=age)
                inst.guest_attributes = dict(guest_attributes or {})
                mig.actions[inst.name] = "NONE"
            return list(mig.members)

    def add_autoscaler(
        self,
        project: str,
        location: str,
        name: str,
        mig: str,
        *,
        min_replicas: int = 1,
        max_replicas: int = 10,
        mode: str = "ON",
        cool_down: int = 60,
    ) -> None:
        with self._lock:
            key = (project, location, mig)
            if key not in self._migs:
                raise StandinError(f"no MIG {project}/{location}/{mig} for autoscaler {name}")
            self._autoscalers[(project, location, name)] = _Autoscaler(
                project,
                location,
                name,
                next(self._ids),
                key,
                {
                    "minNumReplicas": min_replicas,
                    "maxNumReplicas": max_replicas,
                    "coolDownPeriodSec": cool_down,
                    "mode": mode,
                    "cpuUtilization": {"utilizationTarget": 0.6},
                },
                time.time(),
            )

    def update_instance(
        self,
        project: str,
        zone: str,
        name: str,
        *,
        labels: Mapping[str, str] | None = None,
        status: str | None = None,
        age: float | None = None,
        current_action: str | None = None,
        guest_attributes: Mapping[str, str] | None = None,
    ) -> None:
        """Change an instance behind the API's back (what a rollout, a crash or time would do)."""
        with self._lock:
            inst = self._get_instance(project, zone, name)
            if guest_attributes is not None:  # what the guest agent publishes ("hostkeys/ssh-ed25519")
                inst.guest_attributes = dict(guest_attributes)
            if labels is not None:
                inst.labels = dict(labels)
                inst.label_fingerprint = fingerprint()
            if status is not None:
                inst.status = status
            if age is not None:
                inst.created = time.time() - age
            if current_action is not None:
                if inst.mig is None:
                    raise StandinError(f"{name} is not in a MIG: it has no currentAction")
                self._migs[inst.mig].actions[name] = current_action

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], **kwargs: Any) -> InMemoryCompute:
        """Build from the JSON state file of the CLI (see docs/functions.md)."""
        backend = cls(**kwargs)
        try:
            for project, items in (spec.get("metadata") or {}).items():
                backend.add_project(project, items)
            for project in spec.get("projects", []):
                backend.add_project(project)
            for mig in spec.get("migs", []):
                backend.add_mig(
                    mig["project"],
                    mig.get("zone") or mig["region"],
                    mig["name"],
                    size=int(mig.get("size", 3)),
                    age=float(mig.get("ageSeconds", 3600)),
                    base_instance_name=mig.get("baseInstanceName"),
                    zones=mig.get("zones"),
                    template_labels=mig.get("templateLabels"),
                )
                auto = mig.get("autoscaler")
                if auto:
                    backend.add_autoscaler(
                        mig["project"],
                        mig.get("zone") or mig["region"],
                        auto.get("name", f"{mig['name']}-autoscaler"),
                        mig["name"],
                        min_replicas=int(auto.get("min", 1)),
                        max_replicas=int(auto.get("max", 10)),
                        mode=auto.get("mode", "ON"),
                    )
            for inst in spec.get("instances", []):
                backend.add_instance(
                    inst["project"],
                    inst["zone"],
                    inst["name"],
                    labels=inst.get("labels"),
                    age=inst.get("ageSeconds", 3600),
                )
        except (KeyError, TypeError, ValueError) as exc:
            backend.close()
            raise StandinError(
                f"bad compute state spec: {type(exc).__name__}: {exc}",
                hint="see the state file format in docs/functions.md",
            ) from exc
        return backend

    @classmethod
    def from_file(cls, path: Path, **kwargs: Any) -> InMemoryCompute:
        try:
            spec = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise StandinError(f"cannot read compute state: {exc}", where=str(path)) from exc
        if not isinstance(spec, dict):
            raise StandinError("compute state must be a JSON object", where=str(path))
        return cls.from_spec(spec, **kwargs)

    # --- helpers -----------------------------------------------------------------------------------

    def _new_member(
        self, mig: _Mig, age: float = 0.0, status: str = "RUNNING", template: str | None = None
    ) -> _Instance:
        zone = mig.zones[len(mig.members) % len(mig.zones)]
        while True:
            suffix = hashlib.sha256(f"{mig.name}{next(self._ids)}".encode()).hexdigest()[:4]
            name = f"{mig.base_instance_name}-{suffix}"
            # unique in the group (a regional MIG's zones share its names) and in the zone
            if (mig.project, zone, name) not in self._instances and name not in mig.members:
                break
        inst = _Instance(
            mig.project,
            zone,
            name,
            next(self._ids),
            time.time() - age,
            status=status,
            labels=dict(mig.template_labels),
            metadata=[{"key": "created-by", "value": mig.self_link().removeprefix(f"{BASE_URL}/")}],
            mig=(mig.project, mig.location, mig.name),
            template=template or mig.template,
        )
        self._instances[(mig.project, zone, name)] = inst
        mig.members.append(name)
        return inst

    def _get_project(self, project: str) -> dict[str, Any]:
        if project not in self._projects:
            raise not_found(f"projects/{project}")
        return self._projects[project]

    def _get_instance(self, project: str, zone: str, name: str) -> _Instance:
        inst = self._instances.get((project, zone, name))
        if inst is None:
            raise not_found(f"projects/{project}/zones/{zone}/instances/{name}")
        return inst

    def _get_mig(self, project: str, location: str, name: str) -> _Mig:
        mig = self._migs.get((project, location, name))
        if mig is None:
            raise not_found(
                f"projects/{project}/{scope_of(location)}/{location}/instanceGroupManagers/{name}"
            )
        return mig

    def _get_autoscaler(self, project: str, location: str, name: str) -> _Autoscaler:
        auto = self._autoscalers.get((project, location, name))
        if auto is None:
            raise not_found(f"projects/{project}/{scope_of(location)}/{location}/autoscalers/{name}")
        return auto

    def _mig_op(self, mig: _Mig, op_type: str, request_id: str) -> tuple[Operation, bool]:
        return self.ops.begin(
            mig.project, mig.scope, mig.location, op_type, mig.self_link(), mig.id, request_id
        )

    def _finish_later(self, op: Operation, delay: float) -> None:
        self._scheduler.later(delay / 2, lambda: self.ops.running(op))
        self._scheduler.later(delay, lambda: self.ops.finish(op))

    def _find_member(self, mig: _Mig, name: str) -> _Instance | None:
        for zone in mig.zones:
            inst = self._instances.get((mig.project, zone, name))
            if inst is not None:
                return inst
        return None

    # --- reads -------------------------------------------------------------------------------------

    def project(self, project: str) -> dict[str, Any]:
        with self._lock:
            proj = self._get_project(project)
            return {
                "kind": "compute#project",
                "id": str(proj["id"]),
                "name": project,
                "commonInstanceMetadata": {
                    "kind": "compute#metadata",
                    "fingerprint": proj["fingerprint"],
                    "items": [dict(i) for i in proj["items"]],
                },
                "selfLink": f"{BASE_URL}/projects/{project}",
            }

    def instance(self, project: str, zone: str, name: str) -> dict[str, Any]:
        with self._lock:
            self._get_project(project)
            return self._get_instance(project, zone, name).to_json()

    def instances(self, project: str, zone: str) -> list[dict[str, Any]]:
        with self._lock:
            self._get_project(project)
            return [
                i.to_json() for (p, z, _), i in sorted(self._instances.items()) if p == project and z == zone
            ]

    def guest_attributes(
        self, project: str, zone: str, name: str, query_path: str, key: str
    ) -> dict[str, Any]:
        with self._lock:
            inst = self._get_instance(project, zone, name)
            base = {
                "kind": "compute#guestAttributes",
                "selfLink": instance_url(project, zone, name) + "/guestAttributes",
            }
            if key:
                if key not in inst.guest_attributes:
                    raise not_found(f"projects/{project}/zones/{zone}/instances/{name}/guestAttributes/{key}")
                return {**base, "variableKey": key, "variableValue": inst.guest_attributes[key]}
            prefix = query_path.rstrip("/") + "/" if query_path else ""
            items = [
                {"namespace": k.split("/", 1)[0], "key": k.split("/", 1)[1], "value": v}
                for k, v in sorted(inst.guest_attributes.items())
                if "/" in k and k.startswith(prefix)
            ]
            return {**base, "queryPath": query_path, "queryValue": {"items": items}}

    def _igm_json(self, mig: _Mig) -> dict[str, Any]:
        counts = dict.fromkeys(ACTION_COUNTERS, 0)
        for action in mig.actions.values():
            camel = re.sub(r"_([a-z])", lambda m: m.group(1).upper(), action.lower())
            counts[camel] = counts.get(camel, 0) + 1
        stable = all(a == "NONE" for a in mig.actions.values()) and len(mig.members) == mig.target_size
        reached = mig_updater.version_target_reached(self._member_views(mig), mig.versions, mig.target_size)
        status: dict[str, Any] = {"isStable": stable, "versionTarget": {"isReached": reached}}
        for auto in self._autoscalers.values():
            if auto.target == (mig.project, mig.location, mig.name):
                status["autoscaler"] = auto.self_link()
        out: dict[str, Any] = {
            "kind": "compute#instanceGroupManager",
            "id": str(mig.id),
            "creationTimestamp": rfc3339(mig.created),
            "name": mig.name,
            "baseInstanceName": mig.base_instance_name,
            "instanceTemplate": mig.template,
            "instanceGroup": mig.self_link().replace("instanceGroupManagers", "instanceGroups"),
            "fingerprint": mig.fingerprint,
            "currentActions": counts,
            "targetSize": mig.target_size,
            "versions": [mig_updater.version_json(v, mig.target_size) for v in mig.versions],
            "updatePolicy": mig_updater.policy_json(mig.update_policy, mig.target_size),
            "status": status,
            "selfLink": mig.self_link(),
        }
        where = f"{BASE_URL}/projects/{mig.project}/{mig.scope}/{mig.location}"
        if mig.scope == "zones":
            out["zone"] = where
        else:
            out["region"] = where
            out["distributionPolicy"] = {
                "zones": [{"zone": f"{BASE_URL}/projects/{mig.project}/zones/{z}"} for z in mig.zones]
            }
        return out

    def igm(self, project: str, location: str, name: str) -> dict[str, Any]:
        with self._lock:
            self._get_project(project)
            return self._igm_json(self._get_mig(project, location, name))

    def igms(self, project: str, location: str) -> list[dict[str, Any]]:
        with self._lock:
            self._get_project(project)
            return [
                self._igm_json(m)
                for (p, loc, _), m in sorted(self._migs.items())
                if (p, loc) == (project, location)
            ]

    def managed_instances(self, project: str, location: str, name: str) -> list[dict[str, Any]]:
        with self._lock:
            mig = self._get_mig(project, location, name)
            out = []
            for member in mig.members:
                inst = self._find_member(mig, member)
                if inst is None:
                    continue
                version = {"instanceTemplate": inst.template}
                named = next((v for v in mig.versions if v["instanceTemplate"] == inst.template), None)
                if named is not None and named.get("name"):
                    version["name"] = named["name"]
                out.append(
                    {
                        "instance": instance_url(project, inst.zone, inst.name),
                        "id": str(inst.id),
                        "name": inst.name,
                        "instanceStatus": inst.status,
                        "currentAction": mig.actions.get(member, "NONE"),
                        "version": version,
                        "instanceHealth": [{"detailedHealthState": inst.health}],
                    }
                )
            return out

    def _autoscaler_json(self, auto: _Autoscaler) -> dict[str, Any]:
        mig = self._migs.get(auto.target)
        out: dict[str, Any] = {
            "kind": "compute#autoscaler",
            "id": str(auto.id),
            "creationTimestamp": rfc3339(auto.created),
            "name": auto.name,
            "target": mig.self_link() if mig else "",
            "autoscalingPolicy": json.loads(json.dumps(auto.policy)),
            "status": "ACTIVE",
            "recommendedSize": mig.target_size if mig else 0,
            "selfLink": auto.self_link(),
        }
        key = "zone" if scope_of(auto.location) == "zones" else "region"
        out[key] = f"{BASE_URL}/projects/{auto.project}/{scope_of(auto.location)}/{auto.location}"
        return out

    def autoscaler(self, project: str, location: str, name: str) -> dict[str, Any]:
        with self._lock:
            return self._autoscaler_json(self._get_autoscaler(project, location, name))

    def autoscalers(self, project: str, location: str) -> list[dict[str, Any]]:
        with self._lock:
            self._get_project(project)
            return [
                self._autoscaler_json(a)
                for (p, loc, _), a in sorted(self._autoscalers.items())
                if (p, loc) == (project, location)
            ]

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
        with self._lock:
            inst = self._get_instance(project, zone, name)
            if len(labels) > 64:
                raise invalid("Invalid value for field 'resource.labels': at most 64 labels are allowed")
            for key, value in labels.items():
                if not isinstance(key, str) or not _LABEL_KEY.fullmatch(key):
                    raise invalid(f"Invalid value for field 'resource.labels': '{key}'")
                if not isinstance(value, str) or not _LABEL_VALUE.fullmatch(value):
                    raise invalid(f"Invalid value for field 'resource.labels': '{value}'")
            seen = self.ops.find(project, request_id)
            if seen is not None:
                return seen
            if label_fingerprint != inst.label_fingerprint:
                # Refused before any operation exists, so a corrected retry may reuse the request id.
                raise ComputeApiError(
                    412,
                    "conditionNotMet",
                    "Labels fingerprint either invalid or resource labels have changed",
                )
            op, _ = self.ops.begin(
                project, "zones", zone, "setLabels", instance_url(project, zone, name), inst.id, request_id
            )
            inst.labels = dict(labels)
            inst.label_fingerprint = fingerprint()
            self.ops.finish(op)
            return op

    def reset(self, project: str, zone: str, name: str, request_id: str) -> Operation:
        with self._lock:
            inst = self._get_instance(project, zone, name)
            seen = self.ops.find(project, request_id)
            if seen is not None:
                return seen
            if inst.status != "RUNNING":
                raise ComputeApiError(
                    400,
                    "resourceNotReady",
                    f"The resource 'projects/{project}/zones/{zone}/instances/{name}' is not ready",
                )
            op, _ = self.ops.begin(
                project, "zones", zone, "reset", instance_url(project, zone, name), inst.id, request_id
            )
            target_id = inst.id

        def done() -> None:
            with self._lock:
                current = self._instances.get((project, zone, name))
                if current is not None and current.id == target_id:
                    current.resets += 1
            self.ops.finish(op)

        self._scheduler.later(self.action_seconds / 2, lambda: self.ops.running(op))
        self._scheduler.later(self.action_seconds, done)
        return op

    def resize(self, project: str, location: str, name: str, size: int, request_id: str) -> Operation:
        if size < 0:
            raise invalid(f"Invalid value for field 'size': '{size}'. Must be greater than or equal to 0.")
        with self._lock:
            mig = self._get_mig(project, location, name)
            op, new = self._mig_op(mig, "compute.instanceGroupManagers.resize", request_id)
            if not new:
                return op
            self._resize_locked(mig, size)
        self._finish_later(op, self.op_seconds)
        return op

    def _resize_locked(self, mig: _Mig, size: int) -> None:
        mig.target_size = size
        live = [m for m in mig.members if mig.actions.get(m) != "DELETING"]
        if size < len(live):
            # Like a MIG: drop instances that are not running first, then the newest.
            def order(member: str) -> tuple[int, float]:
                found = self._find_member(mig, member)
                running = found is not None and found.status == "RUNNING"
                return (1 if running else 0, -(found.created if found else 0.0))

            for member in sorted(live, key=order)[: len(live) - size]:
                self._start_delete(mig, member)
        self._reconcile(mig)

    # --- the updater: every change of a MIG ends here ----------------------------------------------

    def _member_views(self, mig: _Mig) -> list[mig_updater.Member]:
        out = []
        for member in mig.members:
            inst = self._find_member(mig, member)
            if inst is None:
                continue
            action = mig.actions.get(member, "NONE")
            ready = inst.status == "RUNNING" and action == "NONE" and inst.health == "HEALTHY"
            out.append(mig_updater.Member(member, inst.template, action, ready))
        return out

    def _reconcile(self, mig: _Mig) -> None:
        """Start what the updater would start now (creations, deletions, recreations)."""
        if self._migs.get((mig.project, mig.location, mig.name)) is not mig:
            return
        moves = mig_updater.plan(self._member_views(mig), mig.versions, mig.target_size, mig.update_policy)
        for template in moves.create:
            new = self._new_member(mig, status="PROVISIONING", template=template)
            new.health = "UNKNOWN"
            mig.actions[new.name] = "CREATING"
            self._scheduler.later(self.action_seconds, self._created(mig, new.name))
        for member in moves.delete:
            self._start_delete(mig, member)
        for member, template in moves.recreate:
            self._start_recreate(mig, member, template)

    def _start_delete(self, mig: _Mig, member: str) -> None:
        mig.actions[member] = "DELETING"
        inst = self._find_member(mig, member)
        if inst is not None:
            inst.status = "STOPPING"
        self._scheduler.later(self.action_seconds, self._deleted(mig, member))

    def _start_recreate(self, mig: _Mig, member: str, template: str) -> None:
        mig.actions[member] = "RECREATING"
        inst = self._find_member(mig, member)
        if inst is not None:
            inst.status = "STOPPING"
            inst.template = template  # the VM it becomes; counted for its target version meanwhile
            inst.health = "UNKNOWN"
        self._scheduler.later(self.action_seconds, self._recreated(mig, member))

    def _came_up(self, mig: _Mig, inst: _Instance) -> None:
        """A created or recreated member is RUNNING: boot (VERIFYING), then report and serve."""
        inst.status = "RUNNING"
        if self.boot is None and self.boot_seconds <= 0:
            inst.health = "HEALTHY"
            mig.actions[inst.name] = "NONE"
            return
        mig.actions[inst.name] = "VERIFYING"
        self._scheduler.later(self.boot_seconds, self._booted(mig, inst.name, inst.id))

    def _booted(self, mig: _Mig, member: str, instance_id: int) -> Callable[[], None]:
        def current() -> _Instance | None:
            inst = self._find_member(mig, member)
            if inst is None or inst.id != instance_id or mig.actions.get(member) != "VERIFYING":
                return None
            return inst

        def run() -> None:
            with self._lock:
                inst = current()
                if inst is None:
                    return
                url, seen = inst.template, inst.to_json()
            attrs: dict[str, str] = {}
            health = "HEALTHY"
            if self.boot is not None:  # outside our lock: the template comes from the store (its lock)
                template = self.template_lookup(url) if self.template_lookup else None
                attrs, health = self.boot(seen, template)
            with self._lock:
                inst = current()
                if inst is None:
                    return
                inst.guest_attributes.update(attrs)
                inst.health = health
                mig.actions[member] = "NONE"
                self._reconcile(mig)

        return run

    def _created(self, mig: _Mig, member: str) -> Callable[[], None]:
        def run() -> None:
            with self._lock:
                inst = self._find_member(mig, member)
                if inst is not None and mig.actions.get(member) == "CREATING":
                    self._came_up(mig, inst)
                    self._reconcile(mig)

        return run

    def _deleted(self, mig: _Mig, member: str) -> Callable[[], None]:
        def run() -> None:
            with self._lock:
                inst = self._find_member(mig, member)
                if inst is not None:
                    del self._instances[(inst.project, inst.zone, inst.name)]
                if member in mig.members:
                    mig.members.remove(member)
                mig.actions.pop(member, None)
                self._reconcile(mig)

        return run

    def recreate(
        self, project: str, location: str, name: str, instances: list[str], request_id: str
    ) -> Operation:
        with self._lock:
            mig = self._get_mig(project, location, name)
            targets = []
            for url in instances:
                p, zone, inst_name = parse_instance_url(url, project)
                if p != project or inst_name not in mig.members or zone not in mig.zones:
                    raise invalid(f"Instance '{url}' is not a member of the managed instance group '{name}'")
                targets.append(inst_name)
            if not targets:
                raise invalid("Required field 'instances' not specified")
            op, new = self._mig_op(mig, "compute.instanceGroupManagers.recreateInstances", request_id)
            if not new:
                return op
            target, _ = mig_updater.targets(self._member_views(mig), mig.versions, mig.target_size)
            for member in targets:
                inst = self._find_member(mig, member)
                self._start_recreate(mig, member, target.get(member, inst.template if inst else mig.template))
        self._finish_later(op, self.op_seconds)
        return op

    def _recreated(self, mig: _Mig, member: str) -> Callable[[], None]:
        def run() -> None:
            with self._lock:
                inst = self._find_member(mig, member)
                if inst is None or mig.actions.get(member) != "RECREATING":
                    return
                # Same name, new VM from its target template: new id, creation time, template labels.
                inst.id = next(self._ids)
                inst.created = time.time()
                inst.labels = dict(mig.template_labels)
                inst.label_fingerprint = fingerprint()
                inst.guest_attributes = {}
                inst.resets = 0
                self._came_up(mig, inst)
                self._reconcile(mig)

        return run

    def patch_autoscaler(
        self, project: str, location: str, name: str, body: Mapping[str, Any], request_id: str, replace: bool
    ) -> Operation:
        with self._lock:
            auto = self._get_autoscaler(project, location, name)
            if body.get("name", name) != name:
                raise invalid(f"Invalid value for field 'resource.name': '{body.get('name')}'")
            patch = body.get("autoscalingPolicy") or {}
            if not isinstance(patch, Mapping):
                raise invalid("Invalid value for field 'resource.autoscalingPolicy'")
            policy = dict(patch) if replace else {**auto.policy, **patch}
            low, high = policy.get("minNumReplicas", 0), policy.get("maxNumReplicas")
            if not isinstance(low, int) or not isinstance(high, int) or low < 0 or high < low:
                raise invalid(f"Invalid autoscaling policy: minNumReplicas {low} and maxNumReplicas {high}")
            op, new = self.ops.begin(
                project,
                scope_of(location),
                location,
                "compute.autoscalers.patch",
                auto.self_link(),
                auto.id,
                request_id,
            )
            if not new:
                return op
            auto.policy = policy
            # The autoscaler keeps the group within its bounds.
            mig = self._migs.get(auto.target)
            if mig is not None and policy.get("mode", "ON") != "OFF":
                if mig.target_size < low:
                    self._resize_locked(mig, low)
                elif mig.target_size > high:
                    self._resize_locked(mig, high)
        self._finish_later(op, self.op_seconds)
        return op

    def set_common_metadata(self, project: str, body: Mapping[str, Any], request_id: str) -> Operation:
        with self._lock:
            proj = self._get_project(project)
            items = body.get("items") or []
            if not isinstance(items, list) or not all(
                isinstance(i, Mapping)
                and isinstance(i.get("key"), str)
                and isinstance(i.get("value", ""), str)
                for i in items
            ):
                raise invalid("Invalid value for field 'resource.items'")
            keys = [i["key"] for i in items]
            if len(set(keys)) != len(keys):
                raise invalid("Invalid value for field 'resource.items': duplicate keys")
            seen = self.ops.find(project, request_id)
            if seen is not None:
                return seen
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
                proj_link(project),
                proj["id"],
                request_id,
            )
            proj["items"] = [{"key": i["key"], "value": i.get("value", "")} for i in items]
            proj["fingerprint"] = fingerprint()
            self.ops.finish(op)
            return op

    # --- the MIG updater's API ---------------------------------------------------------------------

    def _check_template(self, url: str) -> bool:
        """Whether the resource store has this template. Never called with `self._lock` held: the
        store's lock is always taken before this backend's (it calls in here holding its own)."""
        return self.template_lookup is None or self.template_lookup(url) is not None

    def update_igm(
        self, project: str, location: str, name: str, fields: Mapping[str, Any], *, check_only: bool = False
    ) -> None:
        new_versions = None
        try:  # templates checked before this backend's lock (lock order: the store's, then ours)
            if "versions" in fields:
                new_versions = mig_updater.check_versions(fields["versions"], self._check_template)
            elif isinstance(fields.get("instanceTemplate"), str):
                if not self._check_template(fields["instanceTemplate"]):
                    raise mig_updater.UpdateError(
                        "Invalid value for field 'resource.instanceTemplate': "
                        f"'{fields['instanceTemplate']}' does not exist"
                    )
                new_versions = [{"instanceTemplate": fields["instanceTemplate"]}]
        except mig_updater.UpdateError as exc:
            raise invalid(str(exc)) from None
        with self._lock:
            mig = self._get_mig(project, location, name)
            versions, policy = new_versions or mig.versions, mig.update_policy
            try:
                if "updatePolicy" in fields:
                    change = fields["updatePolicy"] or {}
                    if not isinstance(change, Mapping):
                        raise mig_updater.UpdateError("Invalid value for field 'resource.updatePolicy'")
                    given = {**mig_updater.policy_input(mig.update_policy), **change}
                    policy = mig_updater.check_policy(given, len(mig.zones), mig.scope == "regions")
            except mig_updater.UpdateError as exc:
                raise invalid(str(exc)) from None
            if check_only:
                return
            mig.versions, mig.update_policy = versions, policy
            # the top-level template is the version that takes the remaining instances
            mig.template = next(v["instanceTemplate"] for v in versions if "targetSize" not in v)
            mig.fingerprint = fingerprint()
            self._reconcile(mig)

    def patch_igm(
        self, project: str, location: str, name: str, body: Mapping[str, Any], request_id: str
    ) -> Operation:
        with self._lock:
            mig = self._get_mig(project, location, name)
            check_igm_patch(body)
            seen = self.ops.find(project, request_id)
            if seen is not None:
                return seen
            if "fingerprint" in body and body["fingerprint"] != mig.fingerprint:
                raise ComputeApiError(
                    412, "conditionNotMet", "Invalid fingerprint. The resource was modified; get it again."
                )
            fields = {k: v for k, v in body.items() if k in IGM_PATCHED}
        self.update_igm(project, location, name, fields, check_only=True)
        with self._lock:
            op, _ = self._mig_op(mig, "patch", request_id)
        self._land_later(op, lambda: self.update_igm(project, location, name, fields))
        return op

    def set_instance_template(
        self, project: str, location: str, name: str, template: str, request_id: str
    ) -> Operation:
        with self._lock:
            mig = self._get_mig(project, location, name)
            if not isinstance(template, str) or not template:
                raise invalid("Required field 'instanceTemplate' not specified")
            seen = self.ops.find(project, request_id)
            if seen is not None:
                return seen
            fields = {"instanceTemplate": template}
        self.update_igm(project, location, name, fields, check_only=True)
        with self._lock:
            op, _ = self._mig_op(mig, "compute.instanceGroupManagers.setInstanceTemplate", request_id)
        self._land_later(op, lambda: self.update_igm(project, location, name, fields))
        return op

    def apply_updates(
        self, project: str, location: str, name: str, body: Mapping[str, Any], request_id: str
    ) -> Operation:
        """applyUpdatesToInstances: the listed (or all) outdated members are recreated in place from
        their target version now, whatever maxSurge/maxUnavailable say."""
        with self._lock:
            mig = self._get_mig(project, location, name)
            everyone, urls = check_apply_updates(body)
            names = []
            for url in urls:
                p, zone, inst_name = parse_instance_url(str(url), project)
                if p != project or inst_name not in mig.members or zone not in mig.zones:
                    raise invalid(f"Instance '{url}' is not a member of the managed instance group '{name}'")
                names.append(inst_name)
            op, new = self._mig_op(mig, "compute.instanceGroupManagers.applyUpdatesToInstances", request_id)
            if not new:
                return op
            if body.get("mostDisruptiveAllowedAction", "REPLACE") == "REPLACE":
                target, _ = mig_updater.targets(self._member_views(mig), mig.versions, mig.target_size)
                for member in list(mig.members) if everyone else names:
                    inst = self._find_member(mig, member)
                    if inst is None or mig.actions.get(member, "NONE") not in ("NONE", "VERIFYING"):
                        continue
                    if member in target and target[member] != inst.template:
                        self._start_recreate(mig, member, target[member])
        self._finish_later(op, self.op_seconds)
        return op

    def instance_health(self, project: str, zone: str, name: str) -> str:
        with self._lock:
            inst = self._instances.get((project, zone, name))
            if inst is None or inst.status != "RUNNING":
                return "UNHEALTHY"
            return inst.health

    def _land_later(self, op: Operation, change: Callable[[], None]) -> None:
        """The change lands when the operation is DONE (as the resource store's writes do)."""

        def done() -> None:
            try:
                change()
            except ComputeApiError as exc:  # the MIG changed meanwhile (e.g. a template went away)
                self.ops.finish(op, exc.message)
                return
            self.ops.finish(op)

        self._scheduler.later(self.op_seconds / 2, lambda: self.ops.running(op))
        self._scheduler.later(self.op_seconds, done)

    # --- inspection --------------------------------------------------------------------------------

    def member_names(self, project: str, location: str, name: str) -> list[str]:
        with self._lock:
            return list(self._get_mig(project, location, name).members)

    def resets(self, project: str, zone: str, name: str) -> int:
        """How many resets an instance has completed since it was (re)created."""
        with self._lock:
            return self._get_instance(project, zone, name).resets

    def idle(self) -> bool:
        """No transition is scheduled (every action has finished)."""
        return self._scheduler.idle()

    def dump(self) -> dict[str, Any]:
        with self._lock:
            return {
                "projects": {p: self.project(p) for p in sorted(self._projects)},
                "instances": [i.to_json() | {"resets": i.resets} for _, i in sorted(self._instances.items())],
                "migs": [
                    self._igm_json(m) | {"members": self.managed_instances(m.project, m.location, m.name)}
                    for _, m in sorted(self._migs.items())
                ],
                "autoscalers": [self._autoscaler_json(a) for _, a in sorted(self._autoscalers.items())],
                "operations": [op.to_json() for op in self.ops.all()],
            }

    def close(self) -> None:
        self._scheduler.close()


def proj_link(project: str) -> str:

    return f"{BASE_URL}/projects/{project}"
