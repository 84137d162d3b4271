"""Cloud Monitoring wiring for the fleet, derived from the inventory and applied idempotently.

From `data.monitoring` this builds the objects the self-healing loop needs: the alerts and events
Pub/Sub topics, one notification channel of type `pubsub` on the alerts topic, uptime checks (the
load balancer's URL; each instance's /health where `uptime.per_instance` is on), and alert
policies whose user labels tell the functions what to do (see `functions/fleet_contract.py`):
instance health -> autoheal, CPU / latency / queue depth -> scale out and in, all of them -> the
channel, so notify sees everything.

Monitoring names objects itself, so ours are found again by two user labels
(`fleet-managed-by: <fleet>`, `fleet-object: <key>`); topics by their name. A plan compares each
desired object with what exists, field by field, ignoring what the server fills in, and says
create / update / replace / unchanged (and orphan/delete for our objects no longer wanted).
`apply` executes the same plan in dependency order (topics, channel, checks, policies; deletions
last), so running it again changes nothing. Everything above `MonitoringClients` is pure.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

from fleet import settings
from fleet.errors import FleetError, InventoryError
from fleet.gcp.compute import mig_ref
from fleet.inventory.schema import MonitoringFunctions, MonitoringScale
from functions import fleet_contract as contract

if TYPE_CHECKING:
    from fleet.inventory import Inventory

MANAGED_LABEL = "fleet-managed-by"
OBJECT_LABEL = "fleet-object"
KINDS = ("topic", "channel", "uptime_check", "alert_policy")
ENDPOINT_ENV = settings.MONITORING_ENDPOINT_ENV
PUBSUB_ENDPOINT_ENV = settings.PUBSUB_ENDPOINT_ENV
CHECK_METRIC = "monitoring.googleapis.com/uptime_check/check_passed"
CPU_METRIC = "compute.googleapis.com/instance/cpu/utilization"
LATENCY_METRIC = "loadbalancing.googleapis.com/https/total_latencies"
MAX_UPTIME_CHECKS = 100  # Monitoring's quota of uptime checks per project
CHECKS_PER_CONDITION = 20

# fields each kind's update writes (a fixed list, so a field we stop setting is cleared too)
UPDATE_FIELDS = {
    "topic": ("labels",),
    "channel": ("display_name", "description", "labels", "user_labels", "enabled"),
    "uptime_check": ("display_name", "http_check", "timeout", "selected_regions"),
    "alert_policy": (
        "display_name",
        "documentation",
        "user_labels",
        "conditions",
        "combiner",
        "enabled",
        "notification_channels",
        "alert_strategy",
        "severity",
    ),
}
# uptime-check fields the API cannot update: a change means delete + create
IMMUTABLE = {
    "uptime_check": ("monitored_resource", "resource_group", "period", "checker_type", "user_labels")
}
# maps compared whole (an extra key is a difference); other maps and messages only need ours
EXACT_MAPS = {
    "topic": frozenset(),
    "channel": frozenset({"labels", "user_labels"}),
    "uptime_check": frozenset({"monitored_resource.labels"}),
    "alert_policy": frozenset({"user_labels"}),
}


class MonitoringError(FleetError):
    """A Monitoring or Pub/Sub call failed."""


# ---------------------------------------------------------------------------------------------
# Configuration: data.monitoring, validated and resolved once
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class InstanceCheck:
    """An uptime check of one instance's /health (uptime.per_instance on for that host)."""

    host: str
    project: str
    zone: str
    instance_id: str
    port: int
    path: str


@dataclass(frozen=True)
class Threshold:
    high: float | None = None
    low: float | None = None
    duration: int = 300
    percentile: int = 99
    url_map: str = ""
    metric: str = ""
    resource_type: str = ""


@dataclass(frozen=True)
class MonitoringConfig:
    fleet: str
    project: str
    alerts_topic: str  # projects/P/topics/T
    events_topic: str
    endpoint: str | None = None
    pubsub_endpoint: str | None = None
    project_number: str | None = None
    auto_close: int = 1800
    lb_url: str | None = None
    period: int = 60
    timeout: int = 10
    failing_locations: int = 2
    failure_duration: int = 60
    escalate_after: int = 300
    regions: tuple[str, ...] = ()
    instance_checks: tuple[InstanceCheck, ...] = ()
    migs: tuple[contract.MigRef, ...] = ()
    scale_migs: tuple[str, ...] = ()
    scale_step: int = 1
    scale_min: int = 1
    scale_max: int = 10
    cpu: Threshold | None = None
    latency: Threshold | None = None
    queue_depth: Threshold | None = None
    functions: MonitoringFunctions = field(default_factory=MonitoringFunctions)


def _loopback_endpoint(value: str | None, field_name: str, where: str) -> str | None:
    """Local stand-ins only: a loopback host:port reached without TLS or credentials."""
    if not value:
        return None
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    ok = bool(sep) and port.isdigit() and 0 < int(port) < 65536
    if ok and host != "localhost":
        try:
            ok = ipaddress.ip_address(host).is_loopback
        except ValueError:
            ok = False
    if not ok:
        raise InventoryError(
            f"field {field_name}: {value!r} is not a loopback host:port",
            where=where,
            hint="only local stand-ins are reached this way (e.g. 127.0.0.1:8095); unset it for the real API",
        )
    return value


