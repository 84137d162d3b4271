"""Compute Engine reads and actions for the functions (google-cloud-compute, REST).

Thin on purpose: read a snapshot into policy's dataclasses, perform the one action a decision asks
for with its requestId. Mutations are never retried in-process (retry=None): a transient error goes
back to Pub/Sub, and the redelivery re-reads live state before acting again.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import ModuleType
from typing import Any

import fleet_contract as contract
from fleet_contract import MigRef
from policy import Autoscaler, ManagedInstance, MigState

_URL_ZONE = re.compile(r"/projects/[^/]+/zones/([^/]+)/instances/([^/]+)$")
_URL_NAME = re.compile(r"/([^/]+)$")


def _compute_package() -> ModuleType:
    """Import only the Compute services used here.

    `google.cloud.compute_v1/__init__` imports all ~100 API clients (~1 s of a cold start). We
    register the package without running it, import the few service modules we need, and let the
    first lookup of any other name (PEP 562 __getattr__) run the real __init__, so other code in the
    same process still sees the complete package.
    """
    name = "google.cloud.compute_v1"
    if name not in sys.modules:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            raise ImportError("google-cloud-compute is not installed")
        package = importlib.util.module_from_spec(spec)
        loader = spec.loader

        def complete(attr: str) -> Any:
            if not attr.startswith("__") and importlib.util.find_spec(f"{name}.{attr}") is not None:
                # `from google.cloud.compute_v1 import types`: a submodule, the import system loads it.
                raise AttributeError(attr)
            package.__dict__.pop("__getattr__", None)
            loader.exec_module(package)
            return getattr(package, attr)

        package.__dict__["__getattr__"] = complete
        sys.modules[name] = package
        setattr(sys.modules["google.cloud"], "compute_v1", package)  # noqa: B010
    return sys.modules[name]


@dataclass(frozen=True)
class _Api:
    compute: Any  # the google.cloud.compute_v1.types.compute module
    instances: Any
    igms: Any
    region_igms: Any
    autoscalers: Any
    region_autoscalers: Any
    projects: Any
    zone_ops: Any
    region_ops: Any
    global_ops: Any


def _import_api() -> tuple[Any, ...]:
    _compute_package()
    from google.cloud.compute_v1.services.autoscalers import AutoscalersClient
    from google.cloud.compute_v1.services.global_operations import GlobalOperationsClient
    from google.cloud.compute_v1.services.instance_group_managers import InstanceGroupManagersClient
    from google.cloud.compute_v1.services.instances import InstancesClient
    from google.cloud.compute_v1.services.projects import ProjectsClient
    from google.cloud.compute_v1.services.region_autoscalers import RegionAutoscalersClient
    from google.cloud.compute_v1.services.region_instance_group_managers import (
        RegionInstanceGroupManagersClient,
    )
    from google.cloud.compute_v1.services.region_operations import RegionOperationsClient
    from google.cloud.compute_v1.services.zone_operations import ZoneOperationsClient
    from google.cloud.compute_v1.types import compute

    return (
        compute,
        InstancesClient,
        InstanceGroupManagersClient,
        RegionInstanceGroupManagersClient,
        AutoscalersClient,
        RegionAutoscalersClient,
        ProjectsClient,
        ZoneOperationsClient,
        RegionOperationsClient,
        GlobalOperationsClient,
    )


def preload() -> None:
    """Do the imports at cold start rather than during the first event."""
    _import_api()
    import google.api_core.exceptions  # noqa: F401


def is_transient(exc: BaseException) -> bool:
    """Errors worth a redelivery: unavailable, throttled, timeouts, lost connections, CAS conflicts."""
    from google.api_core import exceptions as gexc

    transient: tuple[type[BaseException], ...] = (
        gexc.ServiceUnavailable,
        gexc.InternalServerError,
        gexc.BadGateway,
        gexc.GatewayTimeout,
        gexc.TooManyRequests,
        gexc.DeadlineExceeded,
        gexc.Aborted,
        gexc.Conflict,  # 409: another change is in flight
        gexc.PreconditionFailed,  # 412: labels or metadata changed under us; re-read and decide again
        gexc.RetryError,
        ConnectionError,
        TimeoutError,
    )
    if isinstance(exc, transient):
        return True
    try:
        import requests
    except ImportError:  # pragma: no cover - requests comes with google-auth's transport
        return False
    return isinstance(exc, requests.ConnectionError | requests.Timeout)


def describe_error(exc: BaseException) -> str:
    """A log-safe one-liner: the API's own status and message, never request URLs or headers."""
    message = getattr(exc, "message", None)
    code = getattr(exc, "code", None)
    if isinstance(message, str):
        return f"{type(exc).__name__} ({code}): {message}"[:500]
    return f"{type(exc).__name__}: {exc}"[:500]


