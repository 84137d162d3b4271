"""fleet/alerting/policies.py, the pure parts: configuration from the inventory, desired objects, the diff."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.cloud import monitoring_v3 as m

from fleet import inventory
from fleet.alerting import policies as mon
from fleet.errors import InventoryError
from functions import fleet_contract as contract

PROJECT = "my-project"
ZONE = "europe-west1-b"

BASE_DATA: dict[str, Any] = {
    "gce": {"project": PROJECT, "migs": [{"project": PROJECT, "zone": ZONE, "name": "dify-mig"}]},
    "app": {"http_port": 80},
    "monitoring": {
        "project": PROJECT,
        "fleet": "prod",
        "uptime": {"lb_url": "https://dify.example.com/health", "per_instance": True},
        "scale": {
            "step": 1,
            "min": 2,
            "max": 6,
            "cpu": {"high": 0.8, "low": 0.2},
            "latency": {"high": 2000, "url_map": "dify-lb"},
            "queue_depth": {
                "metric": "custom.googleapis.com/dify/celery_queue_length",
                "high": 100,
                "low": 5,
            },
        },
        "functions": {
            "region": "europe-west1",
            "service_account": "fleet-functions@my-project.iam.gserviceaccount.com",
        },
    },
}
BASE_HOSTS: dict[str, Any] = {
    "app-1": {"hostname": "127.0.0.1", "data": {"gce": {"zone": ZONE, "instance_id": "1001"}}},
    "app-2": {"hostname": "127.0.0.1", "data": {"gce": {"zone": ZONE, "instance_id": "1002"}}},
}


def write_inventory(
    path: Path, data: dict[str, Any] | None = None, hosts: dict[str, Any] | None = None
) -> Path:
    """An inventory directory with `data` in defaults.yaml (default: BASE_DATA)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "defaults.yaml").write_text(yaml.safe_dump({"data": data if data is not None else BASE_DATA}))
    (path / "hosts.yaml").write_text(yaml.safe_dump(hosts if hosts is not None else BASE_HOSTS))
    return path


def base() -> tuple[dict[str, Any], dict[str, Any]]:
    return copy.deepcopy(BASE_DATA), copy.deepcopy(BASE_HOSTS)


def config_of(
    tmp_path: Path,
    data: dict[str, Any] | None = None,
    hosts: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
) -> mon.MonitoringConfig:
    return mon.config_from_inventory(
        inventory.load(str(write_inventory(tmp_path / "inv", data, hosts))), env or {}
    )


def by_key(objects: list[mon.Desired]) -> dict[str, mon.Desired]:
    return {d.key: d for d in objects}


# --- configuration ---------------------------------------------------------------------------


def test_config_resolves_the_fleet(tmp_path: Path) -> None:
    cfg = config_of(tmp_path)
    assert cfg.fleet == "prod" and cfg.project == PROJECT
    assert cfg.alerts_topic == f"projects/{PROJECT}/topics/fleet-alerts"
    assert cfg.events_topic == f"projects/{PROJECT}/topics/fleet-events"
    assert [str(g) for g in cfg.migs] == [f"{PROJECT}/{ZONE}/dify-mig"]
    assert cfg.scale_migs == ("dify-mig",)
    assert [(c.host, c.instance_id, c.zone, c.port, c.path) for c in cfg.instance_checks] == [
        ("app-1", "1001", ZONE, 80, "/health"),
        ("app-2", "1002", ZONE, 80, "/health"),
    ]
    assert cfg.endpoint is None and cfg.pubsub_endpoint is None


def test_per_instance_checks_only_where_configured(tmp_path: Path) -> None:
    data, hosts = base()
    hosts["app-2"]["data"]["monitoring"] = {"uptime": {"per_instance": False}}
    assert [c.host for c in config_of(tmp_path, data, hosts).instance_checks] == ["app-1"]


def test_no_monitoring_section_is_a_clear_error(tmp_path: Path) -> None:
    data, hosts = base()
    del data["monitoring"]
    with pytest.raises(InventoryError, match=r"no data\.monitoring") as err:
        config_of(tmp_path, data, hosts)
    assert "docs/monitoring.md" in (err.value.hint or "")


def test_unknown_key_is_an_inventory_error(tmp_path: Path) -> None:
    data, hosts = base()
    data["monitoring"]["uptime"]["perinstance"] = True
    with pytest.raises(InventoryError, match=r"monitoring.uptime.perinstance: unknown key"):
        config_of(tmp_path, data, hosts)


