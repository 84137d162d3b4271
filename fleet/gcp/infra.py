"""The Compute side of a fleet, derived from the inventory (`data.infra`) and applied idempotently.

`desired_state(config)` builds, in dependency order, every resource `fab infra.apply` owns: the VPC
and private subnet (or adopts existing ones), a Cloud Router with Cloud NAT, firewall rules (IAP to
22, Google's health checkers to the app port, internal traffic), two health checks (readiness: the
drain-aware /health, for the load balancer; liveness: nginx's own path, for MIG autohealing), the
instance template (no external IP, Shielded VM, guest attributes, the service account and scopes,
the agent's startup script and metadata, labels), the regional MIG over >= 2 zones with its
autohealing policy and named port, the backend service (session affinity, connection draining,
readiness check), URL map, target HTTP proxy or HTTPS proxy with a Google-managed certificate, and the
global forwarding rule.

Compute names objects after us, so ours are the ones whose `description` carries the fleet's mark
(`fleet-infra:<fleet>;`); a name taken by anything else is a conflict, never overwritten. A plan
compares each desired resource with what exists, only on the fields we set, with references compared
by path, and says create / update / replace / unchanged / adopt / conflict, and orphan (delete with
prune) for our resources no longer wanted. Instance templates and managed certificates cannot change
in place, so their names carry a hash of their content: a change is a new one, the MIG or the proxy
is pointed at it, and the old one becomes an orphan. The MIG's size is set at creation only (the
autoscaler, the scale function and operators own it afterwards), and the MIG itself is never deleted
by prune (that would delete its VMs).

Everything above `InfraClients` is pure (unit-tested without any API).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from fleet.commands.agent import parse_store, startup_script
from fleet.commands.iam import GcloudLine, service_account_lines
from fleet.errors import FleetError, InventoryError
from fleet.gcp.compute import Compute, ComputeError
from fleet.gcp.migupdate import BASE_KEY, RELEASE_KEY, VERSION_KEY, release_properties
from functions import fleet_contract as contract

IAP_RANGE = "35.235.240.0/20"  # IAP TCP forwarding
HEALTH_CHECK_RANGES = ("35.191.0.0/16", "130.211.0.0/22")  # Google's health checkers and GFEs
READINESS_PATH = "/health"  # nginx: 503 while the host is drained (docs/compose.md)
BACKEND_TIMEOUT = 600  # seconds: Dify streams LLM answers; the backend service's 30 s default cuts them
MARK = "fleet-infra:{fleet};"
NAMED_PORT = "http"


class InfraError(FleetError):
    """infra.plan/apply cannot go on (a conflict, a failed call or operation)."""


# ---------------------------------------------------------------------------------------------
# Kinds: how each resource is reached with google-cloud-compute
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KindSpec:
    kind: str  # the REST collection: firewalls, instanceTemplates, ...
    client: str  # compute_v1 client class
    type_name: str  # compute_v1 resource type
    arg: str  # the name argument of get/patch/delete
    regional: bool = False
    mutable: tuple[str, ...] = ()  # top-level fields `patch` may change; other differences: replace
    fingerprint: bool = False  # a patch must carry the current fingerprint
    replaceable: bool = False  # a difference in an immutable field may delete + create it
    prunable: bool = True

    @property
    def label(self) -> str:
        return {
            "instanceTemplates": "instance template",
            "healthChecks": "health check",
            "backendServices": "backend service",
            "urlMaps": "URL map",
            "targetHttpProxies": "target HTTP proxy",
            "targetHttpsProxies": "target HTTPS proxy",
            "sslCertificates": "SSL certificate",
            "forwardingRules": "forwarding rule",
            "instanceGroupManagers": "regional MIG",
        }.get(self.kind, self.kind.rstrip("s").replace("subnetwork", "subnet"))


KINDS: dict[str, KindSpec] = {
    k.kind: k
    for k in (
        KindSpec("networks", "NetworksClient", "Network", "network"),
        KindSpec("subnetworks", "SubnetworksClient", "Subnetwork", "subnetwork", regional=True),
        KindSpec(
            "routers", "RoutersClient", "Router", "router", regional=True, mutable=("description", "nats")
        ),
        KindSpec(
            "firewalls",
            "FirewallsClient",
            "Firewall",
            "firewall",
            mutable=("description", "allowed", "sourceRanges", "targetTags", "priority", "direction"),
        ),
        KindSpec(
            "healthChecks",
            "HealthChecksClient",
            "HealthCheck",
            "health_check",
            mutable=(
                "description",
                "type",
                "httpHealthCheck",
                "checkIntervalSec",
                "timeoutSec",
                "healthyThreshold",
                "unhealthyThreshold",
                "logConfig",
            ),
        ),
        KindSpec("instanceTemplates", "InstanceTemplatesClient", "InstanceTemplate", "instance_template"),
        KindSpec(
            "instanceGroupManagers",
            "RegionInstanceGroupManagersClient",
            "InstanceGroupManager",
            "instance_group_manager",
            regional=True,
            mutable=("description", "instanceTemplate", "autoHealingPolicies", "namedPorts", "updatePolicy"),
            prunable=False,
        ),
        KindSpec(
            "backendServices",
            "BackendServicesClient",
            "BackendService",
            "backend_service",
            mutable=(
                "description",
                "protocol",
                "portName",
                "timeoutSec",
                "healthChecks",
                "sessionAffinity",
                "connectionDraining",
                "backends",
                "logConfig",
            ),
            fingerprint=True,
        ),
        KindSpec(
            "urlMaps",
            "UrlMapsClient",
            "UrlMap",
            "url_map",
            mutable=("description", "defaultService"),
            fingerprint=True,
        ),
        KindSpec("sslCertificates", "SslCertificatesClient", "SslCertificate", "ssl_certificate"),
        KindSpec(
            "targetHttpProxies",
            "TargetHttpProxiesClient",
            "TargetHttpProxy",
            "target_http_proxy",
            mutable=("description", "urlMap"),
            fingerprint=True,
        ),
        KindSpec(
            "targetHttpsProxies",
            "TargetHttpsProxiesClient",
            "TargetHttpsProxy",
            "target_https_proxy",
            mutable=("description", "urlMap", "sslCertificates"),
            fingerprint=True,
        ),
        KindSpec(
            "forwardingRules",
            "GlobalForwardingRulesClient",
            "ForwardingRule",
            "forwarding_rule",
            mutable=("target",),
            replaceable=True,
        ),
    )
}
ORDER = tuple(KINDS)  # creation order; deletion runs backwards


# ---------------------------------------------------------------------------------------------
# Configuration: data.infra and what it derives from (lb, app, gce, store, monitoring)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HealthCheckSpec:
    name: str
    path: str
    interval: int
    timeout: int
    healthy: int
    unhealthy: int


@dataclass(frozen=True)
class InfraConfig:
    fleet: str
    project: str
    region: str
    zones: tuple[str, ...]
    mig: str
    base_instance_name: str
    size: int
    network: str
    create_network: bool
    subnet: str
    create_subnet: bool
    cidr: str
    machine_type: str
    image: str
    disk_size_gb: int
    disk_type: str
    service_account: str
    scopes: tuple[str, ...]
    domains: tuple[str, ...]
    tag: str
    http_port: int
    readiness: HealthCheckSpec
    liveness: HealthCheckSpec
    initial_delay: int
    session_affinity: str
    draining_timeout: int
    router: str
    nat: str
    template_prefix: str
    backend_service: str
    url_map: str
    proxy: str
    forwarding_rule: str
    certificate_prefix: str
    firewall_prefix: str
    metadata: tuple[tuple[str, str], ...]  # the template's metadata items except the startup script
    store_url: str
    endpoint: str | None = None
    autohealing: bool = True  # the MIG's autoHealingPolicies on the liveness check
    # for the IAM lines only
    secrets: tuple[tuple[str, str], ...] = ()
    functions_account: str | None = None
    project_number: str | None = None
    alerts_topic: str | None = None

    @property
    def mark(self) -> str:
        return MARK.format(fleet=self.fleet)

    @property
    def mig_path(self) -> str:
        return f"projects/{self.project}/regions/{self.region}/instanceGroupManagers/{self.mig}"


def _whole_seconds(value: float, field_name: str, where: str) -> int:
    if value != int(value) or value < 1:
        raise InventoryError(
            f"field {field_name}: {value!r} must be whole seconds (>= 1) for a Compute health check",
            where=where,
            hint="Compute health checks and connection draining take integer seconds",
        )
    return int(value)


def _secret_refs(data: Any, project: str) -> tuple[tuple[str, str], ...]:
    out = []
    for source in data.secrets.values():
        ref = source.secret_manager
        if not ref:
            continue
        ref = ref.split("/versions/", 1)[0]
        if ref.startswith("projects/"):
            parts = ref.split("/")
            if len(parts) == 4:
                out.append((parts[1], parts[3]))
        else:
            out.append((project, ref))
    return tuple(sorted(set(out)))


def config_from_data(
    data: Any, where: str, username: str | None = None, endpoint: str | None = None
) -> InfraConfig:
    """Resolve `data.infra` against the rest of the fleet-wide settings, with clear errors.

    `data` is the typed settings of defaults.yaml (fleet.inventory.schema.Data; this layer sits below
    the inventory, so it reads attributes and does not import the model)."""
    infra = data.infra
    if infra is None:
        raise InventoryError(
            "no data.infra section",
            where=where,
            hint="add `infra:` (region, zones, service_account, ...) to defaults.yaml; see docs/infra.md",
        )
    project = infra.project or data.gce.project
    if not project:
        raise InventoryError("field infra.project: not set (nor gce.project)", where=where)
    mig = infra.mig
    regional = [m for m in data.gce.migs if m.get("region")]
    if mig is None:
        if len(regional) != 1:
            raise InventoryError(
                "field infra.mig: not set, and gce.migs has no single regional MIG to take it from",
                where=where,
                hint="name the MIG in infra.mig, and list it in gce.migs as {project, region, name}",
            )
        mig = regional[0]["name"]
    listed = [m for m in data.gce.migs if m.get("name") == mig]
    if not listed:
        raise InventoryError(
            f"field infra.mig: {mig!r} is not in gce.migs",
            where=where,
            hint=f"add {{project: {project}, region: {infra.region}, name: {mig}}} to gce.migs",
        )
    spec = listed[0]
    if spec.get("region") != infra.region or (spec.get("project") or project) != project:
        raise InventoryError(
            f"gce.migs entry {mig!r} is {spec.get('project')}/{spec.get('region') or spec.get('zone')}, "
            f"infra builds it in {project}/{infra.region}",
            where=where,
            hint="infra makes a regional MIG: list it in gce.migs with region: (not zone:) "
            "and the same project",
        )
    if data.store is None:
        raise InventoryError(
            "no data.store section: the instance template's startup script installs the agent from it",
            where=where,
            hint="add `store: {url: gs://BUCKET/fleets/<fleet>}` (docs/release-store.md)",
        )
    store = parse_store(data.store.url)
    fleet = store.prefix.rsplit("/", 1)[-1]
    names = infra.names
    lb = data.lb
    backend = names.backend_service or lb.backend or f"{mig}-backend"
    if lb.backend and names.backend_service and lb.backend != names.backend_service:
        raise InventoryError(
            f"lb.backend {lb.backend!r} and infra.names.backend_service {names.backend_service!r} differ",
            where=where,
            hint="rollouts read the backend service named in lb.backend: use one name",
        )
    if lb.kind != "gcp":
        raise InventoryError(
            f"field lb.kind: {lb.kind!r}; infra builds a Google Cloud load balancer",
            where=where,
            hint="set lb.kind: gcp (rollouts then watch the backend service's health)",
        )
    mon = data.monitoring
    if mon and mon.scale and mon.scale.migs is not None and mig not in mon.scale.migs:
        raise InventoryError(
            f"monitoring.scale.migs {mon.scale.migs} does not name the MIG {mig!r}",
            where=where,
            hint="the scale policies must select the MIG infra creates",
        )
    lb_url = mon.uptime.lb_url if mon else None
    if lb_url:
        scheme, _, rest = lb_url.partition("://")
        host = rest.split("/", 1)[0].split(":", 1)[0]
        if scheme == "https" and host not in infra.domains:
            raise InventoryError(
                f"monitoring.uptime.lb_url {lb_url!r} is https on {host}, "
                f"but infra.domains is {list(infra.domains) or 'empty'}",
                where=where,
                hint="the LB serves https only for infra.domains (a managed certificate): add the host "
                "there, or the uptime check fails forever",
            )
        if scheme == "http" and infra.domains:
            raise InventoryError(
                f"monitoring.uptime.lb_url {lb_url!r} is http, but the LB serves https (infra.domains)",
                where=where,
                hint=f"use https://{infra.domains[0]}/health",
            )
    interval = _whole_seconds(lb.check_interval, "lb.check_interval", where)
    readiness = HealthCheckSpec(
        names.readiness_check or f"{mig}-ready",
        READINESS_PATH,
        interval,
        min(interval, 5),
        lb.healthy_threshold,
        lb.unhealthy_threshold,
    )
    live = lb.liveness
    if live.timeout > live.check_interval:
        raise InventoryError(
            f"lb.liveness.timeout {live.timeout} is longer than its check_interval {live.check_interval}",
            where=where,
            hint="Compute needs timeoutSec <= checkIntervalSec",
        )
    if live.path == READINESS_PATH:
        raise InventoryError(
            "lb.liveness.path is the drain-aware /health",
            where=where,
            hint="autohealing on /health would recreate every host a rollout drains; use nginx's own path",
        )
    liveness = HealthCheckSpec(
        names.liveness_check or f"{mig}-live",
        live.path,
        live.check_interval,
        live.timeout,
        live.healthy_threshold,
        live.unhealthy_threshold,
    )
    if readiness.name == liveness.name:
        raise InventoryError("the readiness and liveness health checks have the same name", where=where)
    draining = lb.draining_timeout
    if draining != int(draining):
        raise InventoryError(f"field lb.draining_timeout: {draining!r} must be whole seconds", where=where)
    app = data.app
    beat = data.gce.beat or "none"
    metadata = {
        "enable-guest-attributes": "TRUE",
        "fleet-name": fleet,
        "fleet-store": store.url,
        "fleet-roles": ",".join(data.roles or ["app"]),
        "fleet-beat": beat,
        "fleet-mig": f"projects/{project}/regions/{infra.region}/instanceGroupManagers/{mig}",
        "fleet-app-dir": app.dir,
        "fleet-app-project": app.project,
        "fleet-http-port": str(app.http_port),
        # the agent prunes to this many releases after serving one, as `fab deploy` does (app.keep_releases)
        "fleet-keep-releases": str(app.keep_releases),
    }
    if username:
        metadata["fleet-deploy-user"] = username
    # the template's VMs have no external IP, so autoheal's per-instance signal is the agent's health
    # metric (docs/selfheal.md, "Without public IPs"): on unless monitoring says uptime checks or none
    mon = data.monitoring
    if mon is not None and mon.instance_health.source in ("auto", "agent-metric"):
        metadata["fleet-health-metric"] = "true"
    clash = sorted(set(metadata) & set(infra.metadata))
    if clash or "startup-script" in infra.metadata:
        raise InventoryError(
            f"infra.metadata sets {', '.join(clash or ['startup-script'])}, which infra derives itself",
            where=where,
            hint="set those through store, roles, app and gce.beat",
        )
    metadata.update(infra.metadata)
    return InfraConfig(
        fleet=fleet,
        project=project,
        region=infra.region,
        zones=tuple(infra.zones),
        mig=mig,
        base_instance_name=infra.base_instance_name or mig,
        size=infra.size,
        network=infra.network.name or f"{mig}-vpc",
        create_network=infra.network.create,
        subnet=infra.subnet.name or f"{mig}-subnet",
        create_subnet=infra.subnet.create,
        cidr=infra.subnet.cidr,
        machine_type=infra.machine_type,
        image=infra.image,
        disk_size_gb=infra.disk_size_gb,
        disk_type=infra.disk_type,
        service_account=infra.service_account,
        scopes=tuple(infra.scopes),
        domains=tuple(infra.domains),
        tag=infra.tag or mig,
        http_port=app.http_port,
        readiness=readiness,
        liveness=liveness,
        initial_delay=live.initial_delay,
        session_affinity=lb.session_affinity,
        draining_timeout=int(draining),
        router=names.router or f"{mig}-router",
        nat=names.nat or f"{mig}-nat",
        template_prefix=names.template_prefix or f"{mig}-tpl",
        backend_service=backend,
        url_map=names.url_map or f"{mig}-urlmap",
        proxy=names.proxy or f"{mig}-{'https' if infra.domains else 'http'}-proxy",
        forwarding_rule=names.forwarding_rule or f"{mig}-rule",
        certificate_prefix=names.certificate_prefix or f"{mig}-cert",
        firewall_prefix=names.firewall_prefix or mig,
        metadata=tuple(sorted(metadata.items())),
        store_url=store.url,
        endpoint=endpoint or data.gce.api_endpoint,
        autohealing=infra.autohealing,
        secrets=_secret_refs(data, project),
        functions_account=(mon.functions.service_account if mon and mon.functions else None),
        project_number=mon.project_number if mon else None,
        alerts_topic=mon.alerts_topic if mon else None,
    )


# ---------------------------------------------------------------------------------------------
# Desired state (pure): Compute JSON (camelCase), references as projects/... paths
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Desired:
    kind: str
    name: str
    body: dict[str, Any]
    location: str = ""  # the region of a regional resource
    adopt: bool = False  # exists already and is not ours: checked, never changed or deleted
    check: tuple[str, ...] = ()  # for adopted resources: the fields that must match
    create_only: tuple[str, ...] = ()  # set at creation, never compared (the MIG's targetSize)

    @property
    def spec(self) -> KindSpec:
        return KINDS[self.kind]


def _hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:8]


def desired_state(config: InfraConfig) -> list[Desired]:
    """Every resource infra owns or adopts, in creation order."""
    c = config
    g = f"projects/{c.project}/global"
    r = f"projects/{c.project}/regions/{c.region}"
    network, subnet = f"{g}/networks/{c.network}", f"{r}/subnetworks/{c.subnet}"

    def desc(text: str) -> str:
        return f"{text} ({c.mark} managed by `fab infra.apply`)"

    out: list[Desired] = []
    if c.create_network:
        out.append(
            Desired(
                "networks",
                c.network,
                {"name": c.network, "description": desc("the fleet's VPC"), "autoCreateSubnetworks": False},
            )
        )
    else:
        out.append(Desired("networks", c.network, {"name": c.network}, adopt=True))
    subnet_body = {
        "name": c.subnet,
        "description": desc("the VMs' private subnet"),
        "network": network,
        "ipCidrRange": c.cidr,
        "privateIpGoogleAccess": True,
    }
    if c.create_subnet:
        out.append(Desired("subnetworks", c.subnet, subnet_body, location=c.region))
    else:
        out.append(
            Desired(
                "subnetworks",
                c.subnet,
                {"name": c.subnet, "network": network, "ipCidrRange": c.cidr},
                location=c.region,
                adopt=True,
                check=("network", "ipCidrRange"),
            )
        )
    out.append(
        Desired(
            "routers",
            c.router,
            {
                "name": c.router,
                "description": desc("Cloud NAT for the private VMs"),
                "network": network,
                "nats": [
                    {
                        "name": c.nat,
                        "natIpAllocateOption": "AUTO_ONLY",
                        "sourceSubnetworkIpRangesToNat": "LIST_OF_SUBNETWORKS",
                        "subnetworks": [{"name": subnet, "sourceIpRangesToNat": ["ALL_IP_RANGES"]}],
                        "logConfig": {"enable": True, "filter": "ERRORS_ONLY"},
                    }
                ],
            },
            location=c.region,
        )
    )

    def firewall(suffix: str, text: str, allowed: list[dict[str, Any]], sources: Sequence[str]) -> Desired:
        name = f"{c.firewall_prefix}-{suffix}"
        return Desired(
            "firewalls",
            name,
            {
                "name": name,
                "description": desc(text),
                "network": network,
                "direction": "INGRESS",
                "priority": 1000,
                "allowed": allowed,
                "sourceRanges": list(sources),
                "targetTags": [c.tag],
            },
        )

    out += [
        firewall(
            "allow-iap-ssh",
            "SSH only through IAP TCP forwarding",
            [{"IPProtocol": "tcp", "ports": ["22"]}],
            [IAP_RANGE],
        ),
        firewall(
            "allow-health-checks",
            "the load balancer and its health checkers to the app port",
            [{"IPProtocol": "tcp", "ports": [str(c.http_port)]}],
            HEALTH_CHECK_RANGES,
        ),
        firewall(
            "allow-internal",
            "traffic between the fleet's VMs",
            [{"IPProtocol": "tcp"}, {"IPProtocol": "udp"}, {"IPProtocol": "icmp"}],
            [c.cidr],
        ),
    ]
    for hc, text in (
        (c.readiness, "readiness: the drain-aware /health, for the load balancer"),
        (c.liveness, "liveness: nginx's own path, never drain-aware, for MIG autohealing"),
    ):
        out.append(
            Desired(
                "healthChecks",
                hc.name,
                {
                    "name": hc.name,
                    "description": desc(text),
                    "type": "HTTP",
                    "httpHealthCheck": {"port": c.http_port, "requestPath": hc.path},
                    "checkIntervalSec": hc.interval,
                    "timeoutSec": hc.timeout,
                    "healthyThreshold": hc.healthy,
                    "unhealthyThreshold": hc.unhealthy,
                },
            )
        )
    metadata = [{"key": k, "value": v} for k, v in c.metadata]
    metadata.append({"key": "startup-script", "value": startup_script(c.store_url)})
    properties = {
        "machineType": c.machine_type,
        "tags": {"items": [c.tag]},
        "labels": {"fleet": c.fleet.replace(".", "-").lower()[:63], contract.INSTANCE_MIG_LABEL: c.mig},
        "metadata": {"items": metadata},
        # no accessConfigs: no external IP; egress through Cloud NAT
        "networkInterfaces": [{"network": network, "subnetwork": subnet}],
        "disks": [
            {
                "boot": True,
                "autoDelete": True,
                "type": "PERSISTENT",
                "initializeParams": {
                    "sourceImage": c.image,
                    "diskSizeGb": str(c.disk_size_gb),
                    "diskType": c.disk_type,
                },
            }
        ],
        "serviceAccounts": [{"email": c.service_account, "scopes": list(c.scopes)}],
        "shieldedInstanceConfig": {
            "enableSecureBoot": True,
            "enableVtpm": True,
            "enableIntegrityMonitoring": True,
        },
        "scheduling": {"automaticRestart": True, "onHostMaintenance": "MIGRATE"},
    }
    template = f"{c.template_prefix}-{_hash(properties)}"
    out.append(
        Desired(
            "instanceTemplates",
            template,
            {"name": template, "description": desc(f"VMs of {c.mig}"), "properties": properties},
        )
    )
    out.append(
        Desired(
            "instanceGroupManagers",
            c.mig,
            {
                "name": c.mig,
                "description": desc("the fleet's VMs"),
                "baseInstanceName": c.base_instance_name,
                "instanceTemplate": f"{g}/instanceTemplates/{template}",
                "targetSize": c.size,
                "distributionPolicy": {
                    "zones": [{"zone": f"projects/{c.project}/zones/{z}"} for z in c.zones]
                },
                "autoHealingPolicies": [
                    {"healthCheck": f"{g}/healthChecks/{c.liveness.name}", "initialDelaySec": c.initial_delay}
                ]
                if c.autohealing
                else [],
                "namedPorts": [{"name": NAMED_PORT, "port": c.http_port}],
                # a new template reaches new VMs only; rolling the release is the fleet's job (fab rollout)
                "updatePolicy": {"type": "OPPORTUNISTIC"},
            },
            location=c.region,
            create_only=("targetSize",),
        )
    )
    out.append(
        Desired(
            "backendServices",
            c.backend_service,
            {
                "name": c.backend_service,
                "description": desc(f"the load balancer's backend: {c.mig}"),
                "protocol": "HTTP",
                "portName": NAMED_PORT,
                "loadBalancingScheme": "EXTERNAL_MANAGED",
                "timeoutSec": BACKEND_TIMEOUT,
                "healthChecks": [f"{g}/healthChecks/{c.readiness.name}"],
                "sessionAffinity": c.session_affinity,
                "connectionDraining": {"drainingTimeoutSec": c.draining_timeout},
                "backends": [
                    {
                        "group": f"{r}/instanceGroups/{c.mig}",
                        "balancingMode": "UTILIZATION",
                        "capacityScaler": 1.0,
                    }
                ],
                "logConfig": {"enable": True, "sampleRate": 1.0},
            },
        )
    )
    out.append(
        Desired(
            "urlMaps",
            c.url_map,
            {
                "name": c.url_map,
                "description": desc("every path to the backend"),
                "defaultService": f"{g}/backendServices/{c.backend_service}",
            },
        )
    )
    url_map = f"{g}/urlMaps/{c.url_map}"
    if c.domains:
        cert = f"{c.certificate_prefix}-{_hash(sorted(c.domains))}"
        out.append(
            Desired(
                "sslCertificates",
                cert,
                {
                    "name": cert,
                    "description": desc("Google-managed certificate for " + ", ".join(c.domains)),
                    "type": "MANAGED",
                    "managed": {"domains": list(c.domains)},
                },
            )
        )
        out.append(
            Desired(
                "targetHttpsProxies",
                c.proxy,
                {
                    "name": c.proxy,
                    "description": desc("HTTPS termination"),
                    "urlMap": url_map,
                    "sslCertificates": [f"{g}/sslCertificates/{cert}"],
                },
            )
        )
        target, port = f"{g}/targetHttpsProxies/{c.proxy}", 443
    else:
        out.append(
            Desired(
                "targetHttpProxies",
                c.proxy,
                {"name": c.proxy, "description": desc("HTTP"), "urlMap": url_map},
            )
        )
        target, port = f"{g}/targetHttpProxies/{c.proxy}", 80
    out.append(
        Desired(
            "forwardingRules",
            c.forwarding_rule,
            {
                "name": c.forwarding_rule,
                "description": desc("the fleet's public address"),
                "IPProtocol": "TCP",
                "portRange": f"{port}-{port}",
                "target": target,
                "loadBalancingScheme": "EXTERNAL_MANAGED",
                "networkTier": "PREMIUM",
            },
        )
    )
    return out


def iam_lines(config: InfraConfig) -> list[GcloudLine]:
    """The service accounts and bindings, as gcloud lines infra.plan prints (never runs)."""
    return service_account_lines(
        config.project,
        config.service_account,
        bucket=parse_store(config.store_url).bucket,
        store_prefix=parse_store(config.store_url).prefix,
        secrets=config.secrets,
        functions_account=config.functions_account,
        project_number=config.project_number,
        alerts_topic=config.alerts_topic,
    )


# ---------------------------------------------------------------------------------------------
# Diff (pure)
# ---------------------------------------------------------------------------------------------
def _ref(value: str) -> str:
    """A resource reference compared by path: https://.../compute/v1/projects/... -> projects/..."""
    idx = value.find("projects/")
    return value[idx:] if idx > 0 and "/" in value[:idx] else value


