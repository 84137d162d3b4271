"""Compute Engine calls of the operator side (google-cloud-compute, REST): project metadata with
fingerprint compare-and-swap (the fleet lock), instance labels (rollout marks), the members of
managed instance groups (the dynamic inventory), guest attributes (host keys), MIG actions, operations.

One `Compute` object per endpoint: the real API by default, or a local endpoint
(`gce.api_endpoint` in the inventory, or FLEET_COMPUTE_ENDPOINT) such as the local fleet's, reached
with anonymous credentials. Operations are waited on with our own operations clients pointed at the
same endpoint (`.result()` would poll the real API).

Every call carries a timeout (`call_timeout`, operation waits `op_timeout` in all): the client's own
default lets one call hang for 600 s, longer than the fleet lock lives (fleet/rollout/lock.py).
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fleet import settings
from fleet.commands.roles import natural_key as natural_key  # kept importable from here
from fleet.errors import FleetError
from fleet.waits import Deadline, polling
from functions import fleet_contract as contract

ENDPOINT_ENV = settings.COMPUTE_ENDPOINT_ENV


class ComputeError(FleetError):
    """A Compute API call failed (after the operation finished, or at once)."""


class PreconditionFailed(ComputeError):
    """A fingerprint was stale: somebody else changed the object first (412 conditionNotMet)."""


_REGISTER_LOCK = threading.Lock()


def _register_compute_v1() -> None:
    """Make `google.cloud.compute_v1` importable without running its __init__.

    That __init__ imports all ~100 API clients (about a second of every `fab` start with a GCE
    inventory); we import the few service modules we use. The first lookup of any other attribute
    runs the real __init__ (PEP 562), so other code in the process still sees the whole package.
    (functions/gce.py does the same for the Cloud Functions' cold start; whichever runs first wins.)
    """
    name = "google.cloud.compute_v1"
    with _REGISTER_LOCK:  # connections resolve host keys from many threads at once
        if name not in sys.modules:
            _register(name)


def _register(name: str) -> None:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ComputeError("google-cloud-compute is not installed", hint="pip install google-cloud-compute")
    package = importlib.util.module_from_spec(spec)
    loader = spec.loader

    def complete(attr: str) -> Any:
        if not attr.startswith("__") and importlib.util.find_spec(f"{name}.{attr}") is not None:
            raise AttributeError(attr)  # a submodule: the import system loads it
        package.__dict__.pop("__getattr__", None)
        loader.exec_module(package)
        return getattr(package, attr)

    package.__dict__["__getattr__"] = complete
    sys.modules[name] = package
    setattr(sys.modules["google.cloud"], "compute_v1", package)  # noqa: B010


def _client_class(name: str) -> Any:
    """InstanceGroupManagersClient -> google.cloud.compute_v1.services.instance_group_managers."""
    import google.cloud  # noqa: F401 - the namespace package the registration hangs off

    _register_compute_v1()
    service = re.sub(r"(?<!^)(?=[A-Z])", "_", name.removesuffix("Client")).lower()
    module = importlib.import_module(f"google.cloud.compute_v1.services.{service}")
    return getattr(module, name)


CLIENTS = (
    "InstancesClient",
    "InstanceGroupManagersClient",
    "RegionInstanceGroupManagersClient",
    "ProjectsClient",
    "ZoneOperationsClient",
    "RegionOperationsClient",
    "GlobalOperationsClient",
)


def preload() -> None:
    """Import the client modules this module uses, the way it imports them (never the package's
    __init__, which imports every client: a thread running it while another imports one service sees
    the package half-initialised). Safe to run in a thread while connections resolve host keys."""
    import google.cloud  # noqa: F401

    for name in CLIENTS:
        _client_class(name)
    _register_compute_v1()
    importlib.import_module("google.cloud.compute_v1.types")


def endpoint_for(configured: str | None = None) -> str | None:
    """FLEET_COMPUTE_ENDPOINT, else the inventory's gce.api_endpoint (`configured`), else None."""
    return settings.load().compute_endpoint_for(configured)


_INSTANCE_URL = re.compile(r"(?:.*/)?projects/([^/]+)/zones/([^/]+)/instances/([^/]+)$")


def mig_ref(spec: Mapping[str, Any], where: str = "gce.migs") -> contract.MigRef:
    """A MIG from an inventory entry {project, zone | region, name}: the contract's MigRef, checked
    by the contract's rules (the functions refuse what it refuses), and `zone:` must name a zone."""
    zone, region = spec.get("zone"), spec.get("region")
    if bool(zone) == bool(region):
        raise FleetError("a MIG needs exactly one of zone or region", where=where, hint="see docs/gce.md")
    location = str(zone or region)
    try:
        ref = contract.MigRef.make(str(spec.get("project") or ""), location, str(spec.get("name") or ""))
    except contract.ContractError as exc:
        hint = "names are lowercase letters, digits and '-'; e.g. project my-project, zone europe-west1-b"
        raise FleetError(str(exc), where=where, hint=hint) from None
    if ref.regional == bool(zone):
        kind = "zone" if zone else "region"
        raise FleetError(f"invalid {kind} {location!r}", where=where, hint="e.g. zone europe-west1-b")
    return ref


@dataclass(frozen=True)
class ManagedInstance:
    """One instance of a MIG as the inventory needs it (instance details merged in)."""

    mig: contract.MigRef
    name: str
    zone: str
    id: str
    status: str  # PROVISIONING | STAGING | RUNNING | STOPPING | TERMINATED | ...
    current_action: str  # NONE | CREATING | RECREATING | VERIFYING | DELETING | RESTARTING | ...
    internal_ip: str = ""
    created: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    label_fingerprint: str = ""


@dataclass
class Compute:
    """Lazily created Compute clients for one endpoint (None = the real API)."""

    endpoint: str | None = None
    op_timeout: float = 120.0  # waiting for one operation, in all
    call_timeout: float = 30.0  # one API request

    def __post_init__(self) -> None:
        self._clients: dict[str, Any] = {}

    def client(self, name: str) -> Any:
        """`name` is a compute_v1 client class name, e.g. "InstancesClient"."""
        if name not in self._clients:
            kwargs: dict[str, Any] = {}
            if self.endpoint:
                from google.auth.credentials import AnonymousCredentials

                kwargs["client_options"] = {"api_endpoint": self.endpoint}
                if self.endpoint.startswith("http://"):
                    kwargs["credentials"] = AnonymousCredentials()
            self._clients[name] = _client_class(name)(**kwargs)
        return self._clients[name]

    @staticmethod
    def types() -> Any:
        """The request/resource types (google.cloud.compute_v1.types)."""
        _register_compute_v1()
        return importlib.import_module("google.cloud.compute_v1.types")

    # ------------------------------------------------------------------ operations

    def wait(self, op: Any, *, project: str, zone: str | None = None, region: str | None = None) -> None:
        """Wait until a (zonal/regional/global) operation is DONE; raise ComputeError on its error."""
        done = self.types().Operation.Status.DONE
        deadline = Deadline(self.op_timeout)

        def _poll(name: str, limit: float) -> Any:
            """The operation after one server-side wait; None when the wait timed out on our side."""
            if zone:
                fetch = lambda: self.client("ZoneOperationsClient").wait(  # noqa: E731
                    project=project, zone=zone, operation=name, timeout=limit
                )
            elif region:
                fetch = lambda: self.client("RegionOperationsClient").wait(  # noqa: E731
                    project=project, region=region, operation=name, timeout=limit
                )
            else:
                fetch = lambda: self.client("GlobalOperationsClient").wait(  # noqa: E731
                    project=project, operation=name, timeout=limit
                )
            return _timed_out_is_none(fetch)

        while op.status != done:
            left = deadline.left()
            if left <= 0:
                raise ComputeError(
                    f"operation {op.name} did not finish in {self.op_timeout:.0f}s", where=project
                )
            limit = max(1.0, min(left, self.call_timeout))
            polled = self._call(lambda op=op, limit=limit: _poll(op.name, limit), project)
            op = polled if polled is not None else op  # None: this wait timed out, wait again
        if op.error and op.error.errors:
            first = op.error.errors[0]
            if first.code in ("CONDITION_NOT_MET", "conditionNotMet"):
                raise PreconditionFailed(f"operation {op.name}: {first.message}", where=project)
            raise ComputeError(f"operation {op.name} failed: {first.code}: {first.message}", where=project)

    # ------------------------------------------------------------------ project metadata

    def project_metadata(self, project: str) -> tuple[dict[str, str], str]:
        """(items, fingerprint) of the project's common instance metadata."""
        proj = self._call(
            lambda: self.client("ProjectsClient").get(project=project, timeout=self.call_timeout), project
        )
        md = proj.common_instance_metadata
        items = {i.key: i.value for i in md.items}
        return items, md.fingerprint

    def set_project_metadata(self, project: str, items: Mapping[str, str], fingerprint: str) -> None:
        """Replace the common metadata if nobody changed it since `fingerprint` was read."""
        t = self.types()
        md = t.Metadata(
            fingerprint=fingerprint, items=[t.Items(key=k, value=v) for k, v in sorted(items.items())]
        )
        op = self._call(
            lambda: self.client("ProjectsClient").set_common_instance_metadata_unary(
                project=project, metadata_resource=md, timeout=self.call_timeout
            ),
            project,
        )
        self.wait(op, project=project)

    # ------------------------------------------------------------------ instances

    def instance(self, project: str, zone: str, name: str) -> Any:
        return self._call(
            lambda: self.client("InstancesClient").get(
                project=project, zone=zone, instance=name, timeout=self.call_timeout
            ),
            f"{project}/{zone}/{name}",
        )

    def set_label(
        self, project: str, zone: str, name: str, key: str, value: str | None, attempts: int = 5
    ) -> None:
        """Set (or with None, remove) one label, keeping the others; retried on a stale fingerprint."""
        t = self.types()
        where = f"{project}/{zone}/{name}"
        for _ in range(attempts):
            inst = self.instance(project, zone, name)
            labels = dict(inst.labels)
            if (labels.get(key) if value is not None else None) == value and (
                value is not None or key not in labels
            ):
                return
            if value is None:
                labels.pop(key, None)
            else:
                labels[key] = value
            req = t.InstancesSetLabelsRequest(labels=labels, label_fingerprint=inst.label_fingerprint)
            try:
                op = self._call(
                    lambda req=req: self.client("InstancesClient").set_labels_unary(
                        project=project,
                        zone=zone,
                        instance=name,
                        instances_set_labels_request_resource=req,
                        timeout=self.call_timeout,
                    ),
                    where,
                )
                self.wait(op, project=project, zone=zone)
                return
            except PreconditionFailed:
                continue
        raise ComputeError(f"label {key} kept changing under us", where=where, hint="try again")

    # ------------------------------------------------------------------ managed instance groups

    def _igm(self, ref: contract.MigRef) -> tuple[Any, dict[str, str]]:
        if ref.regional:
            return self.client("RegionInstanceGroupManagersClient"), {
                "project": ref.project,
                "region": ref.location,
                "instance_group_manager": ref.name,
            }
        return self.client("InstanceGroupManagersClient"), {
            "project": ref.project,
            "zone": ref.location,
            "instance_group_manager": ref.name,
        }

    def mig(self, ref: contract.MigRef) -> Any:
        client, where = self._igm(ref)
        return self._call(lambda: client.get(**where, timeout=self.call_timeout), str(ref))

    def managed_instances(self, ref: contract.MigRef) -> list[Any]:
        client, where = self._igm(ref)
        return self._call(
            lambda: list(client.list_managed_instances(**where, timeout=self.call_timeout)), str(ref)
        )

    def zone_instances(self, project: str, zone: str) -> dict[str, Any]:
        """Every instance of a zone by name (one list call instead of a get per member)."""
        return self._call(
            lambda: {
                i.name: i
                for i in self.client("InstancesClient").list(
                    project=project, zone=zone, timeout=self.call_timeout
                )
            },
            f"{project}/{zone}",
        )

    def mig_members(self, ref: contract.MigRef) -> list[ManagedInstance]:
        """The MIG's members with status, current action, internal IP and labels, in name order.

        A member whose instance does not exist (yet, or any more) is listed from the MIG's view."""
        managed = self.managed_instances(ref)
        zones: dict[str, str] = {}
        for mi in managed:
            match = _INSTANCE_URL.fullmatch(mi.instance)
            if match is None:
                raise ComputeError(f"unexpected instance URL {mi.instance!r}", where=str(ref))
            zones[match.group(3)] = match.group(2)
        details: dict[str, Any] = {}
        for zone in sorted(set(zones.values())):
            details.update(
                {n: i for n, i in self.zone_instances(ref.project, zone).items() if zones.get(n) == zone}
            )
        members = []
        for mi in managed:
            name = _INSTANCE_URL.fullmatch(mi.instance).group(3)  # type: ignore[union-attr]
            inst = details.get(name)
            nics = list(inst.network_interfaces) if inst is not None else []
            members.append(
                ManagedInstance(
                    mig=ref,
                    name=name,
                    zone=zones[name],
                    id=str(inst.id if inst is not None and inst.id else (mi.id or "")),
                    status=(inst.status if inst is not None else mi.instance_status) or "UNKNOWN",
                    current_action=mi.current_action or "NONE",
                    internal_ip=nics[0].network_i_p if nics else "",
                    created=inst.creation_timestamp if inst is not None else "",
                    labels=dict(inst.labels) if inst is not None else {},
                    label_fingerprint=inst.label_fingerprint if inst is not None else "",
                )
            )
        return sorted(members, key=lambda m: natural_key(m.name))

    def resize(self, ref: contract.MigRef, size: int, request_id: str | None = None) -> None:
        """Set the target size; the operation is DONE once scheduled (see wait_stable)."""
        t = self.types()
        client, where = self._igm(ref)
        kind = (
            t.ResizeRegionInstanceGroupManagerRequest if ref.regional else t.ResizeInstanceGroupManagerRequest
        )
        req = kind(**where, size=size, request_id=request_id or None)
        op = self._call(lambda: client.resize_unary(request=req, timeout=self.call_timeout), str(ref))
        self._wait_mig(op, ref)

    def recreate(
        self, ref: contract.MigRef, members: Sequence[ManagedInstance], request_id: str | None = None
    ) -> None:
        """Replace members with new VMs of the same names; DONE once scheduled (see wait_stable)."""
        t = self.types()
        client, where = self._igm(ref)
        urls = [f"projects/{ref.project}/zones/{m.zone}/instances/{m.name}" for m in members]
        if ref.regional:
            req = t.RecreateInstancesRegionInstanceGroupManagerRequest(
                **where,
                region_instance_group_managers_recreate_request_resource=(
                    t.RegionInstanceGroupManagersRecreateRequest(instances=urls)
                ),
                request_id=request_id or None,
            )
        else:
            req = t.RecreateInstancesInstanceGroupManagerRequest(
                **where,
                instance_group_managers_recreate_instances_request_resource=(
                    t.InstanceGroupManagersRecreateInstancesRequest(instances=urls)
                ),
                request_id=request_id or None,
            )
        op = self._call(
            lambda: client.recreate_instances_unary(request=req, timeout=self.call_timeout), str(ref)
        )
        self._wait_mig(op, ref)

    def reset(self, project: str, zone: str, name: str, request_id: str | None = None) -> None:
        """Reset (reboot) one instance; returns when the operation is DONE."""
        req = self.types().ResetInstanceRequest(
            project=project, zone=zone, instance=name, request_id=request_id or None
        )
        op = self._call(
            lambda: self.client("InstancesClient").reset_unary(request=req, timeout=self.call_timeout),
            f"{project}/{zone}/{name}",
        )
        self.wait(op, project=project, zone=zone)

    def _wait_mig(self, op: Any, ref: contract.MigRef) -> None:
        if ref.regional:
            self.wait(op, project=ref.project, region=ref.location)
        else:
            self.wait(op, project=ref.project, zone=ref.location)

    def wait_stable(self, ref: contract.MigRef, timeout: float = 600.0, poll: float = 1.0) -> Any:
        """Wait until the MIG has no action on any member and its size is its target size."""
        for _ in polling(timeout, poll):
            igm = self.mig(ref)
            if igm.status.is_stable:
                return igm
        raise ComputeError(
            f"MIG not stable after {timeout:.0f}s", where=str(ref), hint="see its members' currentAction"
        )

    # ------------------------------------------------------------------ guest attributes

    def guest_attributes(
        self, project: str, zone: str, name: str, query_path: str
    ) -> list[tuple[str, str, str]]:
        """(namespace, key, value) under `query_path` (e.g. "hostkeys/"); [] when none are published."""
        from google.api_core import exceptions as gexc

        t = self.types()
        req = t.GetGuestAttributesInstanceRequest(
            project=project, zone=zone, instance=name, query_path=query_path
        )

        def fetch() -> Any:
            try:
                return self.client("InstancesClient").get_guest_attributes(
                    request=req, timeout=self.call_timeout
                )
            except gexc.NotFound as exc:
                if "guestattributes" not in str(exc.message).lower():
                    raise  # the instance itself is gone
                return None  # guest attributes disabled, or nothing published under this path

        attrs = self._call(fetch, f"{project}/{zone}/{name}")
        if attrs is None:
            return []
        return [(i.namespace, i.key, i.value) for i in attrs.query_value.items]

    # ------------------------------------------------------------------ errors

    def _call(self, fn: Any, where: str) -> Any:
        from google.api_core import exceptions as gexc

        try:
            return fn()
        except gexc.PreconditionFailed as exc:
            raise PreconditionFailed(f"precondition failed: {exc.message}", where=where) from None
        except gexc.NotFound as exc:
            raise ComputeError(f"not found: {exc.message}", where=where) from None
        except gexc.GoogleAPICallError as exc:
            raise ComputeError(
                f"Compute API error {exc.code}: {exc.message}",
                where=where,
                hint="check credentials and the project, or the endpoint (gce.api_endpoint)"
                if self.endpoint
                else "check `gcloud auth application-default login` and the project",
            ) from None
        except Exception as exc:
            if type(exc).__module__.startswith(("requests", "urllib3", "google.auth")):
                raise ComputeError(
                    f"cannot reach the Compute API ({self.endpoint or 'compute.googleapis.com'}): {exc}",
                    where=where,
                ) from None
            raise


def _timed_out_is_none(fn: Any) -> Any:
    """Run `fn`; None when the request timed out on our side (an operation wait simply waits again)."""
    import requests
    from google.api_core import exceptions as gexc

    try:
        return fn()
    except (requests.exceptions.Timeout, gexc.DeadlineExceeded):
        return None