def _fleet_wide(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a host's `monitoring` that must be the same on every host."""
    out = {k: v for k, v in raw.items() if k != "uptime"}
    out["uptime"] = {k: v for k, v in (raw.get("uptime") or {}).items() if k != "per_instance"}
    return out


def config_from_inventory(inv: Inventory, env: Mapping[str, str] | None = None) -> MonitoringConfig:
    """Resolve `data.monitoring` (fleet-wide; uptime.per_instance may differ per host)."""
    conf = settings.load(env)
    where = f"inventory {inv.name}"
    hosts = list(inv.hosts.values())
    with_mon = [h for h in hosts if h.get("monitoring")]
    if not with_mon:
        raise InventoryError(
            "no data.monitoring section",
            where=where,
            hint="add `monitoring:` (project, topics, uptime, scale, functions) under data in "
            "defaults.yaml; see docs/monitoring.md",
        )
    first = with_mon[0]
    raw_mon: dict[str, Any] = first.get("monitoring")
    for h in hosts:
        if h.get("monitoring") is None or _fleet_wide(h.get("monitoring")) != _fleet_wide(raw_mon):
            other = _fleet_wide(h.get("monitoring") or {})
            keys = sorted(
                k
                for k in set(other) | set(_fleet_wide(raw_mon))
                if other.get(k) != _fleet_wide(raw_mon).get(k)
            )
            raise InventoryError(
                f"data.monitoring differs between hosts {first.name!r} and {h.name!r} "
                f"(in {', '.join(keys) or 'presence'})",
                where=where,
                hint="monitoring is fleet-wide: set it in defaults.yaml "
                "(only uptime.per_instance may differ)",
            )
        if h.get("gce.migs") != first.get("gce.migs"):
            raise InventoryError(
                f"gce.migs differs between hosts {first.name!r} and {h.name!r}",
                where=where,
                hint="the managed instance groups are fleet-wide: set gce.migs in defaults.yaml",
            )
    mon = first.settings.monitoring
    assert mon is not None  # first has a non-empty monitoring section
    project = mon.project or first.settings.gce.project
    if not project:
        raise InventoryError(
            "field monitoring.project is missing",
            where=where,
            hint="the project whose Monitoring holds the policies",
        )
    fleet = mon.fleet or inv.name.lower()
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,62}", fleet):
        raise InventoryError(
            f"fleet name {fleet!r} (from the inventory name) is not a label value",
            where=where,
            hint="set monitoring.fleet to [a-z0-9_-], at most 63 characters",
        )

    migs = []
    for i, raw in enumerate(first.settings.gce.migs):
        location = raw.get("zone") or raw.get("region")
        mig_project = raw.get("project") or project
        if not raw.get("name") or not location or set(raw) - {"project", "zone", "region", "name"}:
            raise InventoryError(
                f"field gce.migs[{i}]: expected {{project, zone or region, name}}, got {raw}", where=where
            )
        try:
            migs.append(mig_ref({**raw, "project": mig_project}, where=where))
        except FleetError as exc:
            raise InventoryError(f"field gce.migs[{i}]: {exc.what}", where=where, hint=exc.hint) from None

    uptime = mon.uptime
    if uptime.lb_url:
        try:
            port = urlsplit(uptime.lb_url).port
        except ValueError:
            port = -1
        if port is not None and not 0 < port < 65536:
            raise InventoryError(
                f"field monitoring.uptime.lb_url: bad port in {uptime.lb_url!r}", where=where
            )
    checks = []
    for h in hosts:
        if h.settings.monitoring is None or not h.settings.monitoring.uptime.per_instance:
            continue
        missing = [f"gce.{f}" for f in ("zone", "instance_id") if not getattr(h.settings.gce, f)]
        if missing:
            raise InventoryError(
                f"uptime.per_instance is on but {', '.join(missing)} missing",
                where=f"{where}: host {h.name!r}",
                hint="a per-instance uptime check names the instance by id and zone",
            )
        checks.append(
            InstanceCheck(
                host=h.name,
                project=h.settings.gce.project or project,
                zone=cast(str, h.settings.gce.zone),  # both checked just above
                instance_id=cast(str, h.settings.gce.instance_id),
                port=uptime.port or h.settings.app.http_port,
                path=uptime.path,
            )
        )

    if len(checks) + bool(uptime.lb_url) > MAX_UPTIME_CHECKS:
        raise InventoryError(
            f"{len(checks)} per-instance uptime checks: Monitoring allows {MAX_UPTIME_CHECKS} per project",
            where=where,
            hint="turn uptime.per_instance on for fewer hosts (e.g. one group), or use the MIG's own "
            "autohealing health check for the rest",
        )

    # `scale:` with nothing under it is as good as no scale section (so are cpu/latency/queue_depth)
    scale = mon.scale if mon.scale is not None and mon.scale.model_fields_set else None
    mig_names = [g.name for g in migs]
    scale_migs = (mig_names if scale.migs is None else scale.migs) if scale else []
    unknown = [n for n in scale_migs if n not in mig_names]
    if unknown:
        raise InventoryError(
            f"field monitoring.scale.migs: {', '.join(unknown)} not in gce.migs",
            where=where,
            hint=f"known MIGs: {', '.join(mig_names) or 'none (set gce.migs)'}",
        )
    if scale and not scale_migs:
        raise InventoryError(
            "monitoring.scale is set but there is no MIG to scale",
            where=where,
            hint="list the managed instance groups in gce.migs",
        )
    scale_or_default = scale or MonitoringScale()
    smin, smax = scale_or_default.min, scale_or_default.max
    if smax < smin:
        raise InventoryError(f"field monitoring.scale.max ({smax}) is below scale.min ({smin})", where=where)

    def threshold(name: str) -> Threshold | None:
        section = getattr(scale, name) if scale else None
        if section is None or not section.model_fields_set:
            return None
        merged = section.model_dump(exclude_none=True)
        if merged.get("high") is None and merged.get("low") is None:
            raise InventoryError(f"field monitoring.scale.{name}: set high and/or low", where=where)
        if (
            merged.get("high") is not None
            and merged.get("low") is not None
            and merged["low"] >= merged["high"]
        ):
            raise InventoryError(f"field monitoring.scale.{name}: low must be below high", where=where)
        return Threshold(**merged)

    cpu = threshold("cpu")
    latency = threshold("latency")
    if latency is not None and not latency.url_map:
        raise InventoryError(
            "field monitoring.scale.latency.url_map is missing",
            where=where,
            hint="the load balancer's URL map whose latency is watched",
        )
    queue = threshold("queue_depth")
    if queue is not None and not queue.metric:
        raise InventoryError(
            "field monitoring.scale.queue_depth.metric is missing",
            where=where,
            hint="the metric type carrying the queue length, "
            "e.g. custom.googleapis.com/dify/celery_queue_length",
        )

    def topic(key: str) -> str:
        name: str = getattr(mon, key)
        if name.startswith("goog"):
            raise InventoryError(
                f"field monitoring.{key}: topic names may not start with 'goog'", where=where
            )
        return f"projects/{project}/topics/{name}"

    return MonitoringConfig(
        fleet=fleet,
        project=project,
        alerts_topic=topic("alerts_topic"),
        events_topic=topic("events_topic"),
        endpoint=_loopback_endpoint(conf.monitoring_endpoint_for(mon.endpoint), "monitoring.endpoint", where),
        pubsub_endpoint=_loopback_endpoint(
            conf.pubsub_endpoint_for(mon.pubsub_endpoint), "monitoring.pubsub_endpoint", where
        ),
        project_number=mon.project_number,
        auto_close=mon.auto_close,
        lb_url=uptime.lb_url,
        period=uptime.period,
        timeout=uptime.timeout,
        failing_locations=uptime.failing_locations,
        failure_duration=uptime.duration,
        escalate_after=uptime.escalate_after,
        regions=tuple(uptime.regions or ()),
        instance_checks=tuple(checks),
        migs=tuple(migs),
        scale_migs=tuple(scale_migs),
        scale_step=scale_or_default.step,
        scale_min=smin,
        scale_max=smax,
        cpu=cpu,
        latency=latency,
        queue_depth=queue,
        functions=mon.functions or MonitoringFunctions(),
    )