def test_hosts_must_agree_on_fleet_wide_settings(tmp_path: Path) -> None:
    data, hosts = base()
    hosts["app-2"]["data"]["monitoring"] = {"scale": {"max": 9}}
    with pytest.raises(InventoryError, match=r"differs between hosts 'app-1' and 'app-2' \(in scale\)"):
        config_of(tmp_path, data, hosts)


def test_per_instance_needs_instance_id_and_zone(tmp_path: Path) -> None:
    data, hosts = base()
    del hosts["app-2"]["data"]["gce"]["instance_id"]
    with pytest.raises(InventoryError, match=r"gce.instance_id missing") as err:
        config_of(tmp_path, data, hosts)
    assert "app-2" in (err.value.where or "")


@pytest.mark.parametrize("zone", ["local-zone-a", "europe-west1-b-c"])
def test_migs_follow_the_contract_the_functions_read(tmp_path: Path, zone: str) -> None:
    """FLEET_MIGS is built from these: a MIG the functions would refuse is refused at configuration."""
    data, hosts = base()
    data["gce"]["migs"] = [{"zone": zone, "name": "dify-mig"}]
    with pytest.raises(InventoryError, match=r"gce\.migs\[0\]: .*zone"):
        config_of(tmp_path, data, hosts)


def test_scale_migs_must_be_known(tmp_path: Path) -> None:
    data, hosts = base()
    data["monitoring"]["scale"]["migs"] = ["other-mig"]
    with pytest.raises(InventoryError, match=r"other-mig not in gce\.migs"):
        config_of(tmp_path, data, hosts)


@pytest.mark.parametrize(
    ("section", "value", "message"),
    [
        ("cpu", {"high": 0.5, "low": 0.6}, "low must be below high"),
        ("latency", {"high": 100}, "url_map is missing"),
        ("queue_depth", {"high": 5}, "queue_depth.metric is missing"),
    ],
)
def test_bad_thresholds(tmp_path: Path, section: str, value: dict[str, Any], message: str) -> None:
    data, hosts = base()
    data["monitoring"]["scale"][section] = value
    with pytest.raises(InventoryError, match=message):
        config_of(tmp_path, data, hosts)


def test_endpoints_must_be_loopback(tmp_path: Path) -> None:
    data, hosts = base()
    data["monitoring"]["endpoint"] = "monitoring.example.com:443"
    with pytest.raises(InventoryError, match="not a loopback host:port"):
        config_of(tmp_path, data, hosts)
    data["monitoring"]["endpoint"] = "127.0.0.1:8095"
    assert config_of(tmp_path, data, hosts).endpoint == "127.0.0.1:8095"
    del data["monitoring"]["endpoint"]
    cfg = config_of(
        tmp_path, data, hosts, env={mon.ENDPOINT_ENV: "localhost:9", mon.PUBSUB_ENDPOINT_ENV: "[::1]:7"}
    )
    assert (cfg.endpoint, cfg.pubsub_endpoint) == ("localhost:9", "[::1]:7")


def test_the_documented_example_is_valid(tmp_path: Path) -> None:
    """docs/inventory.md's data.monitoring example loads, resolves and yields a deploy plan."""
    from fleet.alerting.functions_deploy import deploy_plan

    doc = (Path(__file__).resolve().parents[2] / "docs" / "inventory.md").read_text()
    section = doc.split("## Monitoring and the functions", 1)[1]
    example = yaml.safe_load(section.split("```yaml\n", 1)[1].split("```", 1)[0])
    data, hosts = base()
    data["monitoring"] = example["data"]["monitoring"]
    cfg = config_of(tmp_path, data, hosts)
    assert cfg.fleet == "prod" and cfg.endpoint == "127.0.0.1:8095" and cfg.latency is not None
    assert len(deploy_plan(cfg).commands) == 7  # 2 topic grants, 1 secret grant, 4 functions


# --- desired state -----------------------------------------------------------------------------


def test_every_object_is_labelled_and_policies_notify_the_channel(tmp_path: Path) -> None:
    cfg = config_of(tmp_path)
    refs = {mon.channel_key(): f"projects/{PROJECT}/notificationChannels/42"}
    objects = mon.desired_state(cfg, refs)
    kinds = [d.kind for d in objects]
    assert kinds == sorted(kinds, key=mon.KINDS.index)  # dependency order
    for d in objects:
        if d.kind == "topic":
            assert dict(d.message.labels) == {mon.MANAGED_LABEL: "prod"}
            continue
        labels = dict(d.message.user_labels)
        assert labels[mon.MANAGED_LABEL] == "prod" and labels[mon.OBJECT_LABEL] == d.key
        if d.kind == "alert_policy":
            assert list(d.message.notification_channels) == [refs[mon.channel_key()]]
    channel = by_key(objects)[mon.channel_key()].message
    assert channel.type_ == "pubsub" and dict(channel.labels) == {"topic": cfg.alerts_topic}