def _same(desired: Any, actual: Any) -> bool:
    if isinstance(desired, bool) or isinstance(actual, bool):
        return desired is actual or (isinstance(actual, str) and str(desired).lower() == actual.lower())
    if isinstance(desired, (int, float)) or isinstance(actual, (int, float)):
        try:
            return float(desired) == float(actual)
        except (TypeError, ValueError):
            return False
    if isinstance(desired, str) and isinstance(actual, str):
        return _ref(desired) == _ref(actual)
    return bool(desired == actual)


def _show(value: Any) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else _ref(value)
    return text if len(text) <= 80 else text[:77] + "..."


def diff_fields(desired: Any, actual: Any, path: str = "") -> list[tuple[str, str]]:
    """(field, 'actual -> desired') for every field we set that differs; fields the server adds are
    ignored, lists are compared element by element (same length), references by path."""
    if isinstance(desired, Mapping):
        if not isinstance(actual, Mapping):
            return [(path or "(whole)", f"{_show(actual)} -> {_show(desired)}")]
        out: list[tuple[str, str]] = []
        for key, value in desired.items():
            out += diff_fields(value, actual.get(key), f"{path}.{key}" if path else key)
        return out
    if isinstance(desired, list):
        if not desired and actual is None:
            return []  # Compute leaves an empty list out of its answer
        if not isinstance(actual, list) or len(actual) != len(desired):
            return [(path, f"{_show(actual)} -> {_show(desired)}")]
        out = []
        for i, (d, a) in enumerate(zip(desired, actual, strict=True)):
            out += diff_fields(d, a, f"{path}[{i}]")
        return out
    if actual is None or not _same(desired, actual):
        return [(path, f"{_show(actual)} -> {_show(desired)}")]
    return []


