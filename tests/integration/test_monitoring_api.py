"""`monitoring.plan/apply` with the real google-cloud-monitoring and google-cloud-pubsub clients
against the local gRPC endpoints (standins/monitoring_api.py, standins/pubsub_api.py), and
`functions.deploy` run for real (a recording gcloud, and the real gcloud without an account)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.api_core import exceptions
from google.cloud import monitoring_v3 as m
from google.cloud.monitoring_v3.services.alert_policy_service.transports import (
    AlertPolicyServiceGrpcTransport,
)
from google.cloud.monitoring_v3.services.notification_channel_service.transports import (
    NotificationChannelServiceGrpcTransport,
)
from google.cloud.monitoring_v3.services.uptime_check_service.transports import (
    UptimeCheckServiceGrpcTransport,
)
from google.protobuf import field_mask_pb2

from fleet import inventory
from fleet.alerting import functions_deploy as fd
from fleet.alerting import policies as mon
from functions import fleet_contract as contract
from standins.monitoring_api import LocalMonitoring
from standins.pubsub_api import LocalPubsub
from tests.unit.test_monitoring import PROJECT, base, write_inventory

REPO = Path(__file__).resolve().parents[2]
FAB = str(Path(sys.executable).with_name("fab"))


class Env:
    """Both local endpoints, an inventory pointing at them, and real clients for checking."""

    def __init__(self, tmp_path: Path, monitoring: LocalMonitoring, pubsub: LocalPubsub) -> None:
        self.tmp_path = tmp_path
        self.api = monitoring
        self.pubsub = pubsub
        self.data, self.hosts = base()
        self.data["monitoring"]["endpoint"] = monitoring.endpoint
        self.data["monitoring"]["pubsub_endpoint"] = pubsub.emulator_host
        self.channel = grpc.insecure_channel(monitoring.endpoint)
        self.policies = m.AlertPolicyServiceClient(
            transport=AlertPolicyServiceGrpcTransport(channel=self.channel)
        )
        self.channels = m.NotificationChannelServiceClient(
            transport=NotificationChannelServiceGrpcTransport(channel=self.channel)
        )
        self.checks = m.UptimeCheckServiceClient(
            transport=UptimeCheckServiceGrpcTransport(channel=self.channel)
        )

    @property
    def inventory_dir(self) -> Path:
        return write_inventory(self.tmp_path / "inv", self.data, self.hosts)

    def config(self) -> mon.MonitoringConfig:
        return mon.config_from_inventory(inventory.load(str(self.inventory_dir)), {})

    def plan(self, prune: bool = False) -> mon.MonitoringReport:
        cfg = self.config()
        with mon.MonitoringClients(cfg) as clients:
            return mon.plan(cfg, clients, prune=prune)

    def apply(self, prune: bool = False) -> mon.MonitoringReport:
        cfg = self.config()
        with mon.MonitoringClients(cfg) as clients:
            return mon.apply(cfg, clients, prune=prune)

    def pubsub_topic(self, name: str) -> Any:
        from google.cloud.pubsub_v1 import PublisherClient
        from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport

        channel = grpc.insecure_channel(self.pubsub.emulator_host)
        try:
            return PublisherClient(transport=PublisherGrpcTransport(channel=channel)).get_topic(topic=name)
        finally:
            channel.close()

    def policy(self, key: str) -> m.AlertPolicy:
        (found,) = [p for p in self.api.alert_policies(PROJECT) if p.user_labels.get(mon.OBJECT_LABEL) == key]
        return found


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    with LocalMonitoring(default_page_size=3) as monitoring, LocalPubsub() as pubsub:
        e = Env(tmp_path, monitoring, pubsub)
        yield e
        e.channel.close()


def actions(report: mon.MonitoringReport) -> list[tuple[str, str, str]]:
    return [(c.kind, c.key, c.action) for c in report.changes]


def test_apply_creates_everything_and_twice_changes_nothing(env: Env) -> None:
    planned = env.plan()
    assert {a for _, _, a in actions(planned)} == {"create"}
    assert env.api.mutations() == [] and env.api.alert_policies() == []  # a plan changes nothing

    first = env.apply()
    assert actions(first) == actions(planned) and all(c.done for c in first.changes)
    assert len(env.api.alert_policies(PROJECT)) == 5  # lb, instances, instances escalation, scale out, in
    assert len(env.api.uptime_checks(PROJECT)) == 3  # lb + 2 instances
    assert len(env.api.notification_channels(PROJECT)) == 1

    env.api.clear_calls()
    again = env.plan()
    assert {a for _, _, a in actions(again)} == {"unchanged"}, [c.changes for c in again.changes]
    second = env.apply()
    assert {a for _, _, a in actions(second)} == {"unchanged"}
    assert env.api.mutations() == []
    # listing went through the real pagers (3 per page): more than one page of checks/policies read
    assert len(env.api.calls("ListAlertPolicies")) >= 4


def test_objects_as_monitoring_stores_them(env: Env) -> None:
    env.apply()
    cfg = env.config()
    (channel,) = env.channels.list_notification_channels(name=f"projects/{PROJECT}")
    assert channel.type_ == "pubsub" and channel.labels["topic"] == cfg.alerts_topic and channel.enabled
    topics = {
        t.name: dict(t.labels)
        for t in [env.pubsub_topic(cfg.alerts_topic), env.pubsub_topic(cfg.events_topic)]
    }
    assert topics == {
        cfg.alerts_topic: {mon.MANAGED_LABEL: "prod"},
        cfg.events_topic: {mon.MANAGED_LABEL: "prod"},
    }

    checks = {
        c.user_labels[mon.OBJECT_LABEL]: c
        for c in env.checks.list_uptime_check_configs(parent=f"projects/{PROJECT}")
    }
    instance = checks["check-instance-app-1"]
    assert instance.monitored_resource.type == "gce_instance"
    assert dict(instance.monitored_resource.labels) == {
        "project_id": PROJECT,
        "zone": "europe-west1-b",
        "instance_id": "1001",
    }

    heal = env.policy("policy-instance-health")
    assert heal.user_labels[contract.POLICY_ACTION_LABEL] == contract.POLICY_ACTION_HEAL
    assert list(heal.notification_channels) == [channel.name]
    ids = sorted(checks[k].name.rsplit("/", 1)[-1] for k in ("check-instance-app-1", "check-instance-app-2"))
    for check_id in ids:
        assert f'"{check_id}"' in heal.conditions[0].condition_threshold.filter
    for policy in env.policies.list_alert_policies(name=f"projects/{PROJECT}"):
        assert list(policy.notification_channels) == [channel.name]  # everything notifies
        assert policy.enabled and policy.conditions[0].name.startswith(policy.name + "/conditions/")
    scale_out = env.policy("policy-scale-out-dify-mig")
    assert scale_out.user_labels[contract.POLICY_SCALE_DIRECTION_LABEL] == "out"
    assert scale_out.user_labels[contract.POLICY_MIG_LABEL] == "dify-mig"


def test_an_inventory_change_updates_only_that_policy(env: Env) -> None:
    env.apply()
    before = env.policy("policy-scale-out-dify-mig")
    env.data["monitoring"]["scale"]["cpu"]["high"] = 0.9
    planned = env.plan()
    changed = [c for c in planned.changes if c.action != "unchanged"]
    assert [(c.key, c.action) for c in changed] == [("policy-scale-out-dify-mig", "update")]
    assert sorted(changed[0].changes) == [
        "conditions[0].condition_threshold.threshold_value: 0.8 -> 0.9",
        "conditions[0].display_name: 'CPU above 0.8' -> 'CPU above 0.9'",
    ]
    env.api.clear_calls()
    env.apply()
    assert [c.method for c in env.api.mutations()] == ["UpdateAlertPolicy"]
    after = env.policy("policy-scale-out-dify-mig")
    assert after.name == before.name and after.conditions[0].condition_threshold.threshold_value == 0.9
    assert after.creation_record.mutate_time == before.creation_record.mutate_time
    assert {a for _, _, a in actions(env.plan())} == {"unchanged"}


def test_manual_drift_is_repaired(env: Env) -> None:
    env.apply()
    policy = env.policy("policy-instance-health")
    policy.user_labels[contract.POLICY_ACTION_LABEL] = "scale"
    policy.enabled = False
    env.policies.update_alert_policy(alert_policy=policy)
    planned = {c.key: c for c in env.plan().changes}
    assert planned["policy-instance-health"].action == "update"
    assert sorted(planned["policy-instance-health"].changes) == [
        "enabled: False -> True",
        "user_labels.fleet-action: 'scale' -> 'autoheal'",
    ]
    env.apply()
    repaired = env.policy("policy-instance-health")
    assert repaired.enabled and repaired.user_labels[contract.POLICY_ACTION_LABEL] == "autoheal"


def test_a_new_instance_id_replaces_its_check_and_repoints_the_policy(env: Env) -> None:
    env.apply()
    old = {c.user_labels[mon.OBJECT_LABEL]: c.name for c in env.api.uptime_checks(PROJECT)}[
        "check-instance-app-1"
    ]
    env.hosts["app-1"]["data"]["gce"]["instance_id"] = "2001"  # recreated VM
    planned = [(k, a) for _, k, a in actions(env.plan()) if a != "unchanged"]
    assert planned == [
        ("check-instance-app-1", "replace"),
        ("policy-instance-health", "update"),
        ("policy-instance-health-escalation", "update"),
        ("check-instance-app-1", "delete"),
    ]
    env.api.clear_calls()
    env.apply()
    # the server refuses to delete a check a policy still uses: the order is create, repoint, delete
    assert [c.method for c in env.api.mutations()] == [
        "CreateUptimeCheckConfig",
        "UpdateAlertPolicy",
        "UpdateAlertPolicy",
        "DeleteUptimeCheckConfig",
    ]
    checks = {c.user_labels[mon.OBJECT_LABEL]: c for c in env.api.uptime_checks(PROJECT)}
    assert len(checks) == 3 and checks["check-instance-app-1"].name != old
    assert checks["check-instance-app-1"].monitored_resource.labels["instance_id"] == "2001"
    assert (
        old.rsplit("/", 1)[-1]
        not in env.policy("policy-instance-health").conditions[0].condition_threshold.filter
    )
    assert {a for _, _, a in actions(env.plan())} == {"unchanged"}


def test_a_new_port_updates_the_check_in_place(env: Env) -> None:
    env.apply()
    env.data["monitoring"]["uptime"]["port"] = 8080
    planned = [(k, a) for _, k, a in actions(env.plan()) if a != "unchanged"]
    assert planned == [("check-instance-app-1", "update"), ("check-instance-app-2", "update")]
    env.api.clear_calls()
    env.apply()
    assert [c.method for c in env.api.mutations()] == ["UpdateUptimeCheckConfig"] * 2
    assert {
        c.http_check.port
        for c in env.api.uptime_checks(PROJECT)
        if c.monitored_resource.type == "gce_instance"
    } == {8080}


def test_objects_no_longer_wanted_are_orphans_until_pruned(env: Env) -> None:
    env.apply()
    env.data["monitoring"]["uptime"]["per_instance"] = False
    planned = [(k, a) for _, k, a in actions(env.plan()) if a != "unchanged"]
    assert sorted(planned) == [
        ("check-instance-app-1", "orphan"),
        ("check-instance-app-2", "orphan"),
        ("policy-instance-health", "orphan"),
        ("policy-instance-health-escalation", "orphan"),
    ]
    env.api.clear_calls()
    env.apply()
    assert env.api.mutations() == []
    env.apply(prune=True)
    assert [c.method for c in env.api.mutations()] == ["DeleteAlertPolicy"] * 2 + [
        "DeleteUptimeCheckConfig"
    ] * 2
    assert len(env.api.uptime_checks(PROJECT)) == 1 and len(env.api.alert_policies(PROJECT)) == 3
    assert {a for _, _, a in actions(env.plan(prune=True))} == {"unchanged"}


def test_other_objects_are_left_alone(env: Env) -> None:
    foreign = env.policies.create_alert_policy(
        name=f"projects/{PROJECT}",
        alert_policy=m.AlertPolicy(
            display_name="hand-made",
            user_labels={mon.MANAGED_LABEL: "staging", mon.OBJECT_LABEL: "policy-instance-health"},
            conditions=[
                m.AlertPolicy.Condition(
                    display_name="c",
                    condition_threshold={
                        "filter": 'metric.type="x"',
                        "comparison": "COMPARISON_GT",
                        "duration": {"seconds": 60},
                    },
                )
            ],
        ),
    )
    env.apply(prune=True)
    assert env.policies.get_alert_policy(name=foreign.name).display_name == "hand-made"
    assert all(foreign.name != c.name for c in env.plan(prune=True).changes)


def test_an_interrupted_apply_resumes_without_duplicates(env: Env) -> None:
    env.api.inject("CreateAlertPolicy", grpc.StatusCode.INTERNAL, times=1, message="backend hiccup")
    with pytest.raises(mon.MonitoringError, match="INTERNAL backend hiccup") as err:
        env.apply()
    assert "create alert policy" in err.value.what
    assert len(env.api.uptime_checks(PROJECT)) == 3 and env.api.alert_policies(PROJECT) == []
    resumed = env.apply()
    assert [(k, a) for _, k, a in actions(resumed) if a != "unchanged"] == [
        (k, "create")
        for k in (
            "policy-lb-health",
            "policy-instance-health",
            "policy-instance-health-escalation",
            "policy-scale-out-dify-mig",
            "policy-scale-in-dify-mig",
        )
    ]
    env.api.clear_calls()
    env.apply()
    assert env.api.mutations() == [] and len(env.api.alert_policies(PROJECT)) == 5


def test_an_unreachable_endpoint_is_a_clear_error(env: Env) -> None:
    env.data["monitoring"]["endpoint"] = "127.0.0.1:9"  # discard port: nothing listens
    cfg = env.config()
    # reads retry transient errors until the deadline; a short one keeps the test short
    with mon.MonitoringClients(cfg, timeout=1.0) as clients, pytest.raises(mon.MonitoringError) as err:
        mon.plan(cfg, clients)
    assert err.value.what.startswith("list notification channels failed: gave up retrying")
    assert "monitoring.endpoint" in (err.value.hint or "")


def test_the_endpoint_refuses_what_monitoring_refuses(env: Env) -> None:
    parent = f"projects/{PROJECT}"
    cond = m.AlertPolicy.Condition(
        display_name="c", condition_threshold={"filter": 'metric.type="x"', "duration": {"seconds": 60}}
    )
    with pytest.raises(exceptions.InvalidArgument, match="comparison is required"):
        env.policies.create_alert_policy(
            name=parent, alert_policy=m.AlertPolicy(display_name="p", conditions=[cond])
        )
    cond.condition_threshold.comparison = m.ComparisonType.COMPARISON_GT
    ghost = f"{parent}/notificationChannels/404"
    with pytest.raises(exceptions.InvalidArgument, match="Could not find notification channel"):
        env.policies.create_alert_policy(
            name=parent,
            alert_policy=m.AlertPolicy(display_name="p", conditions=[cond], notification_channels=[ghost]),
        )
    channel = env.channels.create_notification_channel(
        name=parent,
        notification_channel=m.NotificationChannel(
            type_="pubsub", labels={"topic": f"{parent}/topics/alerts"}
        ),
    )
    with pytest.raises(exceptions.InvalidArgument, match="expected projects/PROJECT/topics/TOPIC"):
        env.channels.create_notification_channel(
            name=parent,
            notification_channel=m.NotificationChannel(type_="pubsub", labels={"topic": "alerts"}),
        )
    env.policies.create_alert_policy(
        name=parent,
        alert_policy=m.AlertPolicy(display_name="p", conditions=[cond], notification_channels=[channel.name]),
    )
    with pytest.raises(exceptions.FailedPrecondition, match="referenced by 1 alerting"):
        env.channels.delete_notification_channel(name=channel.name)
    check = env.checks.create_uptime_check_config(
        parent=parent,
        uptime_check_config=m.UptimeCheckConfig(
            display_name="u",
            monitored_resource={
                "type": "uptime_url",
                "labels": {"host": "example.com", "project_id": PROJECT},
            },
            http_check={"path": "/health"},
            timeout={"seconds": 10},
        ),
    )
    check.period = {"seconds": 300}
    with pytest.raises(exceptions.InvalidArgument, match="period cannot be updated"):
        env.checks.update_uptime_check_config(
            request={"uptime_check_config": check, "update_mask": field_mask_pb2.FieldMask(paths=["period"])}
        )
    with pytest.raises(exceptions.InvalidArgument, match="filter is not supported"):
        list(env.policies.list_alert_policies(request={"name": parent, "filter": 'user_labels.a="b"'}))
    with pytest.raises(exceptions.NotFound):
        env.policies.get_alert_policy(name=f"{parent}/alertPolicies/1")


def test_state_survives_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "monitoring.json"
    with LocalMonitoring(state_file=state) as first, LocalPubsub() as pubsub:
        e = Env(tmp_path, first, pubsub)
        e.apply()
        names = sorted(p.name for p in first.alert_policies())
        e.channel.close()
        with LocalMonitoring(state_file=state) as second:
            e2 = Env(tmp_path, second, pubsub)
            assert sorted(p.name for p in second.alert_policies()) == names
            assert {a for _, _, a in actions(e2.plan())} == {"unchanged"}
            e2.channel.close()


# --- through the CLI ---------------------------------------------------------------------------


def fab(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FAB, *args], cwd=REPO, capture_output=True, text=True, timeout=180, env={**os.environ, **(env or {})}
    )


def test_fab_plan_and_apply(env: Env) -> None:
    inv = str(env.inventory_dir)
    proc = fab("monitoring.plan", "--inventory", inv, "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["applied"] is False and doc["counts"] == {"create": 11}
    assert env.api.mutations() == []
    proc = fab("monitoring.apply", "--inventory", inv, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["counts"] == {"create": 11}
    proc = fab("monitoring.apply", "--inventory", inv)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.rstrip().endswith("11 unchanged")
    assert (
        "alert policy\tcompose-fleet prod: instance health\tunchanged\tfleet-action=autoheal" in proc.stdout
    )


def test_fab_plan_reports_api_errors_as_exit_2(env: Env) -> None:
    env.api.inject(
        "ListNotificationChannels", grpc.StatusCode.PERMISSION_DENIED, times=1, message="no access"
    )
    proc = fab("monitoring.plan", "--inventory", str(env.inventory_dir))
    assert proc.returncode == 2
    assert "PERMISSION_DENIED no access" in proc.stderr and "roles/monitoring.editor" in proc.stderr


def recording_gcloud(tmp_path: Path) -> tuple[Path, Path]:
    """A `gcloud` on PATH that records its argv and succeeds (the real one needs an account)."""
    bindir, log = tmp_path / "bin", tmp_path / "gcloud.jsonl"
    bindir.mkdir()
    script = bindir / "gcloud"
    script.write_text(
        f"#!{sys.executable}\nimport json, sys\n"
        f"with open({str(log)!r}, 'a') as fh:\n    fh.write(json.dumps(sys.argv[1:]) + '\\n')\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return bindir, log


def test_functions_deploy_runs_exactly_what_dry_run_prints(env: Env, tmp_path: Path) -> None:
    env.data["monitoring"]["functions"]["secrets"] = {"FLEET_SLACK_WEBHOOK_URL": "slack-webhook:latest"}
    inv = str(env.inventory_dir)
    bindir, log = recording_gcloud(tmp_path)
    path = {"PATH": f"{bindir}:{os.environ['PATH']}"}

    refused = fab("functions.deploy", "--inventory", inv, env=path)
    assert refused.returncode == 2 and "run `fab monitoring.apply` first" in refused.stderr
    assert "channel compose-fleet prod: alerts" in refused.stderr and not log.exists()

    env.apply()
    dry = fab("functions.deploy", "--inventory", inv, "--dry-run", "--json", env=path)
    planned = [c["argv"] for c in json.loads(dry.stdout)["commands"]]
    proc = fab("functions.deploy", "--inventory", inv, env=path)
    assert proc.returncode == 0, proc.stderr
    ran = [["gcloud", *json.loads(line)] for line in log.read_text().splitlines()]
    assert ran == planned
    assert [line.removeprefix("+ ") for line in proc.stdout.splitlines() if line.startswith("+ ")] == [
        fd.GcloudCommand("", tuple(a)).shell() for a in planned
    ]


@pytest.mark.skipif(shutil.which("gcloud") is None, reason="the Google Cloud CLI is not installed")
def test_functions_deploy_with_real_gcloud_stops_at_the_first_failure(env: Env, tmp_path: Path) -> None:
    env.apply()
    inv = str(env.inventory_dir)
    config = {"CLOUDSDK_CONFIG": str(tmp_path / "gcloud-config"), "CLOUDSDK_CORE_DISABLE_PROMPTS": "1"}
    proc = fab("functions.deploy", "--inventory", inv, env=config)
    assert proc.returncode == 1
    plan = fd.deploy_plan(env.config())
    assert proc.stdout.splitlines() == [f"+ {plan.commands[0].shell()}"]
    assert "do not currently have an active account" in proc.stderr
    assert f"{plan.commands[0].label} failed with exit code 1; done before it: nothing" in proc.stderr


def test_cpu_policies_select_members_by_label_through_the_real_client(env: Env) -> None:
    """The CPU conditions `monitoring.apply` creates pass the endpoint's filter check as written, and
    a filter the real API would refuse (an unquoted label key with '-') is refused."""
    env.apply()
    for key in ("policy-scale-out-dify-mig", "policy-scale-in-dify-mig"):
        cpu = env.policy(key).conditions[0].condition_threshold
        assert cpu.filter == mon.cpu_members_filter("dify-mig")
        assert 'metadata.user_labels."fleet-mig"="dify-mig"' in cpu.filter
    bad = m.AlertPolicy.Condition(
        display_name="c",
        condition_threshold={
            "filter": f'metric.type="{mon.CPU_METRIC}" AND metadata.user_labels.fleet-mig="dify-mig"',
            "comparison": "COMPARISON_GT",
            "duration": {"seconds": 60},
        },
    )
    with pytest.raises(exceptions.InvalidArgument, match="filter is invalid"):
        env.policies.create_alert_policy(
            name=f"projects/{PROJECT}", alert_policy=m.AlertPolicy(display_name="p", conditions=[bad])
        )