def test_autoheal_policy_is_grouped_by_instance(tmp_path: Path) -> None:
    cfg = config_of(tmp_path)
    keys = [mon.instance_check_key(c) for c in cfg.instance_checks]
    refs = {k: f"projects/{PROJECT}/uptimeCheckConfigs/id-{i}" for i, k in enumerate(keys)}
    policy = by_key(mon.desired_state(cfg, refs))["policy-instance-health"].message
    labels = dict(policy.user_labels)
    assert labels[contract.POLICY_ACTION_LABEL] == contract.POLICY_ACTION_HEAL
    assert set(labels) == {contract.POLICY_ACTION_LABEL, mon.MANAGED_LABEL, mon.OBJECT_LABEL}
    (cond,) = policy.conditions
    threshold = cond.condition_threshold
    assert 'check_id=one_of("id-0", "id-1")' in threshold.filter
    assert 'resource.type="gce_instance"' in threshold.filter
    # the incident must carry instance_id and zone: grouped by them (functions/policy.py reads them)
    (agg,) = threshold.aggregations
    assert {"resource.label.instance_id", "resource.label.zone"} <= set(agg.group_by_fields)
    assert agg.cross_series_reducer == m.Aggregation.Reducer.REDUCE_COUNT_FALSE
    assert threshold.comparison == m.ComparisonType.COMPARISON_GT and threshold.threshold_value == 1


def test_scale_policies_carry_the_contract_labels(tmp_path: Path) -> None:
    cfg = config_of(tmp_path)
    objects = by_key(mon.desired_state(cfg, {}))
    out, in_ = objects["policy-scale-out-dify-mig"].message, objects["policy-scale-in-dify-mig"].message
    for policy, direction in ((out, "out"), (in_, "in")):
        labels = dict(policy.user_labels)
        assert labels[contract.POLICY_ACTION_LABEL] == contract.POLICY_ACTION_SCALE
        assert labels[contract.POLICY_SCALE_DIRECTION_LABEL] == direction
        assert labels[contract.POLICY_SCALE_STEP_LABEL] == "1"
        assert labels[contract.POLICY_SCALE_MIN_LABEL] == "2"
        assert labels[contract.POLICY_SCALE_MAX_LABEL] == "6"
        assert labels[contract.POLICY_MIG_LABEL] == "dify-mig"
    # out: any of CPU, latency, queue high; in: CPU and queue both low (latency has no "low")
    assert out.combiner == m.AlertPolicy.ConditionCombinerType.OR
    assert [c.condition_threshold.threshold_value for c in out.conditions] == [0.8, 2000, 100]
    assert all(c.condition_threshold.comparison == m.ComparisonType.COMPARISON_GT for c in out.conditions)
    assert in_.combiner == m.AlertPolicy.ConditionCombinerType.AND
    assert [c.condition_threshold.threshold_value for c in in_.conditions] == [0.2, 5]
    assert all(c.condition_threshold.comparison == m.ComparisonType.COMPARISON_LT for c in in_.conditions)
    # members are selected by the template's instance label, never by a name prefix
    cpu_filter = 'metric.type="compute.googleapis.com/instance/cpu/utilization" AND resource.type="gce_instance" AND metadata.user_labels."fleet-mig"="dify-mig"'  # noqa: E501
    assert out.conditions[0].condition_threshold.filter == cpu_filter
    assert in_.conditions[0].condition_threshold.filter == cpu_filter
    assert "starts_with" not in cpu_filter and "instance_name" not in cpu_filter
    latency = out.conditions[1].condition_threshold
    assert 'url_map_name="dify-lb"' in latency.filter
    assert latency.aggregations[0].per_series_aligner == m.Aggregation.Aligner.ALIGN_PERCENTILE_99


def test_many_instance_checks_split_into_conditions(tmp_path: Path) -> None:
    data, _ = base()
    hosts = {f"app-{i}": {"data": {"gce": {"zone": ZONE, "instance_id": str(1000 + i)}}} for i in range(45)}
    policy = by_key(mon.desired_state(config_of(tmp_path, data, hosts), {}))["policy-instance-health"].message
    assert [c.display_name for c in policy.conditions] == [
        f"instance /health failing ({i}/3)" for i in (1, 2, 3)
    ]
    assert [c.condition_threshold.filter.count("<new ") for c in policy.conditions] == [20, 20, 5]
    hosts = {f"app-{i}": {"data": {"gce": {"zone": ZONE, "instance_id": str(1000 + i)}}} for i in range(100)}
    with pytest.raises(InventoryError, match="100 per-instance uptime checks: Monitoring allows 100"):
        config_of(tmp_path, data, hosts)


