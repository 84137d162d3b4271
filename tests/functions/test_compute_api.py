"""The local Compute endpoint, exercised with the real google-cloud-compute client."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest
from google.api_core import exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import compute_v1

from functions import fleet_contract as contract
from standins.compute_api import ComputeApi
from standins.compute_state import ComputeApiError, InMemoryCompute, scope_of
from tests.functions.conftest import MIG, PROJECT, ZONE

pytestmark = pytest.mark.functions
REGION = "us-central1"


@pytest.fixture
def local(request: pytest.FixtureRequest):
    # a test may ask for slower actions (indirect parametrization): {"action_seconds": ...}
    backend = InMemoryCompute(**{"action_seconds": 0.3, "op_seconds": 0.1, **getattr(request, "param", {})})
    backend.add_mig(PROJECT, ZONE, MIG, size=3)
    backend.add_mig(PROJECT, REGION, "regional", size=2, zones=["us-central1-b", "us-central1-c"])
    backend.add_instance(PROJECT, ZONE, "standalone", guest_attributes={"hostkeys/ssh-ed25519": "AAAAC3Nza"})
    api = ComputeApi(backend).start()
    yield backend, api
    api.stop()
    backend.close()


@pytest.fixture
def clients(local):
    _, api = local
    kw = {"credentials": AnonymousCredentials(), "client_options": {"api_endpoint": api.url}}
    return {
        "instances": compute_v1.InstancesClient(**kw),
        "igms": compute_v1.InstanceGroupManagersClient(**kw),
        "region_igms": compute_v1.RegionInstanceGroupManagersClient(**kw),
        "autoscalers": compute_v1.AutoscalersClient(**kw),
        "projects": compute_v1.ProjectsClient(**kw),
        "zone_ops": compute_v1.ZoneOperationsClient(**kw),
        "region_ops": compute_v1.RegionOperationsClient(**kw),
        "global_ops": compute_v1.GlobalOperationsClient(**kw),
    }


def members(clients, mig: str = MIG):
    return list(
        clients["igms"].list_managed_instances(project=PROJECT, zone=ZONE, instance_group_manager=mig)
    )


def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert predicate()


def test_reads(clients):
    igm = clients["igms"].get(project=PROJECT, zone=ZONE, instance_group_manager=MIG)
    assert (igm.name, igm.target_size, igm.status.is_stable, igm.current_actions.none) == (MIG, 3, True, 3)
    managed = members(clients)
    assert [m.current_action for m in managed] == ["NONE"] * 3
    names = {i.name for i in clients["instances"].list(project=PROJECT, zone=ZONE)}
    assert {m.name for m in managed} | {"standalone"} == names
    inst = clients["instances"].get(project=PROJECT, zone=ZONE, instance=managed[0].name)
    assert inst.id == managed[0].id and inst.status == "RUNNING" and inst.creation_timestamp
    assert [i.key for i in inst.metadata.items] == ["created-by"]
    regional = clients["region_igms"].list_managed_instances(
        project=PROJECT, region=REGION, instance_group_manager="regional"
    )
    assert sorted(m.instance.split("/zones/")[1].split("/")[0] for m in regional) == [
        "us-central1-b",
        "us-central1-c",
    ]
    attrs = clients["instances"].get_guest_attributes(
        request=compute_v1.GetGuestAttributesInstanceRequest(
            project=PROJECT, zone=ZONE, instance="standalone", query_path="hostkeys/"
        )
    )
    assert [(i.key, i.value) for i in attrs.query_value.items] == [("ssh-ed25519", "AAAAC3Nza")]


def test_errors_in_compute_format(clients, local):
    _, api = local
    with pytest.raises(exceptions.NotFound, match="was not found"):
        clients["instances"].get(project=PROJECT, zone=ZONE, instance="missing")
    with pytest.raises(exceptions.NotFound):
        clients["projects"].get(project="no-such-project")
    with pytest.raises(exceptions.BadRequest, match="requestId"):
        clients["instances"].reset_unary(
            request=compute_v1.ResetInstanceRequest(
                project=PROJECT, zone=ZONE, instance="standalone", request_id="nope"
            )
        )
    with pytest.raises(exceptions.BadRequest, match="size"):
        clients["igms"].resize_unary(project=PROJECT, zone=ZONE, instance_group_manager=MIG, size=-1)
    api.inject("instances.get", status=503, times=1)
    with pytest.raises(exceptions.ServiceUnavailable):
        clients["instances"].get(project=PROJECT, zone=ZONE, instance="standalone", retry=None)
    api.inject("instances.get", status=503, times=1)
    assert clients["instances"].get(project=PROJECT, zone=ZONE, instance="standalone").name == "standalone", (
        "the client's default retry for reads goes through after one 503"
    )
    statuses = [c.status for c in api.calls("instances.get")]
    assert statuses == [404, 503, 503, 200]


def test_set_labels_is_compare_and_swap(clients):
    inst = clients["instances"]
    before = inst.get(project=PROJECT, zone=ZONE, instance="standalone")

    def set_labels(fingerprint: str):
        body = compute_v1.InstancesSetLabelsRequest(
            labels={"fleet-rollout": "r-1"}, label_fingerprint=fingerprint
        )
        return inst.set_labels_unary(
            project=PROJECT, zone=ZONE, instance="standalone", instances_set_labels_request_resource=body
        )

    assert set_labels(before.label_fingerprint).status == compute_v1.Operation.Status.DONE
    with pytest.raises(exceptions.PreconditionFailed, match="fingerprint"):
        set_labels(before.label_fingerprint)
    after = inst.get(project=PROJECT, zone=ZONE, instance="standalone")
    assert (
        dict(after.labels) == {"fleet-rollout": "r-1"} and after.label_fingerprint != before.label_fingerprint
    )
    body = compute_v1.InstancesSetLabelsRequest(
        labels={"Bad": "x"}, label_fingerprint=after.label_fingerprint
    )
    with pytest.raises(exceptions.BadRequest):
        inst.set_labels_unary(
            project=PROJECT, zone=ZONE, instance="standalone", instances_set_labels_request_resource=body
        )


def test_common_metadata_compare_and_swap_holds_the_lock(clients):
    projects = clients["projects"]
    now = contract.parse_time("2026-11-26T07:00:00Z")
    lock = contract.Lock("local", "alice", "release", "r-1", now, now)
    meta = projects.get(project=PROJECT).common_instance_metadata
    item = compute_v1.Items(key=contract.LOCK_METADATA_KEY, value=contract.lock_to_json(lock))
    new = compute_v1.Metadata(fingerprint=meta.fingerprint, items=[item])
    op = projects.set_common_instance_metadata_unary(project=PROJECT, metadata_resource=new)
    done = clients["global_ops"].get(project=PROJECT, operation=op.name)
    assert done.status == compute_v1.Operation.Status.DONE
    with pytest.raises(exceptions.PreconditionFailed):
        projects.set_common_instance_metadata_unary(project=PROJECT, metadata_resource=new)
    stored = projects.get(project=PROJECT).common_instance_metadata.items
    assert contract.parse_lock(stored[0].value) == lock


def test_request_id_runs_an_action_once(clients):
    rid = str(uuid.uuid4())
    request = compute_v1.ResizeInstanceGroupManagerRequest(
        project=PROJECT, zone=ZONE, instance_group_manager=MIG, size=4, request_id=rid
    )
    first = clients["igms"].resize_unary(request=request)
    again = clients["igms"].resize_unary(
        request=compute_v1.ResizeInstanceGroupManagerRequest(
            project=PROJECT, zone=ZONE, instance_group_manager=MIG, size=5, request_id=rid
        )
    )
    assert again.name == first.name
    assert clients["igms"].get(project=PROJECT, zone=ZONE, instance_group_manager=MIG).target_size == 4


# the reset's operation is RUNNING from half the action's time to its end: 1.5 s here, so polls that
# take a few hundred milliseconds on a loaded machine still see it (0.15 s of 0.3 was missed once)
@pytest.mark.parametrize("local", [{"action_seconds": 3.0}], indirect=True)
def test_operations_go_pending_running_done(clients):
    name = members(clients)[0].name
    op = clients["instances"].reset_unary(project=PROJECT, zone=ZONE, instance=name)
    assert op.status == compute_v1.Operation.Status.PENDING
    seen = {op.status}
    deadline = time.monotonic() + 10
    while compute_v1.Operation.Status.DONE not in seen and time.monotonic() < deadline:
        seen.add(clients["zone_ops"].get(project=PROJECT, zone=ZONE, operation=op.name).status)
        time.sleep(0.01)
    assert seen == {
        compute_v1.Operation.Status.PENDING,
        compute_v1.Operation.Status.RUNNING,
        compute_v1.Operation.Status.DONE,
    }
    waited = clients["zone_ops"].wait(project=PROJECT, zone=ZONE, operation=op.name)
    assert waited.status == compute_v1.Operation.Status.DONE and waited.end_time


def test_resize_out_and_in_show_current_actions(clients):
    clients["igms"].resize_unary(project=PROJECT, zone=ZONE, instance_group_manager=MIG, size=4)
    assert sorted(m.current_action for m in members(clients)) == ["CREATING", "NONE", "NONE", "NONE"]
    igm = clients["igms"].get(project=PROJECT, zone=ZONE, instance_group_manager=MIG)
    assert igm.current_actions.creating == 1 and not igm.status.is_stable
    wait_until(lambda: [m.current_action for m in members(clients)] == ["NONE"] * 4)
    clients["igms"].resize_unary(project=PROJECT, zone=ZONE, instance_group_manager=MIG, size=2)
    assert sorted(m.current_action for m in members(clients)) == ["DELETING", "DELETING", "NONE", "NONE"]
    wait_until(lambda: len(members(clients)) == 2)


def test_recreate_replaces_the_vm_under_the_same_name(clients):
    first = members(clients)[0]
    url = f"projects/{PROJECT}/zones/{ZONE}/instances/{first.name}"
    clients["igms"].recreate_instances_unary(
        project=PROJECT,
        zone=ZONE,
        instance_group_manager=MIG,
        instance_group_managers_recreate_instances_request_resource=compute_v1.InstanceGroupManagersRecreateInstancesRequest(
            instances=[url]
        ),
    )
    assert members(clients)[0].current_action == "RECREATING"
    wait_until(lambda: members(clients)[0].current_action == "NONE")
    assert members(clients)[0].name == first.name and members(clients)[0].id != first.id
    with pytest.raises(exceptions.BadRequest, match="not a member"):
        clients["igms"].recreate_instances_unary(
            project=PROJECT,
            zone=ZONE,
            instance_group_manager=MIG,
            instance_group_managers_recreate_instances_request_resource=compute_v1.InstanceGroupManagersRecreateInstancesRequest(
                instances=[f"projects/{PROJECT}/zones/{ZONE}/instances/standalone"]
            ),
        )


def test_autoscaler_patch_and_update(clients, local):
    backend, _ = local
    backend.add_autoscaler(PROJECT, ZONE, "as", MIG, min_replicas=1, max_replicas=5)
    igm = clients["igms"].get(project=PROJECT, zone=ZONE, instance_group_manager=MIG)
    assert igm.status.autoscaler.endswith("/autoscalers/as")
    patch = compute_v1.Autoscaler(
        name="as", autoscaling_policy=compute_v1.AutoscalingPolicy(min_num_replicas=4)
    )
    clients["autoscalers"].patch_unary(
        request=compute_v1.PatchAutoscalerRequest(
            project=PROJECT, zone=ZONE, autoscaler="as", autoscaler_resource=patch
        )
    )
    got = clients["autoscalers"].get(project=PROJECT, zone=ZONE, autoscaler="as").autoscaling_policy
    assert (got.min_num_replicas, got.max_num_replicas, got.cool_down_period_sec) == (4, 5, 60)
    assert clients["igms"].get(project=PROJECT, zone=ZONE, instance_group_manager=MIG).target_size == 4
    bad = compute_v1.Autoscaler(
        name="as", autoscaling_policy=compute_v1.AutoscalingPolicy(max_num_replicas=2)
    )
    with pytest.raises(exceptions.BadRequest, match="minNumReplicas"):
        clients["autoscalers"].patch_unary(
            request=compute_v1.PatchAutoscalerRequest(
                project=PROJECT, zone=ZONE, autoscaler="as", autoscaler_resource=bad
            )
        )
    assert [a.name for a in clients["autoscalers"].list(project=PROJECT, zone=ZONE)] == ["as"]


def test_cli_serves_a_state_file(tmp_path):
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"migs": [{"project": PROJECT, "zone": ZONE, "name": MIG, "size": 2}]}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "standins.compute_api", "--state", str(state)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        url = line.strip().rsplit(" ", 1)[1]
        assert url.startswith("http://127.0.0.1:")
        igms = compute_v1.InstanceGroupManagersClient(
            credentials=AnonymousCredentials(), client_options={"api_endpoint": url}
        )
        assert igms.get(project=PROJECT, zone=ZONE, instance_group_manager=MIG).target_size == 2
        with urllib.request.urlopen(url + "/_local/calls") as response:
            calls = json.load(response)["calls"]
        assert [c["method"] for c in calls] == ["instanceGroupManagers.get"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


def test_cli_refuses_a_bad_state_file(tmp_path):
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"migs": [{"zone": ZONE}]}))
    proc = subprocess.run(
        [sys.executable, "-m", "standins.compute_api", "--state", str(state)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "bad compute state spec" in proc.stderr and "hint:" in proc.stderr


@pytest.mark.parametrize(
    ("location", "scope"),
    [("europe-west1-b", "zones"), ("europe-west1", "regions"), ("local-zone-a", None), ("local-zone", None)],
)
def test_the_standin_takes_gce_shaped_locations_only(location, scope):
    """Google checks names itself: so does the stand-in, with the contract's shapes and no local names."""
    backend = InMemoryCompute()
    if scope is None:
        with pytest.raises(ComputeApiError, match="location"):
            backend.add_mig(PROJECT, location, MIG, size=1)
        assert not contract.is_zone(location) and not contract.is_region(location)
    else:
        assert scope_of(location) == scope
        assert contract.is_zone(location) is (scope == "zones")
        assert backend.add_mig(PROJECT, location, MIG, size=1)
