"""The local fleet's Compute endpoint, driven only by the real google-cloud-compute client (through
fleet/gcp/compute.py and the Cloud Functions' functions/gce.py): its MIG IS the fleet's containers.

A fleet of its own (so the session fleet other modules use is never resized or recreated) comes up
with its endpoint, and is deployed through its MIG inventory (IAP stand-in, keys from guest
attributes). Its stack logs with Docker's gcplogs driver to the fleet's local Cloud Logging. Then,
in file order: the endpoint's view matches Docker's; a container's line is found in Cloud Logging by
instance, service and release; labels and metadata
survive an endpoint restart; autoheal reads the rollout mark and otherwise resets for real; a
resize up and a recreate (at once, to keep the test short) come back deployed to the fleet's
release, and the recreated VM's new host key is followed through guest attributes while a stale pin
is refused; resize down deletes the newest. With autohealing on (after the first deploy), the MIG
applies its policy on the liveness check: a drain never triggers a recreate, a dead nginx does.
The fleet runs from what `infra.apply` created at bring-up (issue 14): the MIG's and each member's
template is the one apply made, a second apply changes nothing, and a patched backend service reaches
haproxy (reloaded, members kept) until apply puts the inventory's settings back.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests
import yaml
from google.cloud.logging_v2.services.logging_service_v2 import LoggingServiceV2Client
from google.cloud.logging_v2.services.logging_service_v2.transports import LoggingServiceV2GrpcTransport

from fleet.errors import FleetError
from fleet.gcp.compute import Compute, ComputeError, ManagedInstance, PreconditionFailed, natural_key
from fleet.local import compute_docker, compute_endpoint, infrasetup, vmservices
from fleet.local.config import LocalConfig
from fleet.local.engine import ensure_engine
from fleet.local.instances import LocalFleet
from fleet.local.progress import Progress
from fleet.rollout.lock import FleetLock
from fleet.scenarios.loadgen import LoadGen
from functions import fleet_contract as contract
from functions.fleet_contract import ROLLOUT_LABEL
from tests.fixtures.sshd import fab

pytestmark = [pytest.mark.localfleet, pytest.mark.loadproof]

CFG = LocalConfig(
    name="gcemig",
    container_prefix="fleet-gcemig",
    host_prefix="gcemig",
    network="fleet-gcemig",
    subnet="10.219.0.0/24",
    ssh_base=2900,
    http_base=8900,
    lb_port=18380,
    log_driver="gcplogs",  # the stack logs to the fleet's local Cloud Logging, as on GCE
    # the production default affinity, and the MIG's autohealing with the local liveness settings
    # (nginx's own /nginx-health every 5 s, recreated after 6 failures) and an initial delay of 120 s:
    # a VM created by a test is judged only 2 minutes after it booted. The longest a test leaves a VM
    # failing on purpose (the failed boot of the secret test, until its reset) is under a minute; a
    # longer delay only made the last test wait for the VM the resize test recreated (`judged`)
    lb={"session_affinity": "CLIENT_IP", "liveness": {"initial_delay": 120}},
    autohealing=True,
)
REF = contract.MigRef.make(CFG.project, CFG.zone, compute_endpoint.mig_name(CFG))
VERSION = "1.0.0"
FUNCTIONS_DIR = Path(__file__).resolve().parents[2] / "functions"


@pytest.fixture(scope="module")
def fleet() -> Iterator[LocalFleet]:
    """Two instances, deployed to 1.0.0 through the MIG inventory; removed at the end.

    Autohealing is turned on once the fleet serves (the endpoint restarted with it), as an operator
    attaches the policy to a MIG whose VMs serve: before the first deploy nothing answers
    /nginx-health, and a slow first deploy would see its VMs recreated under it."""
    fleet = LocalFleet(CFG, progress=Progress(rich=False))
    ensure_engine(CFG)  # down() needs a daemon to ask (run alone, no earlier test started one)
    fleet.down()  # leftovers of an interrupted run
    try:
        LocalFleet(dataclasses.replace(CFG, autohealing=False), progress=Progress(rich=False)).up(2)
        mig_inv = str(fleet.inventory_dir / "mig")
        r = fab("bootstrap", "--inventory", mig_inv, "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        r = fab("deploy", "--inventory", mig_inv, "--version", VERSION, "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        url = compute_endpoint.endpoint_url(CFG)
        # infra.apply again, now with the policy: the MIG is patched (same endpoint URL)
        assert fleet.start_compute() == url
        yield fleet
    finally:
        if os.environ.get("FLEET_LOCAL_KEEP") != "1":
            fleet.down()


@pytest.fixture
def compute(fleet: LocalFleet) -> Compute:
    url = compute_endpoint.endpoint_url(fleet.config)
    assert url is not None
    return Compute(url, op_timeout=60)


def mig_inv(fleet: LocalFleet) -> str:
    return str(fleet.inventory_dir / "mig")


def exec_json(fleet: LocalFleet, cmd: str, hosts: str | None = None) -> dict[str, dict[str, Any]]:
    args = ["exec", "--inventory", mig_inv(fleet), "--cmd", cmd, "--json"]
    if hosts:
        args += ["--hosts", hosts]
    r = fab(*args)
    try:
        return {x["host"]: x for x in json.loads(r.stdout)["results"]}
    except ValueError:
        pytest.fail(f"fab exec: {r.stdout[-1000:]} {r.stderr[-1000:]}")


def host_key(fleet: LocalFleet, name: str) -> str:
    """The key as the instance itself has it (docker exec: the console, not SSH)."""
    return fleet.exec(name, ["cat", "/etc/ssh/ssh_host_ed25519_key.pub"]).stdout.split()[1]


def guest_key(compute: Compute, name: str) -> str:
    items = compute.guest_attributes(CFG.project, CFG.zone, name, "hostkeys/")
    return {key: value for ns, key, value in items if ns == "hostkeys"}["ssh-ed25519"]


def watch(
    compute: Compute, until: Callable[[list[ManagedInstance]], bool], timeout: float = 150
) -> set[tuple[str, str, str]]:
    """Poll the MIG until `until(members)` and the MIG is stable; every (name, status, action) seen."""
    seen: set[tuple[str, str, str]] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        members = compute.mig_members(REF)
        seen |= {(m.name, m.status, m.current_action) for m in members}
        if until(members) and compute.mig(REF).status.is_stable:
            return seen
        time.sleep(0.2)
    pytest.fail(f"MIG did not settle in {timeout}s; seen {sorted(seen)}")


def test_the_endpoint_is_the_fleet(fleet: LocalFleet, compute: Compute) -> None:
    defaults = yaml.safe_load((fleet.inventory_dir / "defaults.yaml").read_text())["data"]["gce"]
    assert defaults["api_endpoint"] == compute.endpoint
    assert defaults["migs"] == [{"project": REF.project, "zone": REF.location, "name": REF.name}]
    docker = {r.name: r for r in fleet.instances()}
    members = compute.mig_members(REF)
    assert [m.name for m in members] == sorted(docker)
    for m in members:
        rec = docker[m.name]
        assert (m.id, m.internal_ip, m.status, m.current_action) == (
            rec.instance_id,
            rec.ip,
            "RUNNING",
            "NONE",
        )
        assert guest_key(compute, m.name) == host_key(fleet, m.name)
    igm = compute.mig(REF)
    assert igm.target_size == 2 and igm.status.is_stable
    with pytest.raises(ComputeError, match="not found"):
        compute.instance(CFG.project, CFG.zone, "gcemig-99")
    with pytest.raises(ComputeError, match="not found"):
        compute.instance(CFG.project, "europe-west1-c", members[0].name)  # another zone


def logging_client(fleet: LocalFleet) -> LoggingServiceV2Client:
    """The real GAPIC client on the sink the VMs' gcplogs driver writes to (TLS, the fleet's CA)."""
    tls = vmservices.logging_tls(fleet.config)
    creds = grpc.ssl_channel_credentials(root_certificates=tls.ca_cert.read_bytes())
    channel = grpc.secure_channel(
        f"{fleet.config.gateway}:{vmservices.LOGGING_PORT}",
        creds,
        options=[("grpc.ssl_target_name_override", vmservices.LOGGING_HOST)],
    )
    return LoggingServiceV2Client(transport=LoggingServiceV2GrpcTransport(channel=channel))


def test_container_logs_reach_cloud_logging_by_instance_service_and_release(
    fleet: LocalFleet, compute: Compute
) -> None:
    """Docker's gcplogs driver in each VM writes to the local Cloud Logging; a service's line is
    found by instance id, service and release, and `docker logs` still reads the rotated local cache."""
    member = compute.mig_members(REF)[0]
    release = fleet.exec(member.name, ["readlink", "/opt/fleet/dify/current"]).stdout
    release_id = release.strip().rstrip("/").rsplit("/", 1)[-1]
    assert release_id
    probe = uuid.uuid4().hex
    port = {i.name: i.http_port for i in fleet.instances()}[member.name]
    requests.get(f"http://127.0.0.1:{port}/console/api/ping?probe={probe}", timeout=10)
    query = " AND ".join(
        [
            f'logName="projects/{CFG.project}/logs/gcplogs-docker-driver"',
            'resource.type="gce_instance"',
            f'resource.labels.instance_id="{member.id}"',
            f'resource.labels.zone="{CFG.zone}"',
            'jsonPayload.container.metadata."com.docker.compose.service"="nginx"',
            f'jsonPayload.container.metadata."com.docker.compose.project.working_dir":"/releases/{release_id}"',
        ]
    )
    client = logging_client(fleet)
    found: list[Any] = []
    deadline = time.monotonic() + 60  # the driver sends in batches (about one a second)
    while not found and time.monotonic() < deadline:
        entries = client.list_log_entries(
            resource_names=[f"projects/{CFG.project}"], filter=f'{query} AND jsonPayload.message:"{probe}"'
        )
        found = list(entries)
        if not found:
            time.sleep(0.5)
    assert len(found) == 1, f"no nginx line with {probe} from {member.name} in the local Cloud Logging"
    payload = found[0].json_payload
    assert payload["instance"]["name"] == member.name and payload["instance"]["id"] == member.id
    assert payload["container"]["metadata"]["com.docker.compose.project"] == "dify"
    # the other instance's lines carry its own id, never this one's
    other = next(m for m in compute.mig_members(REF) if m.name != member.name)
    theirs = client.list_log_entries(
        request={
            "resource_names": [f"projects/{CFG.project}"],
            "filter": f'jsonPayload.instance.name="{other.name}"',
            "page_size": 50,
        }
    )
    first_page = list(next(iter(theirs.pages)).entries)
    assert first_page and {e.resource.labels["instance_id"] for e in first_page} == {other.id}
    # rotation stays on the VM's disk: gcplogs with a bounded local cache that `docker logs` reads
    inspect = fleet.exec(
        member.name,
        ["docker", "inspect", "--format", "{{json .HostConfig.LogConfig}}", "dify-nginx-1"],
    )
    log_config = json.loads(inspect.stdout)
    assert log_config["Type"] == "gcplogs"
    assert {k: log_config["Config"][k] for k in ("cache-max-size", "cache-max-file")} == {
        "cache-max-size": "50m",
        "cache-max-file": "5",
    }
    logs = fleet.exec(member.name, ["docker", "logs", "--tail", "200", "dify-nginx-1"])
    assert probe in logs.stdout + logs.stderr


def test_labels_and_metadata_survive_an_endpoint_restart(fleet: LocalFleet, compute: Compute) -> None:
    name = compute.mig_members(REF)[0].name
    # every member starts with the template's labels (infra's): the fleet, and the MIG's name (what
    # CPU policies select by)
    assert dict(compute.instance(CFG.project, CFG.zone, name).labels) == {
        "fleet": CFG.name,
        "fleet-mig": REF.name,
    }
    compute.set_label(CFG.project, CFG.zone, name, "team", "ops")
    before = compute.instance(CFG.project, CFG.zone, name)
    compute.set_label(CFG.project, CFG.zone, name, "fleet-rollout", "r1")
    t = compute.types()
    stale = t.InstancesSetLabelsRequest(labels={"x": "y"}, label_fingerprint=before.label_fingerprint)
    with pytest.raises(PreconditionFailed):
        compute._call(
            lambda: compute.client("InstancesClient").set_labels_unary(
                project=CFG.project, zone=CFG.zone, instance=name, instances_set_labels_request_resource=stale
            ),
            name,
        )
    _, fp = compute.project_metadata(CFG.project)
    compute.set_project_metadata(CFG.project, {"compose-fleet-lock": "held"}, fp)

    compute_endpoint.stop_endpoint(fleet.config, forget=False)
    assert compute_endpoint.ensure_endpoint(fleet.config) == compute.endpoint  # same port, same URL
    assert dict(compute.instance(CFG.project, CFG.zone, name).labels) == {
        "fleet": CFG.name,
        "fleet-mig": REF.name,
        "team": "ops",
        "fleet-rollout": "r1",
    }
    assert compute.project_metadata(CFG.project)[0] == {"compose-fleet-lock": "held"}
    compute.set_label(CFG.project, CFG.zone, name, "fleet-rollout", None)
    compute.set_label(CFG.project, CFG.zone, name, "team", None)
    _, fp = compute.project_metadata(CFG.project)
    compute.set_project_metadata(CFG.project, {}, fp)


def test_inventory_from_the_local_mig(fleet: LocalFleet, compute: Compute) -> None:
    r = fab("hosts", "--inventory", mig_inv(fleet), "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["hosts"]
    members = {m.name: m for m in compute.mig_members(REF)}
    assert [row["host"] for row in rows] == list(members)
    for row in rows:
        m = members[row["host"]]
        assert row["host_key_name"] == f"compute.{m.id}" and row["proxy"] == "iap"
        assert (row["status"], row["current_action"], row["skip_reason"]) == ("RUNNING", "NONE", None)
    assert [row["roles"] for row in rows] == [["app", "beat"], ["app"]]
    assert (fleet.inventory_dir / "mig" / "known_hosts").read_text().strip().startswith("#")  # no pins
    results = exec_json(fleet, "readlink /opt/fleet/dify/current")
    assert {h: x["status"] for h, x in results.items()} == dict.fromkeys(members, "ok")


def autoheal(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    compute: Compute,
    member: ManagedInstance,
) -> dict[str, Any]:
    """Deliver one Monitoring incident about `member` to the real autoheal function; its decision."""
    import functions_framework

    from standins.pubsub_api import binary_cloudevent

    if str(FUNCTIONS_DIR) not in sys.path:
        sys.path.append(str(FUNCTIONS_DIR))
    env = {
        "FLEET_NAME": CFG.name,
        "FLEET_MIGS": str(REF),
        "FLEET_HEAL_INITIAL_DELAY": "0",
        "FLEET_HEAL_SETTLE": "60",
        "FLEET_HEAL_WINDOW": "600",
        "COMPUTE_API_ENDPOINT": compute.endpoint or "",
        "FLEET_API_TIMEOUT": "30",
        "FUNCTION_TARGET": "autoheal",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in (
        "FLEET_EVENTS_TOPIC",
        "FLEET_SLACK_WEBHOOK_URL",
        "FLEET_CHAT_WEBHOOK_URL",
        "FLEET_GENERIC_WEBHOOK_URL",
    ):
        monkeypatch.delenv(key, raising=False)
    app = functions_framework.create_app(target="autoheal", source=str(FUNCTIONS_DIR / "main.py"))
    incident = {
        "version": "1.2",
        "incident": {
            "incident_id": f"0.{uuid.uuid4().hex}",
            "scoping_project_id": CFG.project,
            "started_at": int(time.time()),
            "ended_at": None,
            "state": "open",
            "resource_id": member.id,
            "resource_name": member.name,
            "resource": {
                "type": "gce_instance",
                "labels": {"project_id": CFG.project, "zone": CFG.zone, "instance_id": member.id},
            },
            "metric": {"type": "compute.googleapis.com/instance/uptime_check", "labels": {}},
            "metadata": {"system_labels": {}, "user_labels": {}},
            "policy_name": "instance-unhealthy",
            "policy_user_labels": {"fleet-action": "autoheal"},
            "condition": {"name": "c", "displayName": "health failing"},
            "condition_name": "health failing",
            "threshold_value": "1",
            "observed_value": "0",
            "summary": "Health check failing.",
        },
    }
    capsys.readouterr()
    headers, body = binary_cloudevent(
        "projects/local-project/topics/alerts", uuid.uuid4().hex, json.dumps(incident).encode(), None
    )
    response = app.test_client().post("/", headers=headers, data=body)
    assert response.status_code == 200
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    decisions = [r for r in records if "decision" in r]
    assert decisions, records
    return decisions[-1]


def test_autoheal_respects_the_rollout_mark_and_resets_for_real(
    fleet: LocalFleet, compute: Compute, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    member = compute.mig_members(REF)[1]
    started = fleet.exec(member.name, ["cat", "/proc/1/stat"]).stdout.split()[21]  # PID 1's start time
    key = host_key(fleet, member.name)
    calls_url = f"{compute.endpoint}/_local/calls"

    # a live rollout: it holds the fleet lock and has marked the member
    fleet_lock = FleetLock(compute, CFG.project, CFG.name)
    held = fleet_lock.acquire("ci", "gce test rollout", "r-gce-test", ttl=300)
    compute.set_label(CFG.project, CFG.zone, member.name, ROLLOUT_LABEL, "r-gce-test")  # the rollout's mark
    requests.delete(calls_url, timeout=5)
    try:
        decision = autoheal(monkeypatch, capsys, compute, member)
    finally:
        fleet_lock.release(held)
    assert decision["reason"] == "under-rollout", decision
    methods = {c["method"] for c in requests.get(calls_url, timeout=5).json()["calls"]}
    assert "instanceGroupManagers.listManagedInstances" in methods  # it looked...
    assert not methods & {"instances.reset", "instances.setLabels", "instanceGroupManagers.recreateInstances"}

    compute.set_label(CFG.project, CFG.zone, member.name, ROLLOUT_LABEL, None)
    decision = autoheal(monkeypatch, capsys, compute, member)
    assert decision["reason"] == "first-step", decision
    # the reset's operation as Compute reports it (RUNNING until the reboot is done), and the member's
    # currentAction meanwhile
    statuses: list[str] = []
    actions: set[str] = set()
    zone_ops = compute.client("ZoneOperationsClient")
    deadline = time.monotonic() + 90
    while not statuses or statuses[-1] != "DONE":
        actions |= {m.current_action for m in compute.mig_members(REF) if m.name == member.name}
        op = zone_ops.get(project=CFG.project, zone=CFG.zone, operation=decision["operation"])
        statuses.append(op.status.name)
        assert time.monotonic() < deadline, statuses
        time.sleep(0.2)
    assert "RUNNING" in statuses and "RESTARTING" in actions and not op.error.errors
    watch(compute, lambda ms: all(m.current_action == "NONE" for m in ms), timeout=30)
    after = compute.instance(CFG.project, CFG.zone, member.name)
    assert str(after.id) == member.id  # a reset is a reboot of the same VM...
    assert host_key(fleet, member.name) == key  # ...same disk, same host key
    assert fleet.exec(member.name, ["cat", "/proc/1/stat"]).stdout.split()[21] != started  # it did reboot
    resets = [
        c for c in requests.get(calls_url, timeout=5).json()["calls"] if c["method"] == "instances.reset"
    ]
    assert len(resets) == 1 and resets[0]["request_id"]  # exactly one, with the function's requestId
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:  # the stack comes back by its restart policy
        health = exec_json(
            fleet, "curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1/health", member.name
        )
        if health[member.name]["status"] == "ok" and health[member.name]["stdout"].strip() == "200":
            break
        time.sleep(1)
    else:
        pytest.fail(f"{member.name} not healthy after the reset")


def test_resize_up_and_recreate_come_back_deployed_and_keys_follow(
    fleet: LocalFleet, compute: Compute
) -> None:
    """Both at once (as a MIG may): a new member, and a member replaced by a new VM of its name."""
    before = {m.name: m for m in compute.mig_members(REF)}
    target = before[sorted(before, key=natural_key)[-1]]  # gcemig-2 (role app, not beat)
    old_key = guest_key(compute, target.name)
    assert old_key == host_key(fleet, target.name)
    release = exec_json(fleet, "readlink /opt/fleet/dify/current", target.name)[target.name]["stdout"].strip()

    request_id = str(uuid.uuid4())
    load = LoadGen(f"http://127.0.0.1:{CFG.lb_port}", threads=2, rate=10, max_seconds=300).start()
    compute.resize(REF, 3, request_id=request_id)
    compute.resize(REF, 3, request_id=request_id)  # a retry with the same id: the same operation
    compute.recreate(REF, [target])
    seen = watch(compute, lambda ms: len(ms) == 3 and all(m.current_action == "NONE" for m in ms))
    # the recreated member left the LB drained (connection draining) and comes back only when healthy
    assert fleet.lb.wait_for(target.name, ("UP",), timeout=60)
    served = load.stop()
    assert served.failed == 0 and served.ok > 0, served.summary()
    members = {m.name: m for m in compute.mig_members(REF)}
    (new,) = [m for m in members.values() if m.name not in before]
    actions = {(n, a) for n, _, a in seen}
    assert {(new.name, "CREATING"), (new.name, "VERIFYING"), (target.name, "RECREATING")} <= actions
    assert compute.mig(REF).target_size == 3

    # both ran the template's startup script INSIDE the VM: its agent fetched the store's desired
    # release (the id their peers of the same roles run), serves it, recorded it as `agent-boot` in the
    # host's history and the store's, and reports it in guest attributes; the LB follows the membership
    results = exec_json(
        fleet,
        "readlink /opt/fleet/dify/current; tail -n1 /opt/fleet/dify/history.jsonl; curl -s http://127.0.0.1/health",
    )
    rid = release.rsplit("/", 1)[-1]
    for name in (new.name, target.name):
        assert results[name]["status"] == "ok", results[name]
        current, history, health = results[name]["stdout"].splitlines()[:3]
        assert current == release
        entry = json.loads(history)
        assert (entry["action"], entry["result"], entry["version"]) == ("agent-boot", "ok", VERSION)
        assert entry["operator"] == f"agent@{name}"
        assert json.loads(health)["version"] == VERSION
        reported = {k: v for ns, k, v in compute.guest_attributes(CFG.project, CFG.zone, name, "fleet/")}
        assert (reported["release"], reported["version"], reported["health"]) == (rid, VERSION, "ok")
        assert (reported["action"], reported["result"], reported["error"]) == ("boot", "ok", "")
    assert fleet.lb.wait_for(new.name, ("UP",), timeout=30)

    # the recreated member: a new VM (id) with a new host key, published in guest attributes, which
    # the tool used above to connect (mig/known_hosts pins nothing)
    after = members[target.name]
    assert after.id != target.id
    new_key = guest_key(compute, target.name)
    assert new_key != old_key and new_key == host_key(fleet, target.name)
    pins = fleet.inventory_dir / "mig" / "known_hosts"
    saved = pins.read_text()
    try:
        pins.write_text(saved + f"compute.{after.id} ssh-ed25519 {old_key}\n")  # the key from before
        refused = exec_json(fleet, "true", target.name)[target.name]
        assert refused["status"] == "unreachable"
        assert "not the one the instance publishes in its guest attributes" in refused["error"]
    finally:
        pins.write_text(saved)
    assert exec_json(fleet, "true", target.name)[target.name]["status"] == "ok"


def reported(compute: Compute, name: str) -> dict[str, str]:
    """The agent's guest attributes, through the Compute API (as `fab status` reads them)."""
    return {
        k: v for ns, k, v in compute.guest_attributes(CFG.project, CFG.zone, name, "fleet/") if ns == "fleet"
    }