# ---------------------------------------------------------------------------------------------
# Desired state (pure)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Desired:
    kind: str
    key: str  # stable identity: the fleet-object label (topics: the topic name)
    display_name: str
    message: Any  # proto-plus message (no server-assigned name, except topics)
    role: str = ""  # what the object is for, in words


def object_key(text: str) -> str:
    """A label-safe key: lowercase [a-z0-9_-], at most 63 characters (long ones get a hash tail)."""
    key = re.sub(r"[^a-z0-9_-]+", "-", text.lower()).strip("-")
    if len(key) > 63:
        key = f"{key[:50]}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"
    return contract.validate_label_value(key)


def _labels(config: MonitoringConfig, key: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    labels = {MANAGED_LABEL: config.fleet, OBJECT_LABEL: key, **(extra or {})}
    for k, v in labels.items():
        contract.validate_label_key(k)
        contract.validate_label_value(v)
    return labels


def _seconds(n: int) -> dict[str, int]:
    return {"seconds": int(n)}


def lb_check_key() -> str:
    return "check-lb"


def instance_check_key(check: InstanceCheck) -> str:
    return object_key(f"check-instance-{check.host}")


def channel_key() -> str:
    return "channel-alerts"


def _quoted(values: Iterable[str]) -> str:
    return ", ".join(f'"{v}"' for v in values)


def desired_state(config: MonitoringConfig, refs: Mapping[str, str]) -> list[Desired]:
    """Every object the fleet needs. `refs` maps keys of objects Monitoring names (channel, checks)
    to their resource names; a missing one becomes a visible placeholder (it is created first)."""
    from google.cloud import monitoring_v3 as m
    from google.pubsub_v1 import types as pubsub

    def ref(key: str) -> str:
        return refs.get(key) or f"<new {key}>"

    def check_id(key: str) -> str:
        return ref(key).rsplit("/", 1)[-1]

    out: list[Desired] = []
    for path, role in (
        (config.alerts_topic, "alerts from Monitoring"),
        (config.events_topic, "fleet events"),
    ):
        out.append(
            Desired(
                "topic",
                path.rsplit("/", 1)[-1],
                path,
                pubsub.Topic(name=path, labels={MANAGED_LABEL: config.fleet}),
                role,
            )
        )

    out.append(
        Desired(
            "channel",
            channel_key(),
            f"compose-fleet {config.fleet}: alerts",
            m.NotificationChannel(
                type_="pubsub",
                display_name=f"compose-fleet {config.fleet}: alerts",
                description=f"Alert notifications to {config.alerts_topic} "
                "(autoheal, scale and notify subscribe to it).",
                labels={"topic": config.alerts_topic},
                user_labels=_labels(config, channel_key()),
                enabled=True,
            ),
            f"every policy notifies {config.alerts_topic}",
        )
    )

    regions = [getattr(m.UptimeCheckRegion, r) for r in config.regions]
    if config.lb_url:
        url = urlsplit(config.lb_url)
        ssl = url.scheme == "https"
        out.append(
            Desired(
                "uptime_check",
                lb_check_key(),
                f"compose-fleet {config.fleet}: load balancer {url.path or '/'}",
                m.UptimeCheckConfig(
                    display_name=f"compose-fleet {config.fleet}: load balancer {url.path or '/'}",
                    monitored_resource={
                        "type": "uptime_url",
                        "labels": {"host": url.hostname or "", "project_id": config.project},
                    },
                    http_check=m.UptimeCheckConfig.HttpCheck(
                        path=url.path or "/",
                        port=url.port or (443 if ssl else 80),
                        use_ssl=ssl,
                        validate_ssl=ssl,
                    ),
                    period=_seconds(config.period),
                    timeout=_seconds(config.timeout),
                    selected_regions=regions,
                    user_labels=_labels(config, lb_check_key()),
                ),
                f"GET {config.lb_url}",
            )
        )
    for check in config.instance_checks:
        key = instance_check_key(check)
        out.append(
            Desired(
                "uptime_check",
                key,
                f"compose-fleet {config.fleet}: {check.host} {check.path}",
                m.UptimeCheckConfig(
                    display_name=f"compose-fleet {config.fleet}: {check.host} {check.path}",
                    monitored_resource={
                        "type": "gce_instance",
                        "labels": {
                            "project_id": check.project,
                            "zone": check.zone,
                            "instance_id": check.instance_id,
                        },
                    },
                    http_check=m.UptimeCheckConfig.HttpCheck(path=check.path, port=check.port),
                    period=_seconds(config.period),
                    timeout=_seconds(config.timeout),
                    selected_regions=regions,
                    user_labels=_labels(config, key),
                ),
                f"GET :{check.port}{check.path} on instance {check.instance_id} ({check.zone})",
            )
        )

    channels = [ref(channel_key())]
    strategy = m.AlertPolicy.AlertStrategy(auto_close=_seconds(config.auto_close))

    def policy(
        key: str,
        title: str,
        conditions: list[Any],
        labels: Mapping[str, str],
        severity: str,
        doc: str,
        combiner: str = "OR",
    ) -> Desired:
        display = f"compose-fleet {config.fleet}: {title}"
        return Desired(
            "alert_policy",
            key,
            display,
            m.AlertPolicy(
                display_name=display,
                documentation=m.AlertPolicy.Documentation(
                    content=f"{doc}\n\nManaged by compose-fleet (fleet `{config.fleet}`) from the "
                    "inventory's `data.monitoring`: change it there and run `fab monitoring.apply`.",
                    mime_type="text/markdown",
                ),
                user_labels=_labels(config, key, labels),
                conditions=conditions,
                combiner=getattr(m.AlertPolicy.ConditionCombinerType, combiner),
                enabled=True,
                notification_channels=channels,
                alert_strategy=strategy,
                severity=getattr(m.AlertPolicy.Severity, severity),
            ),
            ", ".join(f"{k}={v}" for k, v in labels.items()) or "notify only",
        )

    def uptime_condition(
        name: str, check_ids: Sequence[str], resource: str, group_by: list[str], duration: int | None = None
    ) -> Any:
        return m.AlertPolicy.Condition(
            display_name=name,
            condition_threshold=m.AlertPolicy.Condition.MetricThreshold(
                filter=(
                    f'metric.type="{CHECK_METRIC}" AND resource.type="{resource}" '
                    f"AND metric.label.check_id=one_of({_quoted(check_ids)})"
                ),
                aggregations=[
                    m.Aggregation(
                        alignment_period=_seconds(max(config.period, 60)),
                        per_series_aligner=m.Aggregation.Aligner.ALIGN_NEXT_OLDER,
                        cross_series_reducer=m.Aggregation.Reducer.REDUCE_COUNT_FALSE,
                        group_by_fields=group_by,
                    )
                ],
                comparison=m.ComparisonType.COMPARISON_GT,
                threshold_value=config.failing_locations - 1,
                duration=_seconds(config.failure_duration if duration is None else duration),
                trigger=m.AlertPolicy.Condition.Trigger(count=1),
            ),
        )

    if config.lb_url:
        out.append(
            policy(
                "policy-lb-health",
                "load balancer health",
                [
                    uptime_condition(
                        f"{config.lb_url} failing",
                        [check_id(lb_check_key())],
                        "uptime_url",
                        ["resource.label.host"],
                    )
                ],
                {},
                "CRITICAL",
                f"The load balancer's `{config.lb_url}` fails from {config.failing_locations} or more "
                "checker locations: the whole fleet is unreachable. Notification only.",
            )
        )
    if config.instance_checks:
        ids = [check_id(instance_check_key(c)) for c in config.instance_checks]
        # short filters: at most CHECKS_PER_CONDITION ids per condition (a policy has <= 6 conditions)
        chunks = [ids[i : i + CHECKS_PER_CONDITION] for i in range(0, len(ids), CHECKS_PER_CONDITION)]
        out.append(
            policy(
                "policy-instance-health",
                "instance health",
                [
                    uptime_condition(
                        "instance /health failing" + (f" ({i + 1}/{len(chunks)})" if len(chunks) > 1 else ""),
                        chunk,
                        "gce_instance",
                        ["resource.label.project_id", "resource.label.zone", "resource.label.instance_id"],
                    )
                    for i, chunk in enumerate(chunks)
                ],
                {contract.POLICY_ACTION_LABEL: contract.POLICY_ACTION_HEAL},
                "ERROR",
                "An instance's /health fails its uptime check. The `autoheal` function resets it, then "
                "recreates it if it fails again (grouped by instance: the incident names it).",
            )
        )
        # A reset that did not help leaves the first incident open, and autoheal escalates only on a
        # NEW incident for the same instance: this policy opens one when the failure outlasts
        # `escalate_after` (a separate policy: a policy holds at most 6 conditions).
        group = ["resource.label.project_id", "resource.label.zone", "resource.label.instance_id"]
        out.append(
            policy(
                "policy-instance-health-escalation",
                "instance health: still failing",
                [
                    uptime_condition(
                        f"instance /health still failing after {config.escalate_after}s"
                        + (f" ({i + 1}/{len(chunks)})" if len(chunks) > 1 else ""),
                        chunk,
                        "gce_instance",
                        group,
                        duration=config.escalate_after,
                    )
                    for i, chunk in enumerate(chunks)
                ],
                {contract.POLICY_ACTION_LABEL: contract.POLICY_ACTION_HEAL},
                "ERROR",
                f"An instance's /health has failed for {config.escalate_after}s, a reset did not fix it: "
                "the `autoheal` function recreates it (a new incident within its escalation window).",
            )
        )

    for mig in config.scale_migs:
        for direction in ("out", "in"):
            conditions = _scale_conditions(config, mig, direction)
            if not conditions:
                continue
            key = object_key(f"policy-scale-{direction}-{mig}")
            labels = {
                contract.POLICY_ACTION_LABEL: contract.POLICY_ACTION_SCALE,
                contract.POLICY_SCALE_DIRECTION_LABEL: direction,
                contract.POLICY_SCALE_STEP_LABEL: str(config.scale_step),
                contract.POLICY_SCALE_MIN_LABEL: str(config.scale_min),
                contract.POLICY_SCALE_MAX_LABEL: str(config.scale_max),
                contract.POLICY_MIG_LABEL: mig,
            }
            out.append(
                policy(
                    key,
                    f"scale {direction} {mig}",
                    conditions,
                    labels,
                    "WARNING",
                    f"The `scale` function {'adds' if direction == 'out' else 'removes'} "
                    f"{config.scale_step} instance(s) {'to' if direction == 'out' else 'from'} `{mig}` "
                    f"(bounds {config.scale_min}..{config.scale_max}) when "
                    + ("any condition holds." if direction == "out" else "every condition holds."),
                    combiner="OR" if direction == "out" else "AND",
                )
            )
    return out


def cpu_condition_name(above: bool, threshold: float) -> str:
    """The CPU condition's display name (the local monitor names its incidents the same way)."""
    return f"CPU {'above' if above else 'below'} {threshold:g}"


def cpu_members_filter(mig: str) -> str:
    """The CPU utilization of the MIG's members, selected by the instance label the template sets
    (`fleet-mig=<mig>`), never by a name prefix: the base instance name may differ from the MIG's
    name, and a label cannot drift from the template. Monitoring exposes an instance's labels as
    `metadata.user_labels`; the key is quoted because it contains a '-'."""
    contract.validate_label_value(mig)
    return (
        f'metric.type="{CPU_METRIC}" AND resource.type="gce_instance" '
        f'AND metadata.user_labels."{contract.INSTANCE_MIG_LABEL}"="{mig}"'
    )


def _scale_conditions(config: MonitoringConfig, mig: str, direction: str) -> list[Any]:
    """Threshold conditions for one MIG: out on any high signal, in when every signal is low."""
    from google.cloud import monitoring_v3 as m

    def condition(
        name: str, filter_: str, aligner: str, reducer: str, value: float, duration: int, above: bool
    ) -> Any:
        return m.AlertPolicy.Condition(
            display_name=name,
            condition_threshold=m.AlertPolicy.Condition.MetricThreshold(
                filter=filter_,
                aggregations=[
                    m.Aggregation(
                        alignment_period=_seconds(60),
                        per_series_aligner=getattr(m.Aggregation.Aligner, aligner),
                        cross_series_reducer=getattr(m.Aggregation.Reducer, reducer),
                    )
                ],
                comparison=m.ComparisonType.COMPARISON_GT if above else m.ComparisonType.COMPARISON_LT,
                threshold_value=value,
                duration=_seconds(duration),
                trigger=m.AlertPolicy.Condition.Trigger(count=1),
            ),
        )

    out = []
    cpu, lat, queue = config.cpu, config.latency, config.queue_depth
    bound = "high" if direction == "out" else "low"
    above = direction == "out"
    cpu_filter = cpu_members_filter(mig)
    if cpu is not None and getattr(cpu, bound) is not None:
        out.append(
            condition(
                cpu_condition_name(above, getattr(cpu, bound)),
                cpu_filter,
                "ALIGN_MEAN",
                "REDUCE_MEAN",
                getattr(cpu, bound),
                cpu.duration,
                above,
            )
        )
    if lat is not None and direction == "out" and lat.high is not None:
        out.append(
            condition(
                f"p{lat.percentile} latency above {lat.high:g} ms",
                f'metric.type="{LATENCY_METRIC}" AND resource.type="https_lb_rule" '
                f'AND resource.label.url_map_name="{lat.url_map}"',
                f"ALIGN_PERCENTILE_{lat.percentile:02d}",
                "REDUCE_MAX",
                lat.high,
                lat.duration,
                True,
            )
        )
    if queue is not None and getattr(queue, bound) is not None:
        out.append(
            condition(
                f"queue depth {'above' if above else 'below'} {getattr(queue, bound):g}",
                f'metric.type="{queue.metric}" AND resource.type="{queue.resource_type}"',
                "ALIGN_MEAN",
                "REDUCE_MAX",
                getattr(queue, bound),
                queue.duration,
                above,
            )
        )
    return out


# ---------------------------------------------------------------------------------------------
# Diff (pure)
# ---------------------------------------------------------------------------------------------
def to_plain(message: Any) -> dict[str, Any]:
    """A proto-plus or protobuf message as a dict with proto field names; defaults omitted."""
    from google.protobuf import json_format

    pb = type(message).pb(message) if hasattr(type(message), "pb") else message
    return json_format.MessageToDict(pb, preserving_proto_field_name=True)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _label(path: str) -> str:
    return re.sub(r"\btype_\b", "type", path)


def diff_fields(desired: Any, actual: Any, exact: frozenset[str], path: str = "") -> list[tuple[str, str]]:
    """(path, what changed) wherever `actual` differs from `desired`. Every desired field must
    match; fields only the server sets are ignored, except in the maps named in `exact`, which
    must match whole."""
    if isinstance(desired, dict) and isinstance(actual, dict):
        out: list[tuple[str, str]] = []
        if path in exact:
            for k in sorted(set(actual) - set(desired)):
                out.append((f"{path}.{k}", f"{_label(path)}.{k}: {_show(actual[k])} -> (removed)"))
        for key in desired:
            sub = f"{path}.{key}" if path else key
            if key not in actual:
                out.append((sub, f"{_label(sub)}: (none) -> {_show(desired[key])}"))
            else:
                out.extend(diff_fields(desired[key], actual[key], exact, sub))
        return out
    if isinstance(desired, list) and isinstance(actual, list):
        if len(desired) != len(actual):
            return [(path, f"{_label(path)}: {len(actual)} item(s) -> {len(desired)}")]
        return [
            d
            for i, (a, b) in enumerate(zip(desired, actual, strict=True))
            for d in diff_fields(a, b, exact, f"{path}[{i}]")
        ]
    if desired != actual:
        return [(path, f"{_label(path)}: {_show(actual)} -> {_show(desired)}")]
    return []


def _top(path: str) -> str:
    return re.split(r"[.\[]", path, maxsplit=1)[0]


@dataclass
class Change:
    """One object's fate in a plan. `name` is the existing resource's name (or the new one after apply)."""

    kind: str
    key: str
    display_name: str
    action: str  # create | update | replace | unchanged | orphan | delete
    name: str = ""
    changes: list[str] = field(default_factory=list)
    role: str = ""
    desired: Desired | None = None
    done: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "key": self.key,
            "display_name": self.display_name,
            "action": self.action,
            "name": self.name,
            "changes": self.changes,
            "role": self.role,
            "done": self.done,
        }


