"""The agent's health metric, as data: what each VM writes to Cloud Monitoring and how it is read.

`custom.googleapis.com/fleet/app_health` is an INT64 GAUGE on the VM's own `gce_instance` resource
(project_id, zone, instance_id), one series per VM, written by the agent's heartbeat
(`fleet-agent watch`) with `projects.timeSeries.create` and the VM's own service account
(roles/monitoring.metricWriter). Nothing reaches into the VM: it needs no public IP, no firewall
rule and no per-VM registration, so a VM the MIG creates reports from its first heartbeat on.

Values (one series per VM: the state is in the value, never a label that would split the series):

    1  HEALTHY   serving: /health answers 200 with the version of the current release
    0  FAILING   not serving and not drained by an operator (what autohealing is for); also a VM
                 the agent drained itself: while its boot/apply runs, or left so after one failed
                 (that drain hides a VM that does not serve; a new VM is spared by autoheal's
                 initial delay, as by the MIG's)
    2  DRAINED   drained by an operator (a rollout or deploy switching it): never a heal
    3  NONE      no release on it yet (a new fleet before its first deploy): nothing to heal

The alert policy (fleet/alerting/policies.py) opens an incident when the value stays below 1, and
another when the series stops arriving (absence: a VM that died or lost its agent). The local
monitor (fleet/scenarios/metrichealth.py) evaluates the same rule from the same series.
Stdlib only: the agent imports it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

METRIC_TYPE = "custom.googleapis.com/fleet/app_health"
RESOURCE_TYPE = "gce_instance"
FLEET_LABEL = "fleet"

FAILING = 0
HEALTHY = 1
DRAINED = 2
NONE = 3
VALUES = {"failed": FAILING, "ok": HEALTHY, "drained": DRAINED, "none": NONE}
STATES = {v: k for k, v in VALUES.items()}
HEALTHY_AT_LEAST = 1  # the policy's threshold: a value below it is a failing instance

# What Monitoring enforces: one point per series every 5 s at most; the agent writes less often.
MIN_WRITE_INTERVAL = 5.0
ENABLE_KEY = "fleet-health-metric"  # instance metadata: "true" = the heartbeat writes the metric
ENDPOINT_KEY = "fleet-monitoring-endpoint"  # instance metadata: a local stand-in instead of Google's
MONITORING_ENDPOINT = "https://monitoring.googleapis.com"


def value_of(state: str) -> int:
    """The metric value for a heartbeat state (ok, failed, drained, none)."""
    try:
        return VALUES[state]
    except KeyError:
        raise ValueError(f"unknown health state {state!r}: one of {', '.join(VALUES)}") from None


def enabled(text: str | None) -> bool:
    return (text or "").strip().lower() in ("1", "true", "yes", "on")


def create_url(endpoint: str, project: str) -> str:
    """projects.timeSeries.create: POST {endpoint}/v3/projects/{project}/timeSeries."""
    return f"{endpoint.rstrip('/')}/v3/projects/{project}/timeSeries"


def time_series_body(
    *, project: str, zone: str, instance_id: str, fleet: str, value: int, end_time: str
) -> dict[str, Any]:
    """The REST body of projects.timeSeries.create for one point (camelCase JSON; int64 as a string).
    `end_time` is RFC 3339 UTC (a GAUGE point has only an end time)."""
    if value not in STATES:
        raise ValueError(f"value {value!r}: one of {sorted(STATES)}")
    if not instance_id.isdigit():
        raise ValueError(f"instance id {instance_id!r}: digits (the metadata server's instance/id)")
    return {
        "timeSeries": [
            {
                "metric": {"type": METRIC_TYPE, "labels": {FLEET_LABEL: fleet}},
                "resource": {
                    "type": RESOURCE_TYPE,
                    "labels": {"project_id": project, "zone": zone, "instance_id": instance_id},
                },
                "metricKind": "GAUGE",
                "valueType": "INT64",
                "points": [{"interval": {"endTime": end_time}, "value": {"int64Value": str(value)}}],
            }
        ]
    }


def list_filter(fleet: str | None = None) -> str:
    """The series of this metric (of one fleet): the filter the policy and the local monitor use."""
    text = f'metric.type="{METRIC_TYPE}" AND resource.type="{RESOURCE_TYPE}"'
    return text + (f' AND metric.label.{FLEET_LABEL}="{fleet}"' if fleet else "")


def read_value(point_value: Mapping[str, Any] | int | None) -> int | None:
    """A point's value as written (int64Value may come back as a string in JSON)."""
    if point_value is None:
        return None
    if isinstance(point_value, int):
        return point_value
    raw = point_value.get("int64Value", point_value.get("int64_value"))
    try:
        return None if raw is None else int(raw)
    except (TypeError, ValueError):
        return None