@dataclass
class InfraChange:
    kind: str
    name: str
    action: str  # create | update | replace | unchanged | adopt | conflict | orphan | delete
    changes: list[str] = field(default_factory=list)
    location: str = ""
    note: str = ""
    done: bool = False
    desired: Desired | None = None
    fingerprint: str = ""

    @property
    def label(self) -> str:
        return KINDS[self.kind].label

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "location": self.location or "global",
            "action": self.action,
            "changes": self.changes,
            "note": self.note,
            "done": self.done,
        }


def plan_one(want: Desired, actual: Mapping[str, Any] | None, mark: str) -> InfraChange:
    """One desired resource against what exists under its name (None: nothing)."""
    ch = InfraChange(want.kind, want.name, "create", location=want.location, desired=want)
    if actual is None:
        if want.adopt:
            ch.action, ch.note = "conflict", "adopted from the inventory, but it does not exist"
        return ch
    if want.adopt:
        diffs = [f"{f}: {d}" for f, d in diff_fields({k: want.body[k] for k in want.check}, actual)]
        ch.action = "conflict" if diffs else "adopt"
        ch.changes = diffs
        ch.note = (
            "exists, not managed by infra" if not diffs else "the adopted resource differs from the inventory"
        )
        return ch
    if mark not in str(actual.get("description") or ""):
        ch.action = "conflict"
        ch.note = "a resource of this name exists and is not this fleet's (no mark in its description)"
        return ch
    body = {k: v for k, v in want.body.items() if k not in want.create_only}
    found = diff_fields(body, actual)
    ch.fingerprint = str(actual.get("fingerprint") or "")
    if not found:
        ch.action = "unchanged"
        return ch
    ch.changes = [f"{f}: {d}" for f, d in found]
    spec = want.spec
    tops = {f.split(".")[0].split("[")[0] for f, _ in found}
    if tops <= set(spec.mutable):
        ch.action = "update"
    elif spec.replaceable:
        ch.action = "replace"
    else:
        ch.action = "conflict"
        ch.note = f"{', '.join(sorted(tops - set(spec.mutable)))} cannot change in place; recreate it by hand"
    return ch