def owned_key(kind: str, message: Any, fleet: str) -> str | None:
    """The object key if `message` is one of this fleet's objects, else None."""
    if kind == "topic":
        return str(message.name).rsplit("/", 1)[-1]
    labels = message.user_labels
    if labels.get(MANAGED_LABEL) != fleet:
        return None
    return labels.get(OBJECT_LABEL) or None


def plan_kind(
    kind: str, desired: Sequence[Desired], actual: Sequence[Any], fleet: str, prune: bool
) -> list[Change]:
    """Compare one kind's desired objects with the existing ones (already listed)."""
    by_key: dict[str, list[Any]] = {}
    for obj in actual:
        key = owned_key(kind, obj, fleet)
        if key is not None:
            by_key.setdefault(key, []).append(obj)
    changes: list[Change] = []
    for want in desired:
        found = by_key.pop(want.key, [])
        extra = found[1:]  # duplicates of one key (e.g. two applies at once): keep the first
        for dup in extra:
            changes.append(_leftover(kind, dup, want.key, prune))
        if not found:
            changes.append(Change(kind, want.key, want.display_name, "create", role=want.role, desired=want))
            continue
        have = found[0]
        if kind == "topic":  # keep others' topic labels; only ours must be there
            message = _copy(want.message)
            message.labels = {**dict(have.labels), **dict(want.message.labels)}
            want = Desired(want.kind, want.key, want.display_name, message, want.role)
        wanted = {k: v for k, v in to_plain(want.message).items() if k != "name"}
        current = to_plain(have)
        diffs = diff_fields(wanted, current, EXACT_MAPS[kind])
        # a managed field we no longer set must go too
        diffs += [
            (f, f"{_label(f)}: {_show(current[f])} -> (removed)")
            for f in UPDATE_FIELDS[kind]
            if f in current and f not in wanted
        ]
        immutable = IMMUTABLE.get(kind, ())
        action = "unchanged"
        if diffs:
            action = "replace" if any(_top(path) in immutable for path, _ in diffs) else "update"
        changes.append(
            Change(
                kind, want.key, want.display_name, action, have.name, [t for _, t in diffs], want.role, want
            )
        )
    if kind != "topic":
        for key, objs in by_key.items():
            for obj in objs:
                changes.append(_leftover(kind, obj, key, prune))
    return changes