@dataclass(frozen=True)
class OpResult:
    """A Compute operation as far as the functions care."""

    name: str
    status: str  # PENDING | RUNNING | DONE
    error: str
    project: str
    location: str  # zone, region, or "global"

    @property
    def result(self) -> str:
        if self.error:
            return "failed"
        return "done" if self.status == "DONE" else "started"


def _epoch(timestamp: str) -> float | None:
    if not timestamp:
        return None
    try:
        return datetime.fromisoformat(timestamp).timestamp()
    except ValueError:
        return None


def _last(url: str) -> str:
    match = _URL_NAME.search(url or "")
    return match.group(1) if match else ""


class Compute:
    """The Compute calls of autoheal and scale, against Google or a local endpoint."""

    def __init__(self, endpoint: str | None, timeout: float) -> None:
        (
            compute,
            instances,
            igms,
            region_igms,
            autoscalers,
            region_autoscalers,
            projects,
            zone_ops,
            region_ops,
            global_ops,
        ) = _import_api()
        kwargs: dict[str, Any]
        if endpoint:
            from google.auth.credentials import AnonymousCredentials

            kwargs = {"credentials": AnonymousCredentials(), "client_options": {"api_endpoint": endpoint}}
        else:
            import google.auth

            credentials, _project = google.auth.default()
            kwargs = {"credentials": credentials}
        self.timeout = timeout
        self.api = _Api(
            compute,
            instances(**kwargs),
            igms(**kwargs),
            region_igms(**kwargs),
            autoscalers(**kwargs),
            region_autoscalers(**kwargs),
            projects(**kwargs),
            zone_ops(**kwargs),
            region_ops(**kwargs),
            global_ops(**kwargs),
        )

    def _call(self, method: Any, request: Any) -> Any:
        return method(request=request, retry=None, timeout=self.timeout)

    # --- reads ---------------------------------------------------------------------------------

    def fleet_state(self, refs: Sequence[MigRef], with_autoscalers: bool = False) -> list[MigState]:
        """Every configured MIG with its members (labels, actions, creation times)."""
        return [self.mig_state(ref, with_autoscalers) for ref in refs]

    def mig_state(self, ref: MigRef, with_autoscaler: bool = False) -> MigState:
        c = self.api.compute
        if ref.regional:
            igm = self._call(
                self.api.region_igms.get,
                c.GetRegionInstanceGroupManagerRequest(
                    project=ref.project, region=ref.location, instance_group_manager=ref.name
                ),
            )
            managed = self._call(
                self.api.region_igms.list_managed_instances,
                c.ListManagedInstancesRegionInstanceGroupManagersRequest(
                    project=ref.project, region=ref.location, instance_group_manager=ref.name
                ),
            )
        else:
            igm = self._call(
                self.api.igms.get,
                c.GetInstanceGroupManagerRequest(
                    project=ref.project, zone=ref.location, instance_group_manager=ref.name
                ),
            )
            managed = self._call(
                self.api.igms.list_managed_instances,
                c.ListManagedInstancesInstanceGroupManagersRequest(
                    project=ref.project, zone=ref.location, instance_group_manager=ref.name
                ),
            )
        managed = list(managed)
        zones = sorted({m.group(1) for mi in managed if (m := _URL_ZONE.search(mi.instance))})
        resources = self._instances(ref.project, zones)
        members = []
        for mi in managed:
            match = _URL_ZONE.search(mi.instance)
            zone, name = (match.group(1), match.group(2)) if match else ("", mi.name)
            inst = resources.get((zone, name))
            members.append(
                ManagedInstance(
                    name=name,
                    zone=zone,
                    id=str(mi.id) if mi.id else (str(inst.id) if inst is not None else ""),
                    current_action=mi.current_action or "NONE",
                    status=(inst.status if inst is not None else mi.instance_status) or "",
                    created=_epoch(inst.creation_timestamp) if inst is not None else None,
                    labels=dict(inst.labels) if inst is not None else {},
                    label_fingerprint=inst.label_fingerprint if inst is not None else "",
                )
            )
        autoscaler = None
        if with_autoscaler and igm.status.autoscaler:
            autoscaler = self._autoscaler(ref, _last(igm.status.autoscaler))
        return MigState(ref=ref, target_size=igm.target_size, members=tuple(members), autoscaler=autoscaler)

    def _instances(self, project: str, zones: Iterable[str]) -> dict[tuple[str, str], Any]:
        out = {}
        for zone in zones:
            pager = self._call(
                self.api.instances.list, self.api.compute.ListInstancesRequest(project=project, zone=zone)
            )
            for inst in pager:
                out[(zone, inst.name)] = inst
        return out

    def _autoscaler(self, ref: MigRef, name: str) -> Autoscaler:
        c = self.api.compute
        if ref.regional:
            auto = self._call(
                self.api.region_autoscalers.get,
                c.GetRegionAutoscalerRequest(project=ref.project, region=ref.location, autoscaler=name),
            )
        else:
            auto = self._call(
                self.api.autoscalers.get,
                c.GetAutoscalerRequest(project=ref.project, zone=ref.location, autoscaler=name),
            )
        pol = auto.autoscaling_policy
        return Autoscaler(auto.name, pol.min_num_replicas, pol.max_num_replicas, pol.mode or "ON")

    def lock_text(self, project: str) -> str | None:
        """The raw fleet lock value from the project's common instance metadata (None if absent)."""
        proj = self._call(self.api.projects.get, self.api.compute.GetProjectRequest(project=project))
        for item in proj.common_instance_metadata.items:
            if item.key == contract.LOCK_METADATA_KEY:
                return str(item.value)
        return None

    # --- actions -------------------------------------------------------------------------------

    def _op(self, op: Any, project: str) -> OpResult:
        location = _last(op.zone) or _last(op.region) or "global"
        errors = [e.message or e.code for e in op.error.errors] if op.error and op.error.errors else []
        if not errors and op.http_error_message:
            errors = [op.http_error_message]
        return OpResult(op.name, op.status.name, "; ".join(errors), project, location)

    def set_labels(
        self, project: str, member: ManagedInstance, labels: dict[str, str], request_id: str
    ) -> OpResult:
        c = self.api.compute
        body = c.InstancesSetLabelsRequest(labels=labels, label_fingerprint=member.label_fingerprint)
        op = self._call(
            self.api.instances.set_labels_unary,
            c.SetLabelsInstanceRequest(
                project=project,
                zone=member.zone,
                instance=member.name,
                instances_set_labels_request_resource=body,
                request_id=request_id,
            ),
        )
        return self._op(op, project)

    def reset(self, project: str, member: ManagedInstance, request_id: str) -> OpResult:
        c = self.api.compute
        op = self._call(
            self.api.instances.reset_unary,
            c.ResetInstanceRequest(
                project=project, zone=member.zone, instance=member.name, request_id=request_id
            ),
        )
        return self._op(op, project)

    def recreate(self, ref: MigRef, member: ManagedInstance, request_id: str) -> OpResult:
        c = self.api.compute
        url = f"projects/{ref.project}/zones/{member.zone}/instances/{member.name}"
        if ref.regional:
            op = self._call(
                self.api.region_igms.recreate_instances_unary,
                c.RecreateInstancesRegionInstanceGroupManagerRequest(
                    project=ref.project,
                    region=ref.location,
                    instance_group_manager=ref.name,
                    region_instance_group_managers_recreate_request_resource=c.RegionInstanceGroupManagersRecreateRequest(
                        instances=[url]
                    ),
                    request_id=request_id,
                ),
            )
        else:
            op = self._call(
                self.api.igms.recreate_instances_unary,
                c.RecreateInstancesInstanceGroupManagerRequest(
                    project=ref.project,
                    zone=ref.location,
                    instance_group_manager=ref.name,
                    instance_group_managers_recreate_instances_request_resource=c.InstanceGroupManagersRecreateInstancesRequest(
                        instances=[url]
                    ),
                    request_id=request_id,
                ),
            )
        return self._op(op, ref.project)

    def resize(self, ref: MigRef, size: int, request_id: str) -> OpResult:
        c = self.api.compute
        if ref.regional:
            op = self._call(
                self.api.region_igms.resize_unary,
                c.ResizeRegionInstanceGroupManagerRequest(
                    project=ref.project,
                    region=ref.location,
                    instance_group_manager=ref.name,
                    size=size,
                    request_id=request_id,
                ),
            )
        else:
            op = self._call(
                self.api.igms.resize_unary,
                c.ResizeInstanceGroupManagerRequest(
                    project=ref.project,
                    zone=ref.location,
                    instance_group_manager=ref.name,
                    size=size,
                    request_id=request_id,
                ),
            )
        return self._op(op, ref.project)

    def set_autoscaler_bounds(
        self, ref: MigRef, autoscaler: str, minimum: int, maximum: int, request_id: str
    ) -> OpResult:
        """PATCH only the replica bounds; the autoscaler keeps its signals, mode and cooldown."""
        c = self.api.compute
        body = c.Autoscaler(
            name=autoscaler,
            autoscaling_policy=c.AutoscalingPolicy(min_num_replicas=minimum, max_num_replicas=maximum),
        )
        if ref.regional:
            op = self._call(
                self.api.region_autoscalers.patch_unary,
                c.PatchRegionAutoscalerRequest(
                    project=ref.project,
                    region=ref.location,
                    autoscaler=autoscaler,
                    autoscaler_resource=body,
                    request_id=request_id,
                ),
            )
        else:
            op = self._call(
                self.api.autoscalers.patch_unary,
                c.PatchAutoscalerRequest(
                    project=ref.project,
                    zone=ref.location,
                    autoscaler=autoscaler,
                    autoscaler_resource=body,
                    request_id=request_id,
                ),
            )
        return self._op(op, ref.project)

    def wait(self, op: OpResult, seconds: float) -> OpResult:
        """Poll up to `seconds` for DONE with our own operations clients (same endpoint as the call).

        Polls with get rather than operations.wait: wait blocks server-side for up to two minutes,
        longer than we are willing to hold a function instance.
        """
        c = self.api.compute
        deadline = time.monotonic() + seconds
        current, pause = op, 0.05
        while current.status != "DONE" and time.monotonic() < deadline:
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, 1.0)
            if current.location == "global":
                raw = self._call(
                    self.api.global_ops.get,
                    c.GetGlobalOperationRequest(project=op.project, operation=op.name),
                )
            elif MigRef(op.project, op.location, "x").regional:
                raw = self._call(
                    self.api.region_ops.get,
                    c.GetRegionOperationRequest(project=op.project, region=op.location, operation=op.name),
                )
            else:
                raw = self._call(
                    self.api.zone_ops.get,
                    c.GetZoneOperationRequest(project=op.project, zone=op.location, operation=op.name),
                )
            current = self._op(raw, op.project)
        return current