def owned_leftovers(
    kind: str, existing: Iterable[Mapping[str, Any]], wanted: set[str], mark: str, prune: bool
) -> list[InfraChange]:
    """Our resources of one kind that the inventory no longer wants: orphan, or delete with prune."""
    out = []
    for item in existing:
        name = str(item.get("name"))
        if name in wanted or mark not in str(item.get("description") or ""):
            continue
        region = str(item.get("region") or "").rsplit("/", 1)[-1]
        if not KINDS[kind].prunable:
            out.append(
                InfraChange(kind, name, "orphan", location=region, note="never deleted by infra (its VMs)")
            )
        else:
            out.append(InfraChange(kind, name, "delete" if prune else "orphan", location=region))
    return out


@dataclass
class InfraReport:
    fleet: str
    project: str
    changes: list[InfraChange]
    iam: list[GcloudLine] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for ch in self.changes:
            out[ch.action] = out.get(ch.action, 0) + 1
        return out

    @property
    def changed(self) -> bool:
        return any(ch.action in ("create", "update", "replace", "delete") for ch in self.changes)

    @property
    def conflicts(self) -> list[InfraChange]:
        return [ch for ch in self.changes if ch.action == "conflict"]

    def as_dict(self) -> dict[str, Any]:
        return {
            "fleet": self.fleet,
            "project": self.project,
            "changes": [ch.as_dict() for ch in self.changes],
            "counts": self.counts(),
            "iam": [{"why": line.why, "command": line.render()} for line in self.iam],
        }