def _leftover(kind: str, obj: Any, key: str, prune: bool) -> Change:
    return Change(
        kind,
        key,
        getattr(obj, "display_name", "") or obj.name,
        "delete" if prune else "orphan",
        obj.name,
        role="ours, no longer in the inventory" + ("" if prune else " (kept; --prune deletes it)"),
    )


# ---------------------------------------------------------------------------------------------
# Clients (the only part that talks to the network)
# ---------------------------------------------------------------------------------------------
class MonitoringClients:
    """The real google-cloud-monitoring and google-cloud-pubsub clients for one project: the real
    API by default, or local stand-ins (insecure gRPC on loopback) when endpoints are configured."""

    def __init__(self, config: MonitoringConfig, timeout: float = 60.0) -> None:
        self.config = config
        self.timeout = timeout
        self._clients: dict[str, Any] = {}
        self._channels: list[Any] = []

    def close(self) -> None:
        for channel in self._channels:
            channel.close()
        self._channels.clear()

    def __enter__(self) -> MonitoringClients:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _grpc(self, name: str, client_cls: Any, transport_cls: Any, endpoint: str | None) -> Any:
        if name not in self._clients:
            if endpoint:
                import grpc

                channel = grpc.insecure_channel(endpoint)
                self._channels.append(channel)
                self._clients[name] = client_cls(transport=transport_cls(channel=channel))
            else:
                self._clients[name] = client_cls()
        return self._clients[name]

    def client(self, kind: str) -> Any:
        from google.cloud import monitoring_v3

        if kind == "topic":
            from google.cloud.pubsub_v1 import PublisherClient
            from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport

            return self._grpc("topic", PublisherClient, PublisherGrpcTransport, self.config.pubsub_endpoint)
        if kind == "channel":
            from google.cloud.monitoring_v3.services.notification_channel_service import transports as t

            return self._grpc(
                kind,
                monitoring_v3.NotificationChannelServiceClient,
                t.NotificationChannelServiceGrpcTransport,
                self.config.endpoint,
            )
        if kind == "uptime_check":
            from google.cloud.monitoring_v3.services.uptime_check_service import transports as u

            return self._grpc(
                kind,
                monitoring_v3.UptimeCheckServiceClient,
                u.UptimeCheckServiceGrpcTransport,
                self.config.endpoint,
            )
        from google.cloud.monitoring_v3.services.alert_policy_service import transports as a

        return self._grpc(
            kind,
            monitoring_v3.AlertPolicyServiceClient,
            a.AlertPolicyServiceGrpcTransport,
            self.config.endpoint,
        )

    def _call(self, what: str, fn: Callable[[], Any], missing_ok: bool = False) -> Any:
        from google.api_core import exceptions

        try:
            return fn()
        except exceptions.GoogleAPICallError as exc:
            if missing_ok and isinstance(exc, exceptions.NotFound):
                return None
            raise MonitoringError(
                f"{what} failed: {_status(exc)} {exc.message}",
                where=f"project {self.config.project}",
                hint=_hint(exc),
            ) from None
        except exceptions.RetryError as exc:
            raise MonitoringError(
                f"{what} failed: gave up retrying ({exc.cause})",
                where=f"project {self.config.project}",
                hint="is the endpoint reachable? (monitoring.endpoint / pubsub_endpoint for local stand-ins)",
            ) from None

    def _opts(self, retry: bool) -> dict[str, Any]:
        """Per-call deadline; reads, updates and deletes retry transient errors until it (not creates:
        a create whose answer was lost would be made twice; the next apply finds it instead)."""
        from google.api_core import retry as retries

        if not retry:
            return {"timeout": self.timeout, "retry": None}
        policy = retries.Retry(
            predicate=retries.if_transient_error, initial=0.2, maximum=5.0, timeout=self.timeout
        )
        return {"timeout": self.timeout, "retry": policy}

    def list(self, kind: str, topics: Iterable[str] = ()) -> list[Any]:
        """Existing objects of a kind in the project (topics: those of `topics` that exist)."""
        parent = f"projects/{self.config.project}"
        c, opts = self.client(kind), self._opts(retry=True)
        if kind == "topic":
            found = [
                self._call(
                    f"get topic {name}", functools.partial(c.get_topic, topic=name, **opts), missing_ok=True
                )
                for name in topics
            ]
            return [t for t in found if t is not None]
        if kind == "channel":
            return self._call(
                "list notification channels", lambda: list(c.list_notification_channels(name=parent, **opts))
            )
        if kind == "uptime_check":
            return self._call(
                "list uptime checks", lambda: list(c.list_uptime_check_configs(parent=parent, **opts))
            )
        return self._call("list alert policies", lambda: list(c.list_alert_policies(name=parent, **opts)))

    def create(self, kind: str, message: Any) -> Any:
        parent = f"projects/{self.config.project}"
        c, opts = self.client(kind), self._opts(retry=False)
        what = f"create {kind.replace('_', ' ')} {getattr(message, 'display_name', '') or message.name}"
        if kind == "topic":
            return self._call(what, lambda: c.create_topic(request=message, **opts))
        if kind == "channel":
            return self._call(
                what, lambda: c.create_notification_channel(name=parent, notification_channel=message, **opts)
            )
        if kind == "uptime_check":
            return self._call(
                what, lambda: c.create_uptime_check_config(parent=parent, uptime_check_config=message, **opts)
            )
        return self._call(what, lambda: c.create_alert_policy(name=parent, alert_policy=message, **opts))

    def update(self, kind: str, message: Any, fields: Sequence[str]) -> Any:
        from google.protobuf import field_mask_pb2

        mask = field_mask_pb2.FieldMask(paths=list(fields))
        c, opts = self.client(kind), self._opts(retry=True)
        what = f"update {kind.replace('_', ' ')} {message.name}"
        field_name = {
            "topic": "topic",
            "channel": "notification_channel",
            "uptime_check": "uptime_check_config",
            "alert_policy": "alert_policy",
        }[kind]
        method = {
            "topic": "update_topic",
            "channel": "update_notification_channel",
            "uptime_check": "update_uptime_check_config",
            "alert_policy": "update_alert_policy",
        }[kind]
        request = {field_name: message, "update_mask": mask}
        return self._call(what, lambda: getattr(c, method)(request=request, **opts))

    def delete(self, kind: str, name: str) -> None:
        """Delete one object; already gone counts as done (a retried delete may find it so)."""
        method = {
            "channel": "delete_notification_channel",
            "uptime_check": "delete_uptime_check_config",
            "alert_policy": "delete_alert_policy",
        }.get(kind)
        if method is None:
            raise MonitoringError(
                f"refusing to delete {kind} {name}", hint="topics are never deleted by the tool"
            )
        c, opts = self.client(kind), self._opts(retry=True)
        self._call(
            f"delete {kind.replace('_', ' ')} {name}",
            lambda: getattr(c, method)(name=name, **opts),
            missing_ok=True,
        )