def agent_reports(fleet: LocalFleet) -> dict[str, dict[str, str]]:
    """What `fab status --no-ssh` shows: each member's agent report, from guest attributes only."""
    r = fab("status", "--inventory", mig_inv(fleet), "--no-ssh", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    return {k: v or {} for k, v in json.loads(r.stdout)["agents"].items()}


def wait_reports(
    fleet: LocalFleet, until: Callable[[dict[str, dict[str, str]]], bool], timeout: float = 60
) -> dict[str, dict[str, str]]:
    deadline = time.monotonic() + timeout
    while True:
        found = agent_reports(fleet)
        if until(found) or time.monotonic() > deadline:
            return found
        time.sleep(1)


def test_status_without_ssh_shows_what_every_member_runs(fleet: LocalFleet, compute: Compute) -> None:
    """The agents' heartbeat: operator-deployed members too (it reports what runs, whoever deployed)."""
    names = {m.name for m in compute.mig_members(REF)}
    found = wait_reports(
        fleet, lambda r: set(r) == names and all(x.get("health") == "ok" for x in r.values())
    )
    assert set(found) == names
    for name, report in found.items():
        assert (report["version"], report["health"]) == (VERSION, "ok"), (name, report)
        assert report["release"] and report["observed"]


def _secret_manager_call(fleet: LocalFleet, version: str, verb: str) -> None:
    """disable/enable a secret version on the fleet's Secret Manager (the REST API, as gcloud does)."""
    req = requests.post(f"{fleet.config.secretmanager_endpoint}/v1/{version}:{verb}", json={}, timeout=10)
    assert req.status_code == 200, req.text


def test_a_vm_that_cannot_read_a_secret_reports_it_and_never_enters_the_lb(
    fleet: LocalFleet, compute: Compute
) -> None:
    from fleet.release import sealed as sealing
    from fleet.store import desired, releases
    from fleet.store.location import parse

    store = parse(fleet.config.store_url, fleet.config.storage_endpoint, CFG.project)
    current, _ = desired.read(store)
    assert current is not None
    manifest = releases.read_manifest(store, current.variants["app"])
    assert manifest is not None
    pinned = sealing.secret_refs(manifest)["DB_PASSWORD"]
    victim = sorted((m for m in compute.mig_members(REF)), key=lambda m: natural_key(m.name))[-1]
    _secret_manager_call(fleet, pinned, "disable")
    try:
        compute.recreate(REF, [victim])
        # the old VM is drained and taken out of the LB first: only what the LB says after that is
        # about the new VM
        out = time.monotonic() + 60
        while victim.name in fleet.lb.servers() and time.monotonic() < out:
            time.sleep(0.2)
        states: set[str] = set()
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            server = fleet.lb.servers().get(victim.name)
            states.add(server.status if server else "absent")
            members = {m.name: m for m in compute.mig_members(REF)}
            if members[victim.name].current_action == "NONE" and compute.mig(REF).status.is_stable:
                break
            time.sleep(0.5)
        time.sleep(3)  # a few more LB health checks
        server = fleet.lb.servers().get(victim.name)
        states.add(server.status if server else "absent")
        assert "UP" not in states, states
        report = reported(compute, victim.name)
        assert (report["action"], report["result"]) == ("boot", "failed"), report
        # nothing runs on the new disk: the boot said `failed`, the heartbeat since says `none`
        assert report["health"] in ("failed", "none") and not report["release"], report
        assert pinned in report["error"] or "DB_PASSWORD" in report["error"], report["error"]
        last = compute.mig_members(REF)
        assert any(m.name == victim.name for m in last)
    finally:
        _secret_manager_call(fleet, pinned, "enable")
    # the secret readable again: a reboot runs the agent again, and the VM serves
    compute.reset(CFG.project, CFG.zone, victim.name)
    assert fleet.lb.wait_for(victim.name, ("UP",), timeout=150)
    report = reported(compute, victim.name)
    assert (report["result"], report["health"], report["version"]) == ("ok", "ok", VERSION), report


def test_a_vm_created_during_a_rollout_boots_the_fleets_release_then_is_brought_along(
    fleet: LocalFleet, compute: Compute
) -> None:
    """desired moves only when the rollout succeeded: a VM the MIG creates meanwhile boots the release
    the fleet had; the rollout names it at the end, and a second rollout brings it along."""
    import subprocess

    size = len(compute.mig_members(REF))
    fab_bin = Path(sys.executable).with_name("fab")
    args = [str(fab_bin), "rollout", "--inventory", mig_inv(fleet), "--version", "1.1.0", "--yes"]
    # the rollout must outlast the newcomer's boot (its image pull is most of it, ~35 s here, over a
    # minute on a loaded machine): two batches of the backend service's 10 s connection draining plus
    # 10 s min-ready each (a switch no longer recreates nginx, which had made each batch ~2 s longer)
    rollout = subprocess.Popen(
        [*args, "--canary", "1", "--drain-wait", "15", "--min-ready", "10"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lock = FleetLock(compute, CFG.project, CFG.name)
        deadline = time.monotonic() + 60
        while not lock.status().held and time.monotonic() < deadline and rollout.poll() is None:
            time.sleep(0.3)
        if rollout.poll() is not None:
            out, err = rollout.communicate()
            pytest.fail(f"the rollout ended early ({rollout.returncode}): {out[-1500:]} {err[-1500:]}")
        assert lock.status().held, "the rollout should hold the fleet lock"
        before = {m.name for m in compute.mig_members(REF)}
        compute.resize(REF, size + 1)
        watch(compute, lambda ms: len(ms) == size + 1 and all(m.current_action == "NONE" for m in ms))
        assert rollout.poll() is None, "the rollout should still run (draining and min-ready per batch)"
        (newcomer,) = [m for m in compute.mig_members(REF) if m.name not in before]
        report = {
            k: v for ns, k, v in compute.guest_attributes(CFG.project, CFG.zone, newcomer.name, "fleet/")
        }
        assert (report["result"], report["version"]) == ("ok", VERSION), report  # not 1.1.0 yet
        out, err = rollout.communicate(timeout=300)
    finally:
        if rollout.poll() is None:
            rollout.kill()
    assert rollout.returncode == 0, out[-2000:] + err[-2000:]
    assert f"{newcomer.name} joined the MIG during this rollout" in out + err
    r = fab(*args[1:], "--canary", "0")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    found = wait_reports(fleet, lambda rs: all(x.get("version") == "1.1.0" for x in rs.values()))
    assert {x.get("version") for x in found.values()} == {"1.1.0"}, found


def test_resize_down_deletes_the_newest(fleet: LocalFleet, compute: Compute) -> None:
    members = compute.mig_members(REF)
    newest = max(members, key=lambda m: m.created)
    compute.resize(REF, len(members) - 1)
    seen = watch(compute, lambda ms: len(ms) == len(members) - 1)
    assert (newest.name, "STOPPING", "DELETING") in seen
    assert {m.name for m in compute.mig_members(REF)} == {m.name for m in members} - {newest.name}
    assert newest.name not in fleet.lb.servers()
    assert newest.name not in yaml.safe_load((fleet.inventory_dir / "hosts.yaml").read_text())


def test_refusals_look_like_compute(fleet: LocalFleet, compute: Compute) -> None:
    size = compute.mig(REF).target_size
    with pytest.raises(ComputeError, match="not found"):
        compute.reset(CFG.project, CFG.zone, "gcemig-42")
    with pytest.raises(ComputeError, match="400"):
        compute.resize(REF, -1)
    with pytest.raises(ComputeError, match="Quota"):
        compute.resize(REF, compute_docker.MAX_SIZE + 1)
    ghost = ManagedInstance(REF, "gcemig-42", CFG.zone, "1", "RUNNING", "NONE")
    with pytest.raises(FleetError, match="not a member"):
        compute.recreate(REF, [ghost])
    assert compute.mig(REF).target_size == size  # nothing refused changed the MIG


# --------------------------------------------------------------------------- MIG autohealing


def health_of(compute: Compute) -> dict[str, tuple[str, str, str]]:
    """Each member's (instanceHealth's detailedHealthState, currentAction, instance id), through the
    real client's listManagedInstances."""
    out = {}
    for mi in compute.managed_instances(REF):
        name = mi.instance.rsplit("/", 1)[-1]
        states = [h.detailed_health_state for h in mi.instance_health]
        out[name] = (states[0] if states else "", mi.current_action, str(mi.id))
    return out


def judged(fleet: LocalFleet, compute: Compute, name: str, timeout: float = 200) -> None:
    """Until `name` is past the autohealing policy's initial delay (counted from its last boot) and
    HEALTHY: only then can a failing check lead to a recreate, so the test below proves something."""
    policy = compute.mig(REF).auto_healing_policies[0]
    started = fleet.instance(name).started
    wait = compute_docker.docker_time(started) + policy.initial_delay_sec - time.time()
    if wait > 0:
        time.sleep(wait + 1)
    deadline = time.monotonic() + timeout
    while health_of(compute)[name][0] != "HEALTHY":
        assert time.monotonic() < deadline, health_of(compute)
        time.sleep(0.5)


def endpoint_log(fleet: LocalFleet) -> str:
    return (compute_endpoint.state_dir(fleet.config) / "compute.log").read_text()


def test_the_mig_carries_its_autohealing_policy_on_the_liveness_check(compute: Compute) -> None:
    live = CFG.lb_settings.liveness
    igm = compute.mig(REF)
    (policy,) = igm.auto_healing_policies
    assert policy.health_check == compute_docker.liveness_url(CFG)
    assert policy.initial_delay_sec == live.initial_delay
    assert live.path == "/nginx-health"  # nginx's own location, not the drain-aware /health
    members = health_of(compute)
    assert members and all(state in ("HEALTHY", "UNKNOWN") for state, _, _ in members.values()), members


def test_the_fleet_runs_from_what_infra_apply_created(fleet: LocalFleet, compute: Compute) -> None:
    template = infrasetup.mig_template(CFG)
    assert "/global/instanceTemplates/gcemig-template-" in template
    assert compute.mig(REF).instance_template == template
    t = compute.types()
    members = compute.client("InstanceGroupManagersClient").list_managed_instances(
        request=t.ListManagedInstancesInstanceGroupManagersRequest(
            project=REF.project, zone=REF.location, instance_group_manager=REF.name
        )
    )
    versions = {m.name: m.version.instance_template for m in members}
    assert versions and set(versions.values()) == {template}, versions
    assert {r.name: r.template for r in fleet.instances()} == versions  # stamped on each container
    name = next(iter(versions))
    inst = compute.instance(CFG.project, CFG.zone, name)
    assert inst.service_accounts[0].email == f"fleet-vm@{CFG.project}.iam.gserviceaccount.com"
    # the VM itself reads its template's metadata from its metadata server: infra's regional MIG path
    served = fleet.exec(
        name,
        [
            "curl",
            "-sf",
            "-H",
            "Metadata-Flavor: Google",
            "http://metadata.google.internal/computeMetadata/v1/instance/attributes/fleet-mig",
        ],
    ).stdout
    assert served == f"projects/{CFG.project}/regions/europe-west1/instanceGroupManagers/{REF.name}"
    assert not infrasetup.apply(CFG, 2).changed  # the second apply (the first two ran at bring-up)


def test_a_patched_backend_service_reaches_haproxy(fleet: LocalFleet, compute: Compute) -> None:
    """As on GCP, the LB follows its backend service: a patch (here: connection draining) reloads
    haproxy with it, every member keeping its health; infra.apply then puts the inventory's back."""
    before = {n: s.status for n, s in fleet.lb.servers().items()}
    client = compute.client("BackendServicesClient")
    service = client.get(project=CFG.project, backend_service=CFG.backend)
    t = compute.types()
    patch = t.BackendService(
        connection_draining=t.ConnectionDraining(draining_timeout_sec=37), fingerprint=service.fingerprint
    )
    compute.wait(
        client.patch_unary(project=CFG.project, backend_service=CFG.backend, backend_service_resource=patch),
        project=CFG.project,
    )
    deadline = time.monotonic() + 60  # settings change once haproxy reloaded and took its members back
    while fleet.lb.settings.draining_timeout != 37 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert fleet.lb.settings.draining_timeout == 37
    assert "connection draining 37 s" in fleet.lb.cfg_path.read_text()
    assert {n: s.status for n, s in fleet.lb.servers().items()} == before
    report = infrasetup.apply(CFG, 2)
    assert [(c.kind, c.action) for c in report.changes if c.action != "unchanged"] == [
        ("backendServices", "update")
    ]
    deadline = time.monotonic() + 60
    while fleet.lb.settings.draining_timeout != CFG.lb_settings.draining_timeout:
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert fleet.lb.settings.draining_timeout == CFG.lb_settings.draining_timeout
    assert {n: s.status for n, s in fleet.lb.servers().items()} == before


def test_a_drain_never_triggers_a_recreate_a_dead_nginx_does(fleet: LocalFleet, compute: Compute) -> None:
    """Both at once, to keep the module short: the first member is drained (as a rollout's drain step
    does) while the second one's nginx is stopped; the drain lasts until the second is recreated, i.e.
    longer than unhealthy_threshold x check_interval by construction (asserted too)."""
    from fleet.commands.release import Layout, drain, undrain

    live = CFG.lb_settings.liveness
    drained, victim = sorted((m.name for m in compute.mig_members(REF)), key=natural_key)[:2]
    version = reported(compute, drained)["version"]  # what the fleet runs (the store's desired release)
    judged(fleet, compute, drained)
    judged(fleet, compute, victim)
    steady = health_of(compute)[drained]
    _, _, old_id = health_of(compute)[victim]
    log_start = len(endpoint_log(fleet))  # the log outlives fleets of this name: only this test's lines
    # the drain flag a rollout's drain step sets (fleet/commands/release.py), through the console
    fleet.exec(drained, ["sh", "-c", drain(Layout()).shell()], timeout=60)
    try:
        # the LB's readiness check sees the drain (/health 503) and takes the host out...
        assert fleet.lb.wait_for(drained, ("DOWN",), timeout=30)
        codes = fleet.exec(
            drained,
            [
                "sh",
                "-c",
                "curl -s -o /dev/null -w '%{http_code} ' http://127.0.0.1/health; "
                "curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1/nginx-health",
            ],
            timeout=60,
        ).stdout.split()
        assert codes == ["503", "200"], codes
        drained_at = time.monotonic()
        stop = "docker ps -q --filter label=com.docker.compose.service=nginx | xargs -r docker stop -t 2"
        fleet.exec(victim, ["sh", "-c", stop], timeout=60)  # the console: no SSH needed for this
        stopped_at = time.monotonic()
        seen: list[tuple[str, str, str]] = []
        first_seen: dict[str, float] = {}  # seconds after nginx stopped that each state/action showed
        kept: set[tuple[str, str, str]] = set()
        deadline = time.monotonic() + 300
        while True:
            members = health_of(compute)
            kept.add(members[drained])
            if not seen or seen[-1] != members[victim]:
                seen.append(members[victim])
                for mark in members[victim][:2]:
                    first_seen.setdefault(mark or "(no health state)", time.monotonic() - stopped_at)
            if members[victim][2] != old_id and members[victim][1] == "NONE":
                break
            assert time.monotonic() < deadline, seen
            time.sleep(0.5)
        held = time.monotonic() - drained_at
        # ...while the MIG's liveness check kept passing on it: HEALTHY, no action, the same VM
        assert held > live.unhealthy_threshold * live.check_interval, held
        assert kept == {steady}, kept
    finally:
        fleet.exec(drained, ["sh", "-c", undrain(Layout()).shell()], timeout=60)
    assert fleet.lb.wait_for(drained, ("UP",), timeout=60)
    assert health_of(compute)[drained] == steady
    log = endpoint_log(fleet)[log_start:]
    assert f"autohealing: {drained} is " not in log  # never even considered

    # the victim: marked unhealthy (nothing listens on port 80: TIMEOUT in Compute's terms), recreated
    states = [state for state, _, _ in seen]
    actions = [action for _, action, _ in seen]
    assert {"UNHEALTHY", "TIMEOUT"} & set(states), seen
    assert "RECREATING" in actions, seen
    assert f"autohealing: {victim} is " in log and "in a row): recreate" in log
    # the new VM booted through the template's startup script: the agent brought the fleet's release
    # up, so it serves, the LB takes it back and the MIG's liveness check finds it HEALTHY
    assert fleet.lb.wait_for(victim, ("UP",), timeout=150)
    up_at = time.monotonic() - stopped_at
    deadline = time.monotonic() + 60
    while health_of(compute)[victim][0] != "HEALTHY":
        assert time.monotonic() < deadline, health_of(compute)
        time.sleep(0.5)
    healthy_at = time.monotonic() - stopped_at
    # the figures docs/local-fleet.md quotes ("MIG autohealing"); shown with `pytest -rP` or `-s`
    print(f"\ndrain held {held:.1f} s: {drained} HEALTHY with no action throughout")
    marks = ", ".join(f"{k} {v:.1f}" for k, v in first_seen.items())
    print(f"{victim} after its nginx stopped (s): {marks}")
    print(f"{victim}: UP in the LB {up_at:.1f}, HEALTHY for the MIG {healthy_at:.1f}")
    report = reported(compute, victim)
    assert (report["action"], report["result"], report["version"]) == ("boot", "ok", version), report


# --------------------------------------------------------------------------- --strategy replace


def test_replace_rollout_under_load_through_the_lb_fails_no_request(
    fleet: LocalFleet, compute: Compute
) -> None:
    """Issue 15 item 5: `fab rollout --strategy replace` 1.0.0 -> 1.1.0 through the local MIG's
    updater: the releases sealed into the store first, then per batch (canary first) the MIG's
    template becomes the release's and applyUpdatesToInstances recreates the batch's containers from
    it; each new VM's agent boots the release its template pins, and passes on its guest attributes
    and haproxy. 0 failed requests through the LB. Last in the module: the members leave infra's
    template for the release's."""
    import subprocess

    fab_bin = str(Path(sys.executable).with_name("fab"))
    inv = mig_inv(fleet)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([fab_bin, *args], capture_output=True, text=True, timeout=900)

    r = run("deploy", "--inventory", inv, "--version", VERSION, "--json")  # wherever the module left it
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    before = {m.name: m.version.instance_template.rsplit("/", 1)[-1] for m in compute.managed_instances(REF)}
    containers = {i.name: i.container_id for i in fleet.instances()}
    started = time.monotonic()
    with LoadGen(f"http://127.0.0.1:{CFG.lb_port}", threads=4, rate=20, max_seconds=900) as load:
        r = run(
            "rollout", "--inventory", inv, "--version", "1.1.0", "--strategy", "replace", "--yes", "--json",
            "--canary", "1", "--batch", "1", "--health-timeout", "300",
        )  # fmt: skip
        time.sleep(2)  # a last look through the LB after the rollout returned
        report = load.stop()
    took = time.monotonic() - started
    print(f"replace rollout of {len(before)} members under load: {took:.1f} s; {report.summary()}")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    outcome = json.loads(r.stdout)
    assert outcome["outcome"] == "succeeded" and {h["result"] for h in outcome["hosts"]} == {"updated"}
    assert report.failed == 0, f"{report.summary()}\n" + "\n".join(report.first_failures)
    assert report.requests >= 100 and report.versions.get("1.1.0"), report.summary()
    members = compute.managed_instances(REF)
    templates = {m.name: m.version.instance_template.rsplit("/", 1)[-1] for m in members}
    assert set(templates) == set(before) and not set(templates.values()) & set(before.values())
    assert all(t.startswith(next(iter(before.values()))) for t in templates.values())  # <base>-<hash>
    assert compute.mig(REF).instance_template.rsplit("/", 1)[-1] in templates.values()
    now = {i.name: i.container_id for i in fleet.instances()}
    assert all(now[n] != containers[n] for n in before)  # every member is a new VM, same name
    found = wait_reports(fleet, lambda rs: all(x.get("version") == "1.1.0" for x in rs.values()))
    assert {(x.get("version"), x.get("health")) for x in found.values()} == {("1.1.0", "ok")}, found
    # worker_beat: exactly one member runs it (looked at through the console). The rollout's own look
    # cannot reach a recreated VM (new host key) and must say so, not blame the release
    beat = "docker ps -q --filter label=com.docker.compose.service=worker_beat --filter status=running"
    running = [n for n in before if fleet.exec(n, ["sh", "-c", beat], timeout=60).stdout.strip()]
    assert len(running) == 1, running
    assert not any("runs on no host" in p for p in outcome["problems"]), outcome["problems"]