# ---------------------------------------------------------------------------------------------
# The API side
# ---------------------------------------------------------------------------------------------
def _plain(message: Any) -> dict[str, Any]:
    return dict(type(message).to_dict(message, preserving_proto_field_name=False))


class InfraClients:
    """get / list / insert / patch / delete of the kinds infra owns, through fleet.gcp.compute.Compute
    (its clients, endpoint, credentials, timeouts and operation waits)."""

    def __init__(self, config: InfraConfig, compute: Compute | None = None) -> None:
        self.config = config
        self.compute = compute or Compute(config.endpoint)

    def _where(self, spec: KindSpec, location: str = "") -> dict[str, str]:
        out = {"project": self.config.project}
        if spec.regional:
            out["region"] = location or self.config.region
        return out

    def _type(self, spec: KindSpec, body: Mapping[str, Any]) -> Any:
        cls = getattr(self.compute.types(), spec.type_name)
        return cls.from_json(json.dumps(body), ignore_unknown_fields=False)

    def _wait(self, op: Any, spec: KindSpec, location: str) -> None:
        if spec.regional:
            self.compute.wait(op, project=self.config.project, region=location or self.config.region)
        else:
            self.compute.wait(op, project=self.config.project)

    def get(self, spec: KindSpec, name: str, location: str = "") -> dict[str, Any] | None:
        from google.api_core import exceptions as gexc

        client = self.compute.client(spec.client)

        def fetch() -> Any:
            try:
                return client.get(
                    **self._where(spec, location), **{spec.arg: name}, timeout=self.compute.call_timeout
                )
            except gexc.NotFound:
                return None

        found = self.compute._call(fetch, f"{spec.label} {name}")
        return None if found is None else _plain(found)

    def list_owned(self, spec: KindSpec) -> list[dict[str, Any]]:
        """This fleet's resources of a kind (the filter asks the server; the mark is checked again here)."""
        if spec.kind == "instanceGroupManagers":
            return []  # never pruned; a renamed MIG shows as the new one's create
        req_type = getattr(self.compute.types(), f"List{spec.client.removesuffix('Client')}Request")
        mark = self.config.mark
        req = req_type(**self._where(spec), filter=f'description eq ".*{mark}.*"', max_results=100)
        client = self.compute.client(spec.client)
        items = self.compute._call(
            lambda: [_plain(i) for i in client.list(request=req, timeout=self.compute.call_timeout)],
            f"list {spec.kind}",
        )
        return [i for i in items if mark in str(i.get("description") or "")]

    def insert(self, want: Desired) -> None:
        spec = want.spec
        client = self.compute.client(spec.client)
        kwargs = {**self._where(spec, want.location), f"{spec.arg}_resource": self._type(spec, want.body)}
        op = self.compute._call(
            lambda: client.insert_unary(**kwargs, timeout=self.compute.call_timeout),
            f"{spec.label} {want.name}",
        )
        self._wait(op, spec, want.location)

    def patch(self, want: Desired, fingerprint: str) -> None:
        spec = want.spec
        if (
            spec.kind == "forwardingRules"
        ):  # its patch sets the network tier only; the target has its own call
            self._set_target(want)
            return
        body = {k: v for k, v in want.body.items() if k in spec.mutable or k == "name"}
        empty = sorted(k for k, v in body.items() if v == [])
        if empty:  # proto JSON leaves empty lists out: the patch would silently keep the old ones
            raise ComputeError(
                f"cannot clear {', '.join(empty)} of {spec.label} {want.name} with a patch "
                "(google-cloud-compute does not send empty lists)",
                where=want.name,
                hint=f"clear it by hand, e.g. `gcloud compute instance-groups managed update {want.name} "
                f"--region {want.location or self.config.region} --clear-autohealing`",
            )
        if fingerprint:
            body["fingerprint"] = fingerprint
        client = self.compute.client(spec.client)
        kwargs = {
            **self._where(spec, want.location),
            spec.arg: want.name,
            f"{spec.arg}_resource": self._type(spec, body),
        }
        op = self.compute._call(
            lambda: client.patch_unary(**kwargs, timeout=self.compute.call_timeout),
            f"{spec.label} {want.name}",
        )
        self._wait(op, spec, want.location)

    def _set_target(self, want: Desired) -> None:
        spec = want.spec
        ref = self.compute.types().TargetReference(target=want.body["target"])
        client = self.compute.client(spec.client)
        op = self.compute._call(
            lambda: client.set_target_unary(
                project=self.config.project,
                forwarding_rule=want.name,
                target_reference_resource=ref,
                timeout=self.compute.call_timeout,
            ),
            f"{spec.label} {want.name}",
        )
        self._wait(op, spec, "")

    def delete(self, spec: KindSpec, name: str, location: str = "") -> None:
        client = self.compute.client(spec.client)
        kwargs = {**self._where(spec, location), spec.arg: name}
        op = self.compute._call(
            lambda: client.delete_unary(**kwargs, timeout=self.compute.call_timeout), f"{spec.label} {name}"
        )
        self._wait(op, spec, location)