def test_unresolved_references_are_visible_placeholders(tmp_path: Path) -> None:
    objects = by_key(mon.desired_state(config_of(tmp_path), {}))
    policy = objects["policy-instance-health"].message
    assert list(policy.notification_channels) == [f"<new {mon.channel_key()}>"]
    assert "<new check-instance-app-1>" in policy.conditions[0].condition_threshold.filter


def test_only_what_is_configured(tmp_path: Path) -> None:
    data, hosts = base()
    data["monitoring"]["uptime"] = {"per_instance": False}
    del data["monitoring"]["scale"]
    keys = [d.key for d in mon.desired_state(config_of(tmp_path, data, hosts), {})]
    assert keys == ["fleet-alerts", "fleet-events", mon.channel_key()]


def test_lb_check_from_the_url(tmp_path: Path) -> None:
    data, hosts = base()
    data["monitoring"]["uptime"]["lb_url"] = "http://lb.internal:8080/healthz"
    check = by_key(mon.desired_state(config_of(tmp_path, data, hosts), {}))[mon.lb_check_key()].message
    assert check.monitored_resource.type == "uptime_url"
    assert dict(check.monitored_resource.labels) == {"host": "lb.internal", "project_id": PROJECT}
    assert (check.http_check.path, check.http_check.port, check.http_check.use_ssl) == (
        "/healthz",
        8080,
        False,
    )
    data["monitoring"]["uptime"]["lb_url"] = "https://dify.example.com/health"
    check = by_key(mon.desired_state(config_of(tmp_path, data, hosts), {}))[mon.lb_check_key()].message
    assert (check.http_check.port, check.http_check.use_ssl, check.http_check.validate_ssl) == (
        443,
        True,
        True,
    )


def test_long_keys_stay_label_safe() -> None:
    key = mon.object_key("policy-scale-out-" + "a" * 80)
    assert len(key) <= 63 and contract.validate_label_value(key) == key
    assert key != mon.object_key("policy-scale-out-" + "a" * 79)


# --- diff ----------------------------------------------------------------------------------------


def as_server_returns(message: Any, name: str) -> Any:
    """What the API hands back: a name, records, condition names, defaults."""
    out = type(message).deserialize(type(message).serialize(message))
    out.name = name
    if isinstance(out, m.AlertPolicy):
        out.creation_record = m.MutationRecord(mutated_by="someone")
        for i, cond in enumerate(out.conditions):
            cond.name = f"{name}/conditions/{i}"
    return out


def desired_policy(tmp_path: Path, key: str = "policy-scale-out-dify-mig") -> mon.Desired:
    return by_key(mon.desired_state(config_of(tmp_path), {}))[key]


def test_server_filled_fields_are_not_differences(tmp_path: Path) -> None:
    want = desired_policy(tmp_path)
    have = as_server_returns(want.message, "projects/p/alertPolicies/1")
    (change,) = mon.plan_kind("alert_policy", [want], [have], "prod", prune=False)
    assert (change.action, change.name, change.changes) == ("unchanged", "projects/p/alertPolicies/1", [])


def test_a_changed_threshold_is_an_update_that_names_the_field(tmp_path: Path) -> None:
    want = desired_policy(tmp_path)
    have = as_server_returns(want.message, "projects/p/alertPolicies/1")
    have.conditions[0].condition_threshold.threshold_value = 0.9
    (change,) = mon.plan_kind("alert_policy", [want], [have], "prod", prune=False)
    assert change.action == "update"
    assert change.changes == ["conditions[0].condition_threshold.threshold_value: 0.9 -> 0.8"]


def test_policy_labels_must_match_exactly(tmp_path: Path) -> None:
    """The functions read every label: a stale extra one is a difference, not noise."""
    want = desired_policy(tmp_path)
    have = as_server_returns(want.message, "projects/p/alertPolicies/1")
    have.user_labels[contract.POLICY_SCALE_STEP_LABEL] = "3"
    have.user_labels["fleet-scale-extra"] = "x"
    (change,) = mon.plan_kind("alert_policy", [want], [have], "prod", prune=False)
    assert change.action == "update"
    assert sorted(change.changes) == [
        "user_labels.fleet-scale-extra: 'x' -> (removed)",
        "user_labels.fleet-scale-step: '3' -> '1'",
    ]


