"""The local fleet runs from what `infra.apply` created (issue 14), without Docker: the Docker-backed MIG
(fleet/local/compute_docker.py over a fake fleet) behind the real ComputeApi, the local inventory's
`infra/` applied by fleet/local/infrasetup.py with the real google-cloud-compute client.

Checked: the first apply creates everything and the MIG adopts the regional insert, a second apply
changes nothing; the MIG's template is the one apply made, and a member made from it shows its
labels, metadata (startup script), service account; the autohealing policy and the LB's settings are
read back from the MIG and the backend service, a patched backend service reaches the LB; what apply
made survives an endpoint restart; a MIG the local fleet cannot hold is refused.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleet.commands.agent import startup_script
from fleet.gcp import infra
from fleet.gcp.compute import Compute
from fleet.local import compute_endpoint, fromapi, infrasetup
from fleet.local.compute_docker import DockerCompute
from fleet.local.config import LocalConfig
from fleet.local.lb import BackendConfig
from functions import fleet_contract as contract
from standins.autohealing import HealingPolicy
from standins.compute_api import ComputeApi
from tests.unit.test_local_autohealing import FakeFleet, instance

OVERRIDES = {"fleet-compute-endpoint": "http://10.0.0.1:9/compute/v1"}


class RecordingLb:
    """The fleet's LB as the endpoint drives it: what it was configured with."""

    def __init__(self) -> None:
        self.configured: list[BackendConfig] = []

    def running(self) -> bool:
        return False

    def configure(self, backend: BackendConfig) -> bool:
        changed = not self.configured or self.configured[-1] != backend
        self.configured.append(backend)
        return changed


@dataclasses.dataclass
class Local:
    config: LocalConfig
    fleet: FakeFleet
    lb: RecordingLb
    backend: DockerCompute
    api: ComputeApi

    @property
    def compute(self) -> Compute:
        return Compute(self.api.url, op_timeout=30)


def start(config: LocalConfig, fleet: FakeFleet) -> tuple[DockerCompute, ComputeApi]:
    state = compute_endpoint.state_dir(config) / "state.json"
    backend = DockerCompute(fleet, state, log=lambda _line: None, overrides=lambda: OVERRIDES)  # type: ignore[arg-type]
    api = ComputeApi(backend).start()
    # where infrasetup finds the endpoint (as LocalFleet.start_compute leaves it)
    compute_endpoint.endpoint_file(config).write_text(
        json.dumps({"pid": 1, "port": api.port, "url": api.url})
    )
    return backend, api


def stop(backend: DockerCompute, api: ComputeApi) -> None:
    api.stop()
    api.resources.close()
    backend.close()


@pytest.fixture
def local(tmp_path: Path) -> Iterator[Local]:
    config = LocalConfig(
        root=tmp_path,
        name="t",
        container_prefix="fleet-t",
        host_prefix="t",
        subnet="10.230.0.0/24",
        autohealing=True,
        lb={"liveness": {"check_interval": 4, "unhealthy_threshold": 3, "initial_delay": 30}},
    )
    lb = RecordingLb()
    fleet = FakeFleet(config, {f"t-{i}": instance(i) for i in (1, 2)}, lb=lb)  # type: ignore[arg-type]
    backend, api = start(config, fleet)
    stand = Local(config, fleet, lb, backend, api)
    try:
        yield stand
    finally:
        stop(stand.backend, stand.api)


def created(report: infra.InfraReport, kind: str) -> list[str]:
    return [ch.name for ch in report.changes if ch.kind == kind and ch.action == "create" and ch.done]


def plain(message: Any) -> dict[str, Any]:
    return dict(type(message).to_dict(message, preserving_proto_field_name=False))


def test_apply_twice_the_mig_runs_from_what_it_created(local: Local) -> None:
    cfg = local.config
    first = infrasetup.apply(cfg, 2)
    assert not first.conflicts
    (template,) = created(first, "instanceTemplates")
    assert created(first, "healthChecks") == ["t-readiness", "t-liveness"]
    assert created(first, "instanceGroupManagers") == ["t-mig"]
    assert created(first, "backendServices") == [cfg.backend]
    assert {ch.action for ch in first.changes} == {"create"}

    local.api.clear_calls()
    second = infrasetup.apply(cfg, 2)
    assert not second.changed and {ch.action for ch in second.changes} == {"unchanged"}
    assert [c.method for c in local.api.calls() if not c.method.endswith((".get", ".list", "wait"))] == []

    # the MIG (zonal, as the fleet's tools see it, and regional, as infra made it) runs the template
    url = f"https://www.googleapis.com/compute/v1/projects/{cfg.project}/global/instanceTemplates/{template}"
    zonal = local.compute.mig(contract.MigRef.make(cfg.project, cfg.zone, "t-mig"))
    assert zonal.instance_template == url
    regional = plain(
        local.compute.client("RegionInstanceGroupManagersClient").get(
            project=cfg.project, region="europe-west1", instance_group_manager="t-mig"
        )
    )
    assert url.endswith(regional["instanceTemplate"]) and regional["baseInstanceName"] == "t"
    assert [z["zone"].rsplit("/", 1)[-1] for z in regional["distributionPolicy"]["zones"]] == [
        "europe-west1-b",
        "europe-west1-c",
    ]
    assert infrasetup.mig_template(cfg) == url
    live = cfg.lb_settings.liveness
    (policy,) = regional["autoHealingPolicies"]
    assert policy["healthCheck"].endswith("/global/healthChecks/t-liveness")
    assert policy["initialDelaySec"] == live.initial_delay

    # a member made from the template (stamped by LocalFleet._create) carries what the template says
    local.fleet.records["t-1"] = dataclasses.replace(local.fleet.records["t-1"], template=url)
    member = plain(local.compute.instance(cfg.project, cfg.zone, "t-1"))
    assert member["labels"] == {"fleet": "t", contract.INSTANCE_MIG_LABEL: "t-mig"}
    items = {i["key"]: i["value"] for i in member["metadata"]["items"]}
    assert items["startup-script"] == startup_script(cfg.store_url)
    assert items["instance-template"] == f"projects/{cfg.project}/global/instanceTemplates/{template}"
    assert items["created-by"] == f"projects/{cfg.project}/regions/europe-west1/instanceGroupManagers/t-mig"
    assert items["fleet-mig"] == items["created-by"] and items["fleet-report-interval"] == "3"
    assert items["fleet-compute-endpoint"] == OVERRIDES["fleet-compute-endpoint"]  # the stand-in's
    assert member["serviceAccounts"] == [
        {
            "email": f"fleet-vm@{cfg.project}.iam.gserviceaccount.com",
            "scopes": ["https://www.googleapis.com/auth/cloud-platform"],
        }
    ]
    assert member["tags"] == {"items": ["t-mig"]}
    metadata, account, _scopes = local.backend.instance_metadata(local.fleet.records["t-1"])
    assert metadata["startup-script"] == items["startup-script"] and account.startswith("fleet-vm@")

    # read back: the autohealing policy from the MIG, the LB's settings from the backend service
    assert local.backend.sync_resources()
    assert local.backend.healer is not None
    healing = local.backend.healer.policy
    assert isinstance(healing, HealingPolicy) and healing.initial_delay == live.initial_delay
    check = healing.health_check
    assert (check.path, check.port, check.check_interval, check.timeout) == (live.path, 80, 4, live.timeout)
    assert (check.healthy_threshold, check.unhealthy_threshold) == (live.healthy_threshold, 3)
    inventory = BackendConfig.from_settings(cfg.lb_settings)
    assert local.lb.configured == [inventory] == [infrasetup.backend_config(cfg)]
    assert not local.backend.sync_resources()  # nothing changed since