def _metadata(template: Mapping[str, Any]) -> dict[str, str]:
    found = (template.get("properties") or {}).get("metadata") or {}
    return {str(i.get("key")): str(i.get("value", "")) for i in found.get("items") or []}


def keep_release_template(
    ch: InfraChange, actual: Mapping[str, Any], desired: Sequence[Desired], clients: InfraClients
) -> InfraChange:
    """The MIG on a release template that `fab rollout --strategy replace` made from the very template
    infra wants is not drift: it is that template plus the release its new VMs boot. Moving it back
    would undo a replace rollout's batch while it runs (its VMs would be recreated from the base), and
    would make every rollout look like drift to the next `infra.plan`. A release template made from
    another base (the inventory changed the template) is still moved to the new one."""
    want = ch.desired
    field_name = "instanceTemplate"
    if want is None or not any(c.startswith(f"{field_name}:") for c in ch.changes):
        return ch
    base = next((d for d in desired if d.kind == "instanceTemplates"), None)
    current = str(actual.get(field_name) or "").rsplit("/", 1)[-1]
    if base is None or not current:
        return ch
    found = clients.get(KINDS["instanceTemplates"], current)
    meta = _metadata(found or {})
    if found is None or meta.get(BASE_KEY) != base.name or not meta.get(RELEASE_KEY):
        return ch
    expected = release_properties(base.body, meta[RELEASE_KEY], meta.get(VERSION_KEY, ""))
    if diff_fields(expected, found.get("properties") or {}):
        return ch  # edited since, or made from another content under the same name: not ours to keep
    rest = [c for c in ch.changes if not c.startswith(f"{field_name}:")]
    kept = replace(want, body={**want.body, field_name: str(actual.get(field_name))})
    return replace(
        ch,
        action="update" if rest else "unchanged",
        changes=rest,
        desired=kept,
        note=f"keeps release template {current} (release {meta[RELEASE_KEY]}, made from {base.name} "
        "by `fab rollout --strategy replace`)",
    )


