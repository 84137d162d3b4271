"""The Compute stand-in's MIG updater (versions, updatePolicy, setInstanceTemplate,
applyUpdatesToInstances, backendServices.getHealth), driven by the real google-cloud-compute client."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from google.api_core import exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import compute_v1

from standins.compute_api import ComputeApi
from standins.compute_state import InMemoryCompute

pytestmark = pytest.mark.functions
PROJECT = "updater-project"
ZONE = "europe-west1-b"
REGION = "europe-west1"
RZONES = ["europe-west1-b", "europe-west1-c"]
TPL = f"projects/{PROJECT}/global/instanceTemplates"


def agent_boot(instance: dict[str, Any], template: dict[str, Any] | None) -> tuple[dict[str, str], str]:
    """What the VM's agent does at boot, reduced to its report: the template's release reference
    becomes the guest attribute fleet/release; a release named "broken" never gets healthy."""
    items = ((template or {}).get("properties", {}).get("metadata") or {}).get("items") or []
    release = next((i["value"] for i in items if i["key"] == "fleet-release"), "")
    health = "UNHEALTHY" if release == "broken" else "HEALTHY"
    return {"fleet/release": release, "fleet/health": "ok" if health == "HEALTHY" else "failed"}, health


class Stand:
    def __init__(self) -> None:
        self.backend = InMemoryCompute(
            action_seconds=0.15, op_seconds=0.05, boot_seconds=0.15, boot=agent_boot
        )
        self.backend.add_project(PROJECT)
        self.api = ComputeApi(self.backend).start()
        kw: dict[str, Any] = {
            "credentials": AnonymousCredentials(),
            "client_options": {"api_endpoint": self.api.url},
        }
        self.templates = compute_v1.InstanceTemplatesClient(**kw)
        self.igms = compute_v1.InstanceGroupManagersClient(**kw)
        self.rigms = compute_v1.RegionInstanceGroupManagersClient(**kw)
        self.instances = compute_v1.InstancesClient(**kw)
        self.health_checks = compute_v1.HealthChecksClient(**kw)
        self.backend_services = compute_v1.BackendServicesClient(**kw)
        self.zone_ops = compute_v1.ZoneOperationsClient(**kw)
        self.region_ops = compute_v1.RegionOperationsClient(**kw)
        self.global_ops = compute_v1.GlobalOperationsClient(**kw)
        for name, release in (("t1", "1.0.0"), ("t2", "1.1.0"), ("bad", "broken")):
            self.template(name, release)

    def template(self, name: str, release: str) -> None:
        body = compute_v1.InstanceTemplate(
            name=name,
            properties=compute_v1.InstanceProperties(
                machine_type="e2-medium",
                disks=[compute_v1.AttachedDisk(boot=True)],
                network_interfaces=[compute_v1.NetworkInterface()],
                metadata=compute_v1.Metadata(items=[compute_v1.Items(key="fleet-release", value=release)]),
            ),
        )
        op = self.templates.insert_unary(project=PROJECT, instance_template_resource=body)
        self.global_ops.wait(project=PROJECT, operation=op.name)

    def wait_op(self, op: Any, *, zone: str = "", region: str = "") -> Any:
        for _ in range(100):
            if zone:
                op = self.zone_ops.wait(project=PROJECT, zone=zone, operation=op.name)
            else:
                op = self.region_ops.wait(project=PROJECT, region=region, operation=op.name)
            if op.status == compute_v1.Operation.Status.DONE:
                return op
        raise AssertionError(f"operation {op.name} never finished")

    def close(self) -> None:
        self.api.stop()
        self.api.resources.close()
        self.backend.close()


@pytest.fixture
def stand() -> Iterator[Stand]:
    s = Stand()
    yield s
    s.close()


def settled(stand: Stand) -> bool:
    status = stand.igms.get(project=PROJECT, zone=ZONE, instance_group_manager="web").status
    return bool(status.version_target.is_reached and status.is_stable)


def wait_until(predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def zonal(stand: Stand, size: int = 3) -> list[str]:
    return stand.backend.add_mig(
        PROJECT,
        ZONE,
        "web",
        size=size,
        template=f"https://www.googleapis.com/compute/v1/{TPL}/t1",
        guest_attributes={"fleet/release": "1.0.0"},
    )


def managed(stand: Stand, mig: str = "web", region: str = "") -> list[Any]:
    if region:
        return list(
            stand.rigms.list_managed_instances(project=PROJECT, region=region, instance_group_manager=mig)
        )
    return list(stand.igms.list_managed_instances(project=PROJECT, zone=ZONE, instance_group_manager=mig))


def released(stand: Stand, m: Any) -> str:
    zone = m.instance.split("/zones/")[1].split("/")[0]
    attrs = stand.instances.get_guest_attributes(
        request=compute_v1.GetGuestAttributesInstanceRequest(
            project=PROJECT, zone=zone, instance=m.name, query_path="fleet/"
        )
    )
    return {i.key: i.value for i in attrs.query_value.items}.get("release", "")


def policy(**kw: Any) -> compute_v1.InstanceGroupManagerUpdatePolicy:
    return compute_v1.InstanceGroupManagerUpdatePolicy(
        type_="PROACTIVE", minimal_action="REPLACE", most_disruptive_allowed_action="REPLACE", **kw
    )


def patch_zonal(
    stand: Stand, resource: compute_v1.InstanceGroupManager, request_id: str | None = None
) -> Any:
    request = compute_v1.PatchInstanceGroupManagerRequest(
        project=PROJECT, zone=ZONE, instance_group_manager="web", instance_group_manager_resource=resource
    )
    if request_id:
        request.request_id = request_id
    op = stand.igms.patch_unary(request=request)
    return stand.wait_op(op, zone=ZONE)


def test_zonal_canary_then_all_within_surge_and_unavailability(stand: Stand) -> None:
    old = set(zonal(stand, size=4))
    canary = compute_v1.InstanceGroupManager(
        versions=[
            compute_v1.InstanceGroupManagerVersion(
                name="canary",
                instance_template=f"{TPL}/t2",
                target_size=compute_v1.FixedOrPercent(fixed=1),
            ),
            compute_v1.InstanceGroupManagerVersion(name="stable", instance_template=f"{TPL}/t1"),
        ],
        update_policy=policy(
            max_surge=compute_v1.FixedOrPercent(fixed=1), max_unavailable=compute_v1.FixedOrPercent(fixed=0)
        ),
    )
    patch_zonal(stand, canary)
    igm = stand.igms.get(project=PROJECT, zone=ZONE, instance_group_manager="web")
    assert [v.name for v in igm.versions] == ["canary", "stable"]
    assert igm.versions[0].target_size.calculated == 1
    assert (igm.update_policy.max_surge.calculated, igm.update_policy.max_unavailable.calculated) == (1, 0)
    assert igm.status.version_target.is_reached is False  # the canary is still being created
    wait_until(lambda: settled(stand))
    members = managed(stand)
    new = [m for m in members if m.version.instance_template.endswith("/t2")]
    assert len(members) == 4 and len(new) == 1 and new[0].name not in old
    assert new[0].version.name == "canary" and new[0].instance_health[0].detailed_health_state == "HEALTHY"
    assert released(stand, new[0]) == "1.1.0"
    assert stand.igms.get(project=PROJECT, zone=ZONE, instance_group_manager="web").status.is_stable

    # then the whole group: sample the member count while it moves (never above targetSize + maxSurge)
    seen: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            seen.append(len(stand.backend.member_names(PROJECT, ZONE, "web")))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    op = stand.igms.set_instance_template_unary(
        project=PROJECT,
        zone=ZONE,
        instance_group_manager="web",
        instance_group_managers_set_instance_template_request_resource=compute_v1.InstanceGroupManagersSetInstanceTemplateRequest(
            instance_template=f"{TPL}/t2"
        ),
    )
    stand.wait_op(op, zone=ZONE)
    wait_until(lambda: settled(stand))
    stop.set()
    sampler.join()
    members = managed(stand)
    assert len(members) == 4 and all(m.version.instance_template.endswith("/t2") for m in members)
    assert {released(stand, m) for m in members} == {"1.1.0"}
    assert max(seen) == 5  # the surge was used, never exceeded
    igm = stand.igms.get(project=PROJECT, zone=ZONE, instance_group_manager="web")
    assert igm.instance_template.endswith("/t2") and len(igm.versions) == 1


def test_opportunistic_waits_for_apply_updates_which_recreates_in_place(stand: Stand) -> None:
    names = zonal(stand, size=3)
    patch_zonal(stand, compute_v1.InstanceGroupManager(instance_template=f"{TPL}/t2"))
    time.sleep(0.5)  # OPPORTUNISTIC (the default): nothing moves on its own
    assert all(m.version.instance_template.endswith("/t1") for m in managed(stand))
    igm = stand.igms.get(project=PROJECT, zone=ZONE, instance_group_manager="web")
    assert igm.update_policy.type_ == "OPPORTUNISTIC" and not igm.status.version_target.is_reached
    first = next(m for m in managed(stand) if m.name == names[0])
    op = stand.igms.apply_updates_to_instances_unary(
        project=PROJECT,
        zone=ZONE,
        instance_group_manager="web",
        instance_group_managers_apply_updates_request_resource=compute_v1.InstanceGroupManagersApplyUpdatesRequest(
            instances=[f"projects/{PROJECT}/zones/{ZONE}/instances/{names[0]}"],
            minimal_action="REPLACE",
        ),
    )
    assert next(m for m in managed(stand) if m.name == names[0]).current_action == "RECREATING"
    stand.wait_op(op, zone=ZONE)
    wait_until(lambda: next(m for m in managed(stand) if m.name == names[0]).current_action == "NONE")
    again = next(m for m in managed(stand) if m.name == names[0])
    assert again.id != first.id and again.version.instance_template.endswith("/t2")
    assert released(stand, again) == "1.1.0"
    others = [m for m in managed(stand) if m.name != names[0]]
    assert [m.version.instance_template.rsplit("/", 1)[1] for m in others] == ["t1", "t1"]
    with pytest.raises(exceptions.BadRequest, match="Exactly one of"):
        stand.igms.apply_updates_to_instances_unary(
            project=PROJECT,
            zone=ZONE,
            instance_group_manager="web",
            instance_group_managers_apply_updates_request_resource=compute_v1.InstanceGroupManagersApplyUpdatesRequest(),
        )


def test_bad_versions_and_policies_are_refused_and_change_nothing(stand: Stand) -> None:
    zonal(stand, size=2)
    before = stand.igms.get(project=PROJECT, zone=ZONE, instance_group_manager="web")
    bad = [
        (compute_v1.InstanceGroupManager(instance_template=f"{TPL}/missing"), "does not exist"),
        (
            compute_v1.InstanceGroupManager(
                versions=[
                    compute_v1.InstanceGroupManagerVersion(
                        instance_template=f"{TPL}/t2", target_size=compute_v1.FixedOrPercent(fixed=1)
                    ),
                    compute_v1.InstanceGroupManagerVersion(
                        instance_template=f"{TPL}/t1", target_size=compute_v1.FixedOrPercent(fixed=1)
                    ),
                ]
            ),
            "exactly one version must have no targetSize",
        ),
        (
            compute_v1.InstanceGroupManager(
                update_policy=policy(
                    max_surge=compute_v1.FixedOrPercent(fixed=0),
                    max_unavailable=compute_v1.FixedOrPercent(fixed=0),
                )
            ),
            "both 0",
        ),
        (
            compute_v1.InstanceGroupManager(update_policy=policy(replacement_method="RECREATE")),
            "must be 0 with replacementMethod RECREATE",
        ),
        (
            compute_v1.InstanceGroupManager(
                update_policy=compute_v1.InstanceGroupManagerUpdatePolicy(type_="SOON")
            ),
            "updatePolicy.type",
        ),
        (
            compute_v1.InstanceGroupManager(
                update_policy=compute_v1.InstanceGroupManagerUpdatePolicy(
                    minimal_action="REPLACE", most_disruptive_allowed_action="RESTART"
                )
            ),
            "more disruptive",
        ),
    ]
    for resource, message in bad:
        with pytest.raises(exceptions.BadRequest, match=message):
            patch_zonal(stand, resource)
    after = stand.igms.get(project=PROJECT, zone=ZONE, instance_group_manager="web")
    assert (after.fingerprint, after.instance_template, list(after.versions)) == (
        before.fingerprint,
        before.instance_template,
        list(before.versions),
    )
    with pytest.raises(exceptions.PreconditionFailed):
        patch_zonal(
            stand, compute_v1.InstanceGroupManager(instance_template=f"{TPL}/t2", fingerprint="c3RhbGU=")
        )


def test_patch_request_id_is_one_operation(stand: Stand) -> None:
    zonal(stand, size=2)
    rid = str(uuid.uuid4())
    resource = compute_v1.InstanceGroupManager(
        instance_template=f"{TPL}/t2",
        update_policy=policy(
            max_surge=compute_v1.FixedOrPercent(fixed=1), max_unavailable=compute_v1.FixedOrPercent(fixed=0)
        ),
    )
    first = patch_zonal(stand, resource, rid)
    second = patch_zonal(stand, resource, rid)
    assert first.name == second.name
    assert len([c for c in stand.api.calls("instanceGroupManagers.patch") if c.status == 200]) == 2
    assert len([o for o in stand.backend.ops.all() if o.operation_type == "patch"]) == 1


def test_regional_percent_canary_broken_release_stalls_then_rolls_back(stand: Stand) -> None:
    """A regional MIG through the resource store: a broken canary never gets healthy (the updater
    stalls, getHealth says UNHEALTHY), then versions = [old] puts the group back."""
    hc = stand.health_checks.insert_unary(
        project=PROJECT,
        health_check_resource=compute_v1.HealthCheck(
            name="hc",
            type_="HTTP",
            http_health_check=compute_v1.HTTPHealthCheck(port=80, request_path="/health"),
        ),
    )
    stand.global_ops.wait(project=PROJECT, operation=hc.name)
    insert = stand.rigms.insert_unary(
        project=PROJECT,
        region=REGION,
        instance_group_manager_resource=compute_v1.InstanceGroupManager(
            name="rweb",
            base_instance_name="rweb",
            instance_template=f"{TPL}/t1",
            target_size=4,
            distribution_policy=compute_v1.DistributionPolicy(
                zones=[compute_v1.DistributionPolicyZoneConfiguration(zone=f"zones/{z}") for z in RZONES]
            ),
            update_policy=policy(
                max_surge=compute_v1.FixedOrPercent(fixed=2),
                max_unavailable=compute_v1.FixedOrPercent(fixed=0),
            ),
        ),
    )
    stand.wait_op(insert, region=REGION)
    group = f"projects/{PROJECT}/regions/{REGION}/instanceGroups/rweb"
    bs = stand.backend_services.insert_unary(
        project=PROJECT,
        backend_service_resource=compute_v1.BackendService(
            name="web-bs",
            protocol="HTTP",
            health_checks=[f"projects/{PROJECT}/global/healthChecks/hc"],
            backends=[compute_v1.Backend(group=group)],
        ),
    )
    stand.global_ops.wait(project=PROJECT, operation=bs.name)

    def health() -> dict[str, str]:
        got = stand.backend_services.get_health(
            project=PROJECT,
            backend_service="web-bs",
            resource_group_reference_resource=compute_v1.ResourceGroupReference(group=group),
        )
        return {h.instance.rsplit("/", 1)[1]: h.health_state for h in got.health_status}

    def rigm() -> Any:
        return stand.rigms.get(project=PROJECT, region=REGION, instance_group_manager="rweb")

    wait_until(lambda: rigm().status.is_stable)
    assert set(health().values()) == {"HEALTHY"} and len(health()) == 4
    assert rigm().update_policy.max_surge.fixed == 2
    with pytest.raises(exceptions.BadRequest, match="number of zones"):
        stand.wait_op(
            stand.rigms.patch_unary(
                project=PROJECT,
                region=REGION,
                instance_group_manager="rweb",
                instance_group_manager_resource=compute_v1.InstanceGroupManager(
                    update_policy=policy(max_surge=compute_v1.FixedOrPercent(fixed=1))
                ),
            ),
            region=REGION,
        )
    canary = compute_v1.InstanceGroupManager(
        versions=[
            compute_v1.InstanceGroupManagerVersion(
                name="canary",
                instance_template=f"{TPL}/bad",
                target_size=compute_v1.FixedOrPercent(percent=30),
            ),
            compute_v1.InstanceGroupManagerVersion(name="stable", instance_template=f"{TPL}/t1"),
        ]
    )
    op = stand.rigms.patch_unary(
        project=PROJECT, region=REGION, instance_group_manager="rweb", instance_group_manager_resource=canary
    )
    stand.wait_op(op, region=REGION)
    assert rigm().versions[0].target_size.calculated == 2  # 30 % of 4 rounds up
    wait_until(lambda: sum(1 for m in managed(stand, "rweb", REGION) if m.version.name == "canary") == 2)
    wait_until(lambda: all(m.current_action == "NONE" for m in managed(stand, "rweb", REGION)))
    time.sleep(0.5)
    members = managed(stand, "rweb", REGION)
    bad = {m.name for m in members if m.version.name == "canary"}
    # maxUnavailable 0: the old instances stay until the canary is healthy, which never happens
    assert len(members) == 6 and not rigm().status.version_target.is_reached
    assert {n: s for n, s in health().items() if n in bad} == dict.fromkeys(bad, "UNHEALTHY")
    assert {released(stand, m) for m in members if m.name in bad} == {"broken"}
    # back: one version, the old template
    back = compute_v1.InstanceGroupManager(
        versions=[compute_v1.InstanceGroupManagerVersion(name="stable", instance_template=f"{TPL}/t1")]
    )
    stand.wait_op(
        stand.rigms.patch_unary(
            project=PROJECT,
            region=REGION,
            instance_group_manager="rweb",
            instance_group_manager_resource=back,
        ),
        region=REGION,
    )
    wait_until(lambda: rigm().status.version_target.is_reached and rigm().status.is_stable)
    members = managed(stand, "rweb", REGION)
    assert len(members) == 4 and not bad & {m.name for m in members}
    assert set(health().values()) == {"HEALTHY"}
    assert {m.instance.split("/zones/")[1].split("/")[0] for m in members} == set(RZONES)
