"""Autohealing without public IPs: the agent's health metric (custom.googleapis.com/fleet/app_health).

The request body the agent posts, written through the metrics stand-in's REST front with the agent's
own urllib client and read back with the real MetricServiceClient; the stand-in's write rules; the
alert policies `monitoring.apply` derives; the local monitor's evaluation from the series (drained
never opens an incident, silence does) and its incidents through the functions' own parser."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.api_core import exceptions as gexc
from google.cloud import monitoring_v3 as m

from fleet.agent import apis, flow
from fleet.agent.http import Http, Retry
from fleet.alerting import policies as mon
from fleet.commands import healthmetric as hm
from fleet.errors import FleetError, InventoryError
from fleet.scenarios.metrichealth import MetricHealth, metric_client, series_reader
from fleet.scenarios.monitor import (
    FAILING,
    STILL_FAILING,
    MonitoredInstance,
    MonitorSettings,
)
from standins.metrics_api import LocalMetrics, parse_filter
from tests.unit.monitor_rig import PROJECT, ZONE, MonitorRig, fn_incidents, fn_policy, policies, stat


def iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def body(iid: str, value: int, at: datetime, fleet: str = "local") -> dict[str, Any]:
    return hm.time_series_body(
        project=PROJECT, zone=ZONE, instance_id=iid, fleet=fleet, value=value, end_time=iso(at)
    )


@pytest.fixture
def metrics() -> Any:
    with LocalMetrics(rest_host="127.0.0.1") as api:
        yield api


# --------------------------------------------------------------------------- the body and the wire


def test_body_is_one_gauge_point_on_the_vms_gce_instance() -> None:
    doc = hm.time_series_body(
        project=PROJECT,
        zone=ZONE,
        instance_id="4711",
        fleet="prod",
        value=hm.DRAINED,
        end_time="2026-11-29T21:00:00Z",
    )
    (ts,) = doc["timeSeries"]
    assert ts["metric"] == {"type": "custom.googleapis.com/fleet/app_health", "labels": {"fleet": "prod"}}
    assert ts["resource"] == {
        "type": "gce_instance",
        "labels": {"project_id": PROJECT, "zone": ZONE, "instance_id": "4711"},
    }
    assert (ts["metricKind"], ts["valueType"]) == ("GAUGE", "INT64")
    assert ts["points"] == [{"interval": {"endTime": "2026-11-29T21:00:00Z"}, "value": {"int64Value": "2"}}]
    assert [hm.value_of(s) for s in ("ok", "failed", "drained", "none")] == [1, 0, 2, 3]
    with pytest.raises(ValueError, match="instance id"):
        hm.time_series_body(project=PROJECT, zone=ZONE, instance_id="vm-1", fleet="f", value=1, end_time="x")
    with pytest.raises(ValueError, match="unknown health state"):
        hm.value_of("sick")


def test_agent_client_writes_over_rest_and_the_real_client_reads_it_back(metrics: LocalMetrics) -> None:
    client = apis.Monitoring(Http(Retry(attempts=1)), lambda: "ya29.test", metrics.rest_url)
    now = datetime.now(UTC)
    client.write(PROJECT, body("111", hm.HEALTHY, now - timedelta(seconds=10)))
    client.write(PROJECT, body("111", hm.FAILING, now))
    client.write(PROJECT, body("222", hm.DRAINED, now))
    reader = metric_client(metrics.endpoint)
    found = {
        ts.resource.labels["instance_id"]: [p.value.int64_value for p in ts.points]
        for ts in reader.list_time_series(
            request={
                "name": f"projects/{PROJECT}",
                "filter": hm.list_filter("local"),
                "interval": {
                    "end_time": now + timedelta(seconds=1),
                    "start_time": now - timedelta(minutes=1),
                },
            }
        )
    }
    assert found == {"111": [0, 1], "222": [2]}, "newest point first, one series per VM"
    assert [c.bearer for c in metrics.calls("CreateTimeSeries")] == [True, True, True]
    # a second write inside 5 s is refused as Monitoring refuses it; the agent's error says where
    with pytest.raises(FleetError, match="more frequently") as err:
        client.write(PROJECT, body("111", hm.HEALTHY, now + timedelta(seconds=1)))
    assert "projects/local-project/timeSeries" in err.value.render()


def test_rest_front_wants_a_token_and_a_custom_metric(metrics: LocalMetrics) -> None:
    url = hm.create_url(metrics.rest_url, PROJECT)
    data = json.dumps(body("111", 1, datetime.now(UTC))).encode()
    req = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=5)
    assert err.value.code == 401
    bad = body("111", 1, datetime.now(UTC))
    bad["timeSeries"][0]["metric"]["type"] = "compute.googleapis.com/instance/uptime"
    req = urllib.request.Request(
        url, data=json.dumps(bad).encode(), method="POST", headers={"Authorization": "Bearer t"}
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=5)
    assert (
        err.value.code == 400 and "custom.googleapis.com" in json.loads(err.value.read())["error"]["message"]
    )


def test_grpc_front_keeps_the_apis_write_rules(metrics: LocalMetrics) -> None:
    client = metric_client(metrics.endpoint)
    now = datetime.now(UTC)

    def series(iid: str, at: datetime, value: Any = None, **resource: str) -> m.TimeSeries:
        return m.TimeSeries(
            metric={"type": hm.METRIC_TYPE, "labels": {"fleet": "x"}},
            resource={
                "type": "gce_instance",
                "labels": {"project_id": PROJECT, "zone": ZONE, "instance_id": iid, **resource},
            },
            points=[{"interval": {"end_time": at}, "value": value or {"int64_value": 1}}],
        )

    client.create_time_series(name=f"projects/{PROJECT}", time_series=[series("1", now)])
    cases = [
        ([series("1", now - timedelta(seconds=30))], "in order"),
        ([series("2", now), series("2", now)], "Duplicate TimeSeries"),
        ([series("3", now, {"double_value": 0.5})], "value type INT64"),
        ([series("4", now + timedelta(hours=1))], "5 minutes in the future"),
    ]
    for request, words in cases:
        with pytest.raises(gexc.InvalidArgument, match=words):
            client.create_time_series(name=f"projects/{PROJECT}", time_series=request)
    bad = m.TimeSeries(
        metric={"type": hm.METRIC_TYPE},
        resource={"type": "gce_instance", "labels": {"project_id": PROJECT}},
        points=[{"interval": {"end_time": now}, "value": {"int64_value": 1}}],
    )
    with pytest.raises(gexc.InvalidArgument, match="instance_id, zone"):
        client.create_time_series(name=f"projects/{PROJECT}", time_series=[bad])
    assert len(metrics.series(hm.METRIC_TYPE)) == 1, "a refused request stores nothing"
    assert parse_filter('metric.type = "a" AND resource.labels.zone = "z"') == [
        ("metric.type", "a"),
        ("resource.label.zone", "z"),
    ]
    with pytest.raises(gexc.InvalidArgument, match="Unsupported filter"):
        list(
            client.list_time_series(
                name=f"projects/{PROJECT}",
                filter='metric.type = starts_with("custom")',
                interval={"end_time": now},
            )
        )
    assert grpc is not None


# --------------------------------------------------------------------------- the agent's heartbeat


class Md:
    def __init__(self, on: str | None = "true") -> None:
        self.attrs = {hm.ENABLE_KEY: on} if on else {}
        self.guest: dict[str, str] = {}

    def attribute(self, key: str) -> str | None:
        return self.attrs.get(key)

    def instance_id(self) -> str:
        return "987654321"

    def put_guest(self, key: str, value: str) -> None:
        self.guest[key] = value


class Sink:
    def __init__(self) -> None:
        self.bodies: list[tuple[str, dict[str, Any]]] = []

    def write(self, project: str, body: Any) -> None:
        self.bodies.append((project, body))


def agent(md: Md, sink: Sink, clock: list[datetime]) -> flow.Agent:
    clients = flow.Clients(md, None, None, None, sink)  # type: ignore[arg-type]
    return flow.Agent(clients, log=flow.Log(open("/dev/null", "w")), clock=lambda: clock[0])


def config() -> flow.Config:
    return flow.Config(
        instance="vm-1",
        project=PROJECT,
        zone=ZONE,
        fleet="prod",
        store=flow.parse_store("gs://bucket/fleets/prod"),
        roles=("app",),
        beat="none",
        mig=None,
        host=flow.LocalHost.from_attributes("vm-1", {}),
    )


def test_heartbeat_writes_the_metric_when_on_at_most_every_5s() -> None:
    md, sink, clock = Md(), Sink(), [datetime(2026, 11, 29, 21, 0, tzinfo=UTC)]
    a = agent(md, sink, clock)
    assert a.write_metric(config(), "failed") is True
    clock[0] += timedelta(seconds=3)
    assert a.write_metric(config(), "ok") is False, "Monitoring takes one point per 5 s"
    clock[0] += timedelta(seconds=3)
    assert a.write_metric(config(), "drained") is True
    (p1, b1), (_, b2) = sink.bodies
    assert p1 == PROJECT
    assert b1["timeSeries"][0]["resource"]["labels"]["instance_id"] == "987654321"
    assert [b["timeSeries"][0]["points"][0]["value"]["int64Value"] for _, b in sink.bodies] == ["0", "2"]
    assert b2["timeSeries"][0]["points"][0]["interval"]["endTime"] == "2026-11-29T21:00:06.000Z"
    off = Sink()
    assert agent(Md(on=None), off, clock).write_metric(config(), "failed") is False
    assert off.bodies == [], "no metadata fleet-health-metric: nothing written"


def test_busy_marker_names_the_running_action_and_dies_with_its_process(tmp_path: Path) -> None:
    marker = str(tmp_path / "run" / "busy")
    assert flow.busy_action(marker) is None
    flow.mark_busy(marker, "boot")
    assert flow.busy_action(marker) == "boot"
    drained = {"layout": True, "release": "r1", "version": "1", "drained": True, "last": {"action": "deploy"}}
    assert flow.health_state({**drained, "agent": "boot"}) == "failed", "the agent's own drain"
    assert flow.health_state({**drained, "agent": None}) == "drained", "an operator's drain"
    Path(marker).write_text(json.dumps({"pid": 2**22 + 12345, "action": "apply"}))  # no such process
    assert flow.busy_action(marker) is None
    flow.clear_busy(marker)
    assert not Path(marker).exists()
    flow.clear_busy(marker)  # twice is fine


@pytest.mark.parametrize(
    ("found", "state"),
    [
        ({"layout": False, "release": None}, "none"),
        (
            {"layout": True, "release": "r1", "version": "1", "drained": True, "last": {"action": "rollout"}},
            "drained",
        ),
        (
            {
                "layout": True,
                "release": "r1",
                "version": "1",
                "drained": True,
                "last": {"action": "agent-boot", "result": "failed"},
            },
            "failed",
        ),
        (
            {
                "layout": True,
                "release": "r1",
                "version": "1",
                "drained": True,
                "last": {"action": "agent-boot", "result": "ok"},
            },
            "drained",
        ),
        (
            {
                "layout": True,
                "release": "r1",
                "version": "1",
                "drained": False,
                "health": {"code": 200, "version": "1"},
            },
            "ok",
        ),
        (
            {"layout": True, "release": "r1", "version": "1", "drained": False, "health": {"code": 502}},
            "failed",
        ),
    ],
)
def test_heartbeat_state_a_rollout_drain_is_not_a_failure_an_agents_failed_boot_is(
    found: dict[str, Any], state: str
) -> None:
    assert flow.health_state(found) == state


# --------------------------------------------------------------------------- the policy


def metric_config(**kw: Any) -> mon.MonitoringConfig:
    return mon.MonitoringConfig(
        fleet="prod",
        project=PROJECT,
        alerts_topic=f"projects/{PROJECT}/topics/fleet-alerts",
        events_topic=f"projects/{PROJECT}/topics/fleet-events",
        instance_health="agent-metric",
        health_duration=120,
        health_absent_for=300,
        escalate_after=300,
        **kw,
    )


def test_policy_is_threshold_below_1_and_absence_per_instance_labelled_autoheal() -> None:
    objects = {d.key: d for d in mon.desired_state(metric_config(), {})}
    assert not [d for d in objects.values() if d.kind == "uptime_check"], "no uptime check, no public IP"
    heal = objects["policy-instance-health"].message
    assert dict(heal.user_labels) == {
        "fleet-managed-by": "prod",
        "fleet-object": "policy-instance-health",
        "fleet-action": "autoheal",
    }
    threshold, absent = heal.conditions
    t = threshold.condition_threshold
    assert t.filter == (
        'metric.type="custom.googleapis.com/fleet/app_health" AND resource.type="gce_instance" '
        'AND metric.label.fleet="prod"'
    )
    assert (t.comparison, t.threshold_value, t.duration.total_seconds()) == (
        m.ComparisonType.COMPARISON_LT,
        1,
        120,
    )
    (agg,) = t.aggregations
    assert agg.per_series_aligner == m.Aggregation.Aligner.ALIGN_MAX
    assert agg.cross_series_reducer == m.Aggregation.Reducer.REDUCE_NONE, (
        "per instance: the incident names it"
    )
    assert (
        t.evaluation_missing_data
        == m.AlertPolicy.Condition.EvaluationMissingData.EVALUATION_MISSING_DATA_INACTIVE
    )
    assert (
        absent.condition_absent.filter == t.filter and absent.condition_absent.duration.total_seconds() == 300
    )
    esc = objects["policy-instance-health-escalation"].message
    assert esc.user_labels["fleet-action"] == "autoheal"
    assert esc.conditions[0].condition_threshold.duration.total_seconds() == 420
    assert esc.conditions[1].condition_absent.duration.total_seconds() == 600


def test_auto_picks_the_metric_without_per_instance_checks_and_conflicts_are_refused(tmp_path: Path) -> None:
    from tests.unit.test_monitoring import base, config_of

    data, hosts = base()  # gce.migs set; app-1 has uptime.per_instance on
    assert config_of(tmp_path / "a", data, hosts).instance_health == "uptime"
    data["monitoring"]["instance_health"] = {"source": "agent-metric"}
    with pytest.raises(InventoryError, match=r"agent-metric but hosts have uptime\.per_instance"):
        config_of(tmp_path / "b", data, hosts)
    data["monitoring"]["uptime"] = {"per_instance": False}
    del data["monitoring"]["instance_health"]
    cfg = config_of(tmp_path / "c", data, hosts)
    assert (cfg.instance_health, cfg.instance_checks) == ("agent-metric", ())
    assert (cfg.health_duration, cfg.health_absent_for) == (120, 300), "the documented defaults"
    data["monitoring"]["instance_health"] = {"source": "uptime"}
    with pytest.raises(InventoryError, match=r"no host has uptime\.per_instance"):
        config_of(tmp_path / "d", data, hosts)
    data["monitoring"]["instance_health"] = {"duration": 90}
    with pytest.raises(InventoryError, match="multiple"):
        config_of(tmp_path / "e", data, hosts)


# --------------------------------------------------------------------------- the local monitor


class Rig(MonitorRig):
    """The monitor over series in the stand-in (written as the agents write them), the MIG as data."""

    def __init__(self, metrics: LocalMetrics) -> None:
        self.metrics = metrics
        self.member = MonitoredInstance("local-2", "222", "RUNNING", "NONE")
        now = datetime.now(UTC).timestamp() - 120
        self.health = MetricHealth(
            series_reader(metric_client(metrics.endpoint), PROJECT, "local", clock=lambda: self.now),
            absent_after=6,
            clock=lambda: self.now,
        )
        super().__init__(
            MonitorSettings(fail_after=2, escalate_after=4, pass_after=2, renotify=0),
            policies=policies([("local-2", "222")], 1, 2, instance_health="agent-metric"),
            members=lambda: [self.member],
            lb_stat=lambda: stat({"local-2": ("UP", "")}, 0),
            now=now,
            health=self.health,
        )

    def rounds(self, n: int, value: int | None) -> list[dict[str, Any]]:
        """n rounds 1 s apart; the agent writes `value` before each (None: it is silent)."""
        return self.run(n, before=None if value is None else lambda: self.write(value))

    def write(self, value: int) -> None:
        at = datetime.fromtimestamp(self.now, UTC)
        self.metrics.create(
            m.CreateTimeSeriesRequest(
                name=f"projects/{PROJECT}",
                time_series=[
                    m.TimeSeries(
                        metric={"type": hm.METRIC_TYPE, "labels": {"fleet": "local"}},
                        resource={
                            "type": "gce_instance",
                            "labels": {
                                "project_id": PROJECT,
                                "zone": ZONE,
                                "instance_id": self.member.instance_id,
                            },
                        },
                        points=[{"interval": {"end_time": at}, "value": {"int64_value": value}}],
                    )
                ],
            )
        )


def test_monitor_heals_on_failing_never_on_drained_and_notices_silence() -> None:
    with LocalMetrics(min_interval=1.0) as metrics:
        rig = Rig(metrics)
        assert rig.rounds(2, None) == [], "never reported: no data, no incident"
        assert rig.rounds(3, hm.HEALTHY) == []
        assert rig.rounds(6, hm.DRAINED) == [], "a rollout's drain never opens an incident"
        assert rig.rounds(1, hm.FAILING) + rig.rounds(3, None) == [], "one bad point is one check, not four"
        assert rig.rounds(1, hm.HEALTHY) == []
        opened = rig.rounds(2, hm.FAILING)
        assert [(i["condition_name"], i["state"]) for i in opened] == [
            ("instance unhealthy (agent metric)", "open")
        ]
        inc = opened[0]
        assert inc["metric"]["type"] == hm.METRIC_TYPE
        assert inc["policy_user_labels"]["fleet-action"] == "autoheal"
        assert "agent reports failed" in inc["summary"]
        target = fn_policy.heal_target(
            fn_incidents.parse_incident(json.dumps({"version": "1.2", "incident": inc}).encode())
        )
        assert isinstance(target, fn_policy.InstanceTarget)
        assert (target.project, target.zone, target.instance_id, target.name) == (
            PROJECT,
            ZONE,
            "222",
            "local-2",
        )
        escalated = rig.rounds(2, hm.FAILING)
        assert [(i["condition_name"], i["state"]) for i in escalated] == [
            ("instance unhealthy (agent metric) still", "open")
        ]
        closed = rig.rounds(2, hm.HEALTHY)
        assert sorted(i["state"] for i in closed) == ["closed", "closed"]
        # the agent goes silent (the VM died): after absent_after seconds every round is a failure
        silent = rig.rounds(8, None)
        assert [(i["condition_name"], i["state"]) for i in silent] == [
            ("instance unhealthy (agent metric)", "open")
        ]
        assert "stopped reporting" in silent[0]["summary"]
        assert rig.health.why["local-2"].startswith("stopped reporting")
        assert {FAILING, STILL_FAILING} >= {e.condition for e in rig.monitor.timeline("incident")}