def plan(config: InfraConfig, clients: InfraClients, prune: bool = False) -> InfraReport:
    """Read what exists and compare; changes nothing."""
    desired = desired_state(config)
    changes: list[InfraChange] = []
    for kind in ORDER:
        spec = KINDS[kind]
        wanted = [d for d in desired if d.kind == kind]
        for want in wanted:
            actual = clients.get(spec, want.name, want.location)
            ch = plan_one(want, actual, config.mark)
            if kind == "instanceGroupManagers" and ch.action == "update" and actual is not None:
                ch = keep_release_template(ch, actual, desired, clients)
            changes.append(ch)
        if spec.kind in ("networks", "subnetworks") and not any(not d.adopt for d in wanted):
            continue  # adopted: nothing of ours to list
        changes += owned_leftovers(
            kind, clients.list_owned(spec), {d.name for d in wanted}, config.mark, prune
        )
    # TODO(datalayer): print the data layer's findings here (fleet/gcp/datalayer.py: Cloud SQL, Memorystore,
    # the bucket, private services access) next to the Compute plan; wired by the coordinator.
    return InfraReport(config.fleet, config.project, changes, iam_lines(config))


def apply(
    config: InfraConfig,
    clients: InfraClients,
    prune: bool = False,
    progress: Callable[[InfraChange], None] | None = None,
) -> InfraReport:
    """Plan, refuse on conflicts, then create/update/replace in dependency order and delete (prune)
    in reverse order. Idempotent: a second run finds everything unchanged."""
    report = plan(config, clients, prune)
    if report.conflicts:
        lines = [f"{c.label} {c.name}: {c.note or '; '.join(c.changes)}" for c in report.conflicts]
        raise InfraError(
            f"{len(lines)} conflict(s), nothing changed:\n  " + "\n  ".join(lines),
            where=f"project {config.project}",
            hint="see `fab infra.plan`; rename in infra.names, adopt, or fix by hand (docs/infra.md)",
        )
    for ch in report.changes:
        if ch.action not in ("create", "update", "replace") or ch.desired is None:
            continue
        try:
            if ch.action == "create":
                clients.insert(ch.desired)
            elif ch.action == "update":
                clients.patch(ch.desired, ch.fingerprint)
            else:
                clients.delete(ch.desired.spec, ch.name, ch.location)
                clients.insert(ch.desired)
        except ComputeError as exc:
            raise InfraError(
                f"{ch.action} {ch.label} {ch.name} failed: {exc.what}",
                where=f"project {config.project}",
                hint="what was done before stays; fix the cause and run infra.apply again",
            ) from None
        ch.done = True
        if progress:
            progress(ch)
    for ch in reversed(report.changes):
        if ch.action != "delete":
            continue
        try:
            clients.delete(KINDS[ch.kind], ch.name, ch.location)
        except ComputeError as exc:
            raise InfraError(
                f"delete {ch.label} {ch.name} failed: {exc.what}", where=f"project {config.project}"
            ) from None
        ch.done = True
        if progress:
            progress(ch)
    return report


def reconcile(
    config: InfraConfig,
    clients: InfraClients,
    *,
    execute: bool,
    prune: bool = False,
    progress: Callable[[InfraChange], None] | None = None,
) -> InfraReport:
    return apply(config, clients, prune, progress) if execute else plan(config, clients, prune)
