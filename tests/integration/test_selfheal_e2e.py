"""Self-healing and scaling end to end on a local fleet of its own (2 instances, release 1.0.0).

Real parts only: instances are containers with their own Docker engine, deployed over SSH by `fab`;
the monitor judges them from the health metric their agents write (as a fleet without public IPs)
and reads haproxy's counters; incidents go through the real
PublisherClient to the local Pub/Sub, which pushes binary-mode CloudEvents to functions-framework
servers running functions/; those call the fleet's Compute endpoint with the real compute client,
which resets, recreates, adds and removes containers; notify posts to the webhook sink.

The fleet is this module's own (names, ports and LB apart from the default fleet), so breaking and
resizing it never disturbs other tests; it is removed at the end (FLEET_LOCAL_KEEP=1 keeps it).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fleet.commands import healthmetric
from fleet.local import compute_endpoint
from fleet.local.config import LocalConfig
from fleet.local.instances import LocalFleet
from fleet.local.lb import LoadBalancer
from fleet.local.progress import Progress
from fleet.local.vmservices import metrics_endpoint
from fleet.scenarios.alertpath import AlertPath, AlertPathSettings
from fleet.scenarios.metrichealth import metric_client
from fleet.scenarios.monitor import FAILING, STILL_FAILING, MonitorSettings
from fleet.scenarios.selfheal import health, run_heal, run_scale, wait_stable
from functions import fleet_contract as contract

pytestmark = [pytest.mark.localfleet, pytest.mark.loadproof, pytest.mark.functions]

REPO = Path(__file__).resolve().parents[2]
CONFIG = LocalConfig(
    name="selfheal",
    container_prefix="fleet-sh",
    host_prefix="sh",
    network="fleet-sh",
    subnet="10.222.0.0/24",
    ssh_base=3100,
    http_base=9100,
    lb_port=18580,
)
INSTANCES = 2
VERSION = "1.0.0"
# requests/s per serving instance. The high load stays above LOAD_HIGH after the scale-out too: the
# MIG's max (INSTANCES + 1) is what stops it, as in production, not a finely tuned rate.
LOAD_HIGH, LOAD_LOW = 3.0, 1.5
HIGH_RATE = 20.0
LOW_RATE = 2.0  # 0.7/s each on 3 instances: the scale-in condition holds while requests still flow
# The heal ladder in agent-metric points (one every ~6 s: the agents' 3 s heartbeat, at most one point
# per 5 s). Three failing points open the first incident (the monitor's default: one bad sample is
# not an incident); the second opens at five. The reset comes ~1 s after the first incident, and a
# member under a MIG action has no data, so the points that escalate are written after the reset's
# reboot: "still failing" is proven after the reset without the default eight points (~18 s more).
FAIL_AFTER, ESCALATE_AFTER = 3, 5


def fab(*args: str) -> None:
    fab_bin = Path(sys.executable).with_name("fab")
    proc = subprocess.run(
        [str(fab_bin), *args, "--inventory", str(CONFIG.inventory_dir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, f"fab {' '.join(args)}: {proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


@pytest.fixture(scope="module")
def fleet() -> Iterator[LocalFleet]:
    fleet = LocalFleet(CONFIG, progress=Progress(rich=False))
    try:
        fleet.up(INSTANCES)
        fab("bootstrap")
        fab("deploy", "--version", VERSION)
        yield fleet
    finally:
        if os.environ.get("FLEET_LOCAL_KEEP") != "1":
            fleet.down()


@pytest.fixture(scope="module")
def path(fleet: LocalFleet) -> Iterator[AlertPath]:
    # instance health from the agents' metric, as in production without public IPs (the probe path,
    # `health_source="probe"`, is covered against a real HTTP /health in tests/unit/test_local_monitor.py)
    settings = AlertPathSettings(
        monitor=MonitorSettings(
            load_high=LOAD_HIGH, load_low=LOAD_LOW, fail_after=FAIL_AFTER, escalate_after=ESCALATE_AFTER
        ),
        health_source="metric",
    )
    with AlertPath(CONFIG, settings) as alert_path:
        wait_stable(alert_path)
        yield alert_path


def test_broken_api_is_reset_then_recreated_and_rejoins_the_lb_on_the_current_release(
    path: AlertPath, fleet: LocalFleet
) -> None:
    victim = f"{CONFIG.host_prefix}-{INSTANCES}"
    report = run_heal(path, fleet, victim)
    print("\nheal timings (s from the break):")
    for label, seconds in report.timings():
        print(f"  {label:<45} {'-' if seconds is None else f'{seconds:.1f}'}")

    # the ladder: the first incident reset it, the second (still failing after the reset) recreated it
    assert report.decisions == [("reset", "first-step"), ("recreate", "escalate")]
    assert [c for c in (FAILING, STILL_FAILING) if report.opened(c)] == [FAILING, STILL_FAILING]
    restarted, recreated = report.first("RESTARTING"), report.first("RECREATING")
    assert restarted is not None and recreated is not None and restarted < recreated
    assert report.new_id and report.new_id != report.old_id, "a recreate makes a new VM"

    # the new VM runs the current release (the same release id the broken one ran) and is UP
    assert report.version == VERSION
    assert report.release == report.release_before
    lb = LoadBalancer(CONFIG)
    server = lb.servers()[victim]
    assert server.status == "UP"
    assert health(server.address) == (200, VERSION)
    assert "DOWN" in [status for _, status in report.lb], "the LB took it out of rotation while broken"

    # the incidents: Monitoring-shaped, labelled for autoheal, about the broken VM, now closed
    assert len(report.incidents) == 2
    for incident in report.incidents:
        assert incident.ended_at is not None and incident.ended_at >= report.healthy_at - 5
        assert incident.policy.user_labels[contract.POLICY_ACTION_LABEL] == contract.POLICY_ACTION_HEAL
        assert incident.resource_labels == {
            "project_id": CONFIG.project,
            "zone": CONFIG.zone,
            "instance_id": report.old_id,
        }

    # the incidents came from the VMs' own health metric (nothing probed them from outside), and
    # every member wrote its series to the Monitoring stand-in through timeSeries.create
    assert {i.metric_type for i in report.incidents} == {healthmetric.METRIC_TYPE}
    endpoint = metrics_endpoint(compute_endpoint.state_dir(CONFIG))
    assert endpoint is not None
    reporters = {
        ts.resource.labels["instance_id"]
        for ts in metric_client(endpoint).list_time_series(
            name=f"projects/{CONFIG.project}",
            filter=healthmetric.list_filter(CONFIG.name),
            interval={"end_time": datetime.now(UTC), "start_time": datetime.now(UTC) - timedelta(minutes=10)},
        )
    }
    assert {report.old_id, report.new_id} <= reporters

    # every alert went out as a CloudEvent the functions accepted
    alerts = path.pubsub.deliveries(path.alerts_topic) if path.pubsub else []
    assert alerts and all(d.delivered for d in alerts if d.finished)

    # notify posted open and closed of both incidents, and the heal actions, to every webhook
    ids = {i.incident_id for i in report.incidents}
    posted = {
        (m.body["data"]["incident_id"], m.body["data"]["state"])
        for m in path.notifications()
        if m.body.get("kind") == "incident"
    }
    assert {(i, s) for i in ids for s in ("open", "closed")} <= posted
    heal_events = [e for e in path.fleet_events() if e.kind == "heal" and e.incident_id in ids]
    assert sorted(e.action for e in heal_events) == ["recreate", "reset"]
    titles = [str(m.body.get("text", "")) for m in path.sink.messages("slack")] if path.sink else []
    assert any("RESOLVED" in t for t in titles) and any("HEAL" in t for t in titles)


def test_load_scales_out_then_in_without_a_failed_request(path: AlertPath, fleet: LocalFleet) -> None:
    wait_stable(path)
    report = run_scale(path, fleet, high_rate=HIGH_RATE, low_rate=LOW_RATE)
    print("\nscale timings (s):")
    for label, seconds in report.timings():
        print(f"  {label:<45} {'-' if seconds is None else f'{seconds:.1f}'}")
    print(f"  high load: {report.high_load.summary() if report.high_load else '-'}")
    print(f"  light load: {report.low_load.summary() if report.low_load else '-'}")

    # scale out: one more member, deployed with the current release, joined the LB healthy
    assert report.added and report.size_before == INSTANCES
    assert report.added_version == VERSION
    assert report.added_release == report.peer_release
    assert report.high_load is not None and report.high_load.failed == 0, report.high_load.first_failures
    assert report.high_load.servers.get(report.added, 0) > 0, "the new member served requests"

    # scale in: the newest member left the LB, then the MIG; not one request failed meanwhile
    assert report.removed == report.added
    assert report.size_after == INSTANCES
    assert report.low_load is not None and report.low_load.failed == 0, report.low_load.first_failures
    assert report.low_load.servers.get(report.removed, 0) > 0, "it was serving until it was drained"
    assert report.drained_at <= report.gone_at
    assert report.removed not in LoadBalancer(CONFIG).servers()

    scale_events = [e for e in path.fleet_events() if e.kind == "scale" and e.action == "resize"]
    assert len(scale_events) >= 2
    wait_stable(path)


def test_rollout_events_on_the_events_topic_reach_the_webhooks(path: AlertPath) -> None:
    event = contract.FleetEvent(
        kind="rollout", action="rollout", result="done", fleet=CONFIG.name, rollout_id="r-e2e-1", detail="3/3"
    )
    path.publish_event(event)
    assert path.sink is not None
    key = f"event|{event.event_id}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(m.body.get("key") == key for m in path.notifications()):
        time.sleep(0.2)
    (posted,) = [m for m in path.notifications() if m.body.get("key") == key]
    assert posted.body["title"] == f"[ROLLOUT DONE] rollout {CONFIG.name}"
    chat = [m for m in path.sink.messages("chat") if "r-e2e-1" in str(m.body.get("text"))]
    assert chat and chat[0].body["thread"]["threadKey"] == "rollout-r-e2e-1"