def _status(exc: Any) -> str:
    status = getattr(exc, "grpc_status_code", None)
    return status.name if status is not None else str(getattr(exc, "code", "error"))


def _copy(message: Any) -> Any:
    cls = type(message)
    return cls.deserialize(cls.serialize(message))


def _hint(exc: Any) -> str:
    code = _status(exc)
    if code in ("PERMISSION_DENIED", "UNAUTHENTICATED"):
        return "the operator needs roles/monitoring.editor and roles/pubsub.editor on the project"
    if code in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
        return "the API did not answer; run the command again (it is idempotent)"
    return "see docs/monitoring.md"


# ---------------------------------------------------------------------------------------------
# Plan and apply: one code path; a plan is an apply that does not execute
# ---------------------------------------------------------------------------------------------
@dataclass
class MonitoringReport:
    """What `fab monitoring.plan|apply` found or changed (not a rollout's Report)."""

    fleet: str
    project: str
    applied: bool
    changes: list[Change]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.changes:
            out[c.action] = out.get(c.action, 0) + 1
        return out

    @property
    def changed(self) -> bool:
        return any(c.action not in ("unchanged", "orphan") for c in self.changes)

    def as_dict(self) -> dict[str, Any]:
        return {
            "fleet": self.fleet,
            "project": self.project,
            "applied": self.applied,
            "counts": self.counts(),
            "objects": [c.as_dict() for c in self.changes],
        }


