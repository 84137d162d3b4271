"""What the local fleet takes from the Compute resources `fab infra.apply` created: pure translations.

On GCE a VM is made from its instance template, a backend service configures the load balancer and a
MIG applies its own autohealing policy. The local fleet does the same with what its Compute endpoint
keeps (standins/compute_resources.py), read back as the API returns it:
  instance template  -> `TemplateSpec`: the labels, metadata (startup script included), service account
                        and scopes, network tags a member is created with
  backend service +  -> `fleet.local.lb.BackendConfig`: haproxy's balance (affinity), readiness check
  its health check      (path, interval, timeout, rise/fall) and connection draining
  MIG autoHealing-   -> `standins.autohealing.HealingPolicy`: the liveness check and initial delay
  Policies + check

What has no local meaning (machine type, disks, Shielded VM, scheduling) is kept in the template and
shown, never acted on (docs/local-fleet.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fleet.errors import FleetError
from fleet.local.lb import BackendConfig
from standins.autohealing import HealingPolicy, HealthCheck

Lookup = Callable[[str], Mapping[str, Any] | None]  # a resource URL -> its JSON (None: absent)


API = "https://www.googleapis.com/compute/v1"  # what Compute names its resources by


def full_url(ref: str) -> str:
    """A resource reference as a full URL (infra sends `projects/...` paths)."""
    return ref if ref.startswith(("http://", "https://")) else f"{API}/{ref.lstrip('/')}"


@dataclass(frozen=True)
class TemplateSpec:
    """What a member created from one instance template carries."""

    url: str  # the template's selfLink: instances' `instance-template` metadata, the MIG's version
    labels: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)  # startup-script included
    service_account: str = ""  # "" = the project's default compute account
    scopes: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    machine_type: str = ""

    @property
    def name(self) -> str:
        return self.url.rsplit("/", 1)[-1]


def template_spec(template: Mapping[str, Any]) -> TemplateSpec:
    """An instance template's JSON (instanceTemplates.get) as the spec of the members made from it."""
    where = f"instance template {template.get('name', '?')}"
    props = template.get("properties")
    if not isinstance(props, Mapping):
        raise FleetError("the instance template has no properties", where=where)
    items = (props.get("metadata") or {}).get("items") or []
    metadata: dict[str, str] = {}
    for item in items:
        if not isinstance(item, Mapping) or not isinstance(item.get("key"), str):
            raise FleetError(f"metadata item {item!r} has no key", where=where)
        metadata[item["key"]] = str(item.get("value", ""))
    if "startup-script" not in metadata:
        raise FleetError(
            "the instance template has no startup-script: its VMs would never install the agent",
            where=where,
            hint="templates made by `fab infra.apply` always carry one",
        )
    accounts = props.get("serviceAccounts") or []
    account = accounts[0] if accounts and isinstance(accounts[0], Mapping) else {}
    return TemplateSpec(
        url=str(template.get("selfLink") or template.get("name", "")),
        labels={str(k): str(v) for k, v in (props.get("labels") or {}).items()},
        metadata=metadata,
        service_account=str(account.get("email", "")),
        scopes=tuple(str(s) for s in account.get("scopes") or ()),
        tags=tuple(str(t) for t in (props.get("tags") or {}).get("items") or ()),
        machine_type=str(props.get("machineType", "")),
    )


def health_check(check: Mapping[str, Any], url: str) -> HealthCheck:
    """A healthChecks resource as the autohealer's check (the API's defaults where a field is absent)."""
    http = check.get("httpHealthCheck") or {}
    try:
        return HealthCheck(
            url=url,
            path=str(http.get("requestPath", "/")),
            port=int(http.get("port", 80)),
            check_interval=float(check.get("checkIntervalSec", 5)),
            timeout=float(check.get("timeoutSec", 5)),
            healthy_threshold=int(check.get("healthyThreshold", 2)),
            unhealthy_threshold=int(check.get("unhealthyThreshold", 2)),
        )
    except (TypeError, ValueError) as exc:
        raise FleetError(f"health check {check.get('name', url)}: {exc}", where="local MIG") from None


def healing_policy(mig: Mapping[str, Any], lookup: Lookup) -> HealingPolicy | None:
    """The MIG's first autoHealingPolicies entry with its health check read back; None without one."""
    policies = mig.get("autoHealingPolicies") or []
    if not policies:
        return None
    policy = policies[0]
    url = full_url(str(policy.get("healthCheck", "")))
    check = lookup(url)
    if check is None:
        raise FleetError(f"the autohealing policy's health check {url} does not exist", where="local MIG")
    return HealingPolicy(health_check(check, url), float(policy.get("initialDelaySec", 0)))


def backend_config(service: Mapping[str, Any], lookup: Lookup) -> BackendConfig:
    """A backend service and its first health check as the local haproxy's settings."""
    checks = service.get("healthChecks") or []
    if not checks:
        raise FleetError(
            f"backend service {service.get('name', '?')} has no health check",
            where="local LB",
            hint="the local LB checks readiness with the backend service's health check",
        )
    check = lookup(str(checks[0]))
    if check is None:
        raise FleetError(f"health check {checks[0]} does not exist", where="local LB")
    return BackendConfig.from_api(service, check)