def test_a_patched_backend_service_reaches_the_lb_and_apply_puts_it_back(local: Local) -> None:
    cfg = local.config
    infrasetup.apply(cfg, 2)
    local.backend.sync_resources()
    client = local.compute.client("BackendServicesClient")
    service = client.get(project=cfg.project, backend_service=cfg.backend)
    patch = local.compute.types().BackendService(
        session_affinity="CLIENT_IP",
        connection_draining=local.compute.types().ConnectionDraining(draining_timeout_sec=42),
        fingerprint=service.fingerprint,
    )
    local.compute.wait(
        client.patch_unary(project=cfg.project, backend_service=cfg.backend, backend_service_resource=patch),
        project=cfg.project,
    )
    assert local.backend.sync_resources()
    got = local.lb.configured[-1]
    assert (got.session_affinity, got.draining_timeout) == ("CLIENT_IP", 42.0)
    assert got.balance_lines() == ["balance source", "hash-type consistent"]

    report = infrasetup.apply(cfg, 2)  # the inventory says NONE / 10 s: the drift is put back
    (change,) = [ch for ch in report.changes if ch.action != "unchanged"]
    assert (change.kind, change.action) == ("backendServices", "update")
    local.backend.sync_resources()
    assert local.lb.configured[-1] == BackendConfig.from_settings(cfg.lb_settings)


def test_what_apply_made_survives_an_endpoint_restart(local: Local) -> None:
    cfg = local.config
    infrasetup.apply(cfg, 2)
    local.backend.sync_resources()
    stop(local.backend, local.api)
    local.backend, local.api = start(cfg, local.fleet)
    assert not infrasetup.apply(cfg, 2).changed  # restored from resources.json
    local.backend.sync_resources()
    assert local.backend.healer is not None

    # turning the policy off is a change the client cannot send (an empty list): said, nothing changed
    off = dataclasses.replace(cfg, autohealing=False)
    (change,) = [ch for ch in infrasetup.infra_plan(off, 2).changes if ch.action != "unchanged"]
    assert (change.kind, change.action, change.changes[0].split(":")[0]) == (
        "instanceGroupManagers",
        "update",
        "autoHealingPolicies",
    )
    cfg_off = infrasetup.infra_config(off, 2)
    with pytest.raises(infra.InfraError, match="cannot clear autoHealingPolicies"):  # the product says so
        infra.apply(cfg_off, infra.InfraClients(cfg_off, Compute(cfg_off.endpoint, op_timeout=30)))
    local.backend.sync_resources()
    assert local.backend.healer is not None
    assert not infrasetup.apply(off, 2).changed  # the local fleet clears it first (a raw PATCH)
    local.backend.sync_resources()
    assert local.backend.healer is None
    assert not plain(
        local.compute.client("RegionInstanceGroupManagersClient").get(
            project=cfg.project, region="europe-west1", instance_group_manager="t-mig"
        )
    ).get("autoHealingPolicies")


def test_a_mig_the_local_fleet_cannot_hold_is_refused(local: Local) -> None:
    cfg = infrasetup.infra_config(local.config, 2)
    other = dataclasses.replace(cfg, mig="other-mig", base_instance_name="other")
    with pytest.raises(infra.InfraError, match="holds one MIG: t-mig"):
        infra.apply(other, infra.InfraClients(other, Compute(cfg.endpoint, op_timeout=30)))


def test_template_spec_and_translations_refuse_what_cannot_work() -> None:
    with pytest.raises(Exception, match="no startup-script"):
        fromapi.template_spec({"name": "x", "properties": {"metadata": {"items": []}}})
    with pytest.raises(Exception, match="has no health check"):
        fromapi.backend_config({"name": "b"}, lambda _url: None)
    assert fromapi.healing_policy({"autoHealingPolicies": []}, lambda _url: None) is None