_DELETE_ORDER = {"alert_policy": 0, "uptime_check": 1, "channel": 2}


def reconcile(
    config: MonitoringConfig, clients: MonitoringClients, *, execute: bool, prune: bool = False
) -> MonitoringReport:
    """Plan (execute=False) or apply (execute=True) the fleet's Monitoring objects, kind by kind,
    so that a policy is built with the real names of the channel and checks it references."""
    refs: dict[str, str] = {}
    retire: list[Change] = []
    all_changes: list[Change] = []
    for kind in KINDS:
        desired = [d for d in desired_state(config, refs) if d.kind == kind]
        topics = [d.message.name for d in desired] if kind == "topic" else ()
        changes = plan_kind(kind, desired, clients.list(kind, topics), config.fleet, prune)
        for ch in changes:
            if ch.action in ("create", "replace") and ch.desired is not None:
                old = ch.name
                if execute:
                    created = clients.create(kind, ch.desired.message)
                    ch.name, ch.done = created.name, True
                if ch.action == "replace":
                    retire.append(Change(kind, ch.key, ch.display_name, "delete", old, role="replaced"))
                refs[ch.key] = ch.name if execute else ""
            elif ch.action == "update" and ch.desired is not None:
                if execute:
                    message = _copy(ch.desired.message)
                    message.name = ch.name
                    clients.update(kind, message, UPDATE_FIELDS[kind])
                    ch.done = True
                refs[ch.key] = ch.name
            elif ch.action == "unchanged":
                refs[ch.key] = ch.name
            elif ch.action == "delete":
                retire.append(ch)
        all_changes.extend(changes)
    for ch in sorted(retire, key=lambda c: _DELETE_ORDER[c.kind]):
        if execute:
            clients.delete(ch.kind, ch.name)
            ch.done = True
    # replaced objects' old copies are part of the report, after everything else
    all_changes.extend(c for c in retire if c.role == "replaced")
    return MonitoringReport(config.fleet, config.project, execute, all_changes)


def plan(config: MonitoringConfig, clients: MonitoringClients, prune: bool = False) -> MonitoringReport:
    return reconcile(config, clients, execute=False, prune=prune)


def apply(config: MonitoringConfig, clients: MonitoringClients, prune: bool = False) -> MonitoringReport:
    return reconcile(config, clients, execute=True, prune=prune)