def test_a_field_we_stopped_setting_is_removed(tmp_path: Path) -> None:
    want = desired_policy(tmp_path)
    have = as_server_returns(want.message, "projects/p/alertPolicies/1")
    want.message.severity = m.AlertPolicy.Severity.SEVERITY_UNSPECIFIED
    (change,) = mon.plan_kind("alert_policy", [want], [have], "prod", prune=False)
    assert change.action == "update" and change.changes == ["severity: 'WARNING' -> (removed)"]


def test_uptime_check_immutable_fields_mean_replace(tmp_path: Path) -> None:
    want = by_key(mon.desired_state(config_of(tmp_path), {}))["check-instance-app-1"]
    have = as_server_returns(want.message, "projects/p/uptimeCheckConfigs/a")
    have.http_check.port = 8080
    (change,) = mon.plan_kind("uptime_check", [want], [have], "prod", prune=False)
    assert change.action == "update" and change.changes == ["http_check.port: 8080 -> 80"]
    have = as_server_returns(want.message, "projects/p/uptimeCheckConfigs/a")
    have.monitored_resource.labels["instance_id"] = "999"
    (change,) = mon.plan_kind("uptime_check", [want], [have], "prod", prune=False)
    assert change.action == "replace"
    assert change.changes == ["monitored_resource.labels.instance_id: '999' -> '1001'"]


def test_ownership_orphans_and_prune(tmp_path: Path) -> None:
    want = desired_policy(tmp_path)
    ours = as_server_returns(want.message, "projects/p/alertPolicies/1")
    twin = as_server_returns(want.message, "projects/p/alertPolicies/2")
    other_fleet = as_server_returns(want.message, "projects/p/alertPolicies/3")
    other_fleet.user_labels[mon.MANAGED_LABEL] = "staging"
    unmanaged = m.AlertPolicy(name="projects/p/alertPolicies/4", display_name="hand-made")
    gone = as_server_returns(
        desired_policy(tmp_path, "policy-scale-in-dify-mig").message, "projects/p/alertPolicies/5"
    )
    actual = [ours, twin, other_fleet, unmanaged, gone]
    changes = mon.plan_kind("alert_policy", [want], actual, "prod", prune=False)
    assert sorted((c.action, c.name) for c in changes) == [
        ("orphan", "projects/p/alertPolicies/2"),
        ("orphan", "projects/p/alertPolicies/5"),
        ("unchanged", "projects/p/alertPolicies/1"),
    ]
    pruned = mon.plan_kind("alert_policy", [want], actual, "prod", prune=True)
    assert sorted(c.name for c in pruned if c.action == "delete") == [
        "projects/p/alertPolicies/2",
        "projects/p/alertPolicies/5",
    ]


def test_topics_keep_foreign_labels_and_are_never_orphaned(tmp_path: Path) -> None:
    from google.pubsub_v1 import types as pubsub

    cfg = config_of(tmp_path)
    topics = [d for d in mon.desired_state(cfg, {}) if d.kind == "topic"]
    have = [
        pubsub.Topic(name=cfg.alerts_topic, labels={mon.MANAGED_LABEL: "prod", "team": "ops"}),
        pubsub.Topic(name=cfg.events_topic, labels={"team": "ops"}),
        pubsub.Topic(name=f"projects/{PROJECT}/topics/unrelated"),
    ]
    changes = mon.plan_kind("topic", topics, have, "prod", prune=True)
    assert [(c.key, c.action) for c in changes] == [("fleet-alerts", "unchanged"), ("fleet-events", "update")]
    assert changes[1].changes == ["labels.fleet-managed-by: (none) -> 'prod'"]
    assert dict(changes[1].desired.message.labels) == {"team": "ops", mon.MANAGED_LABEL: "prod"}


def test_missing_prerequisites_for_the_functions(tmp_path: Path) -> None:
    from fleet.alerting.functions_deploy import missing_prerequisites

    cfg = dataclasses.replace(config_of(tmp_path))
    changes = [
        mon.Change("topic", "fleet-alerts", cfg.alerts_topic, "unchanged"),
        mon.Change("topic", "fleet-events", cfg.events_topic, "create"),
        mon.Change("channel", mon.channel_key(), "compose-fleet prod: alerts", "create"),
        mon.Change("alert_policy", "policy-lb-health", "x", "create"),
    ]
    report = mon.MonitoringReport("prod", PROJECT, False, changes)
    assert missing_prerequisites(report) == [
        f"topic {cfg.events_topic}",
        "channel compose-fleet prod: alerts",
    ]
