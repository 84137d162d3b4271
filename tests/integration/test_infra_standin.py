"""`infra.plan` / `infra.apply` with the real google-cloud-compute client against the local Compute
endpoint (InMemoryCompute behind ComputeApi), and the stand-in's REST semantics for those resources."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.api_core import exceptions as gexc

from fleet.cli.infra import load_config
from fleet.commands.agent import startup_script
from fleet.gcp import infra
from fleet.gcp import migupdate as mu
from fleet.gcp.compute import Compute, mig_ref
from fleet.paths import INVENTORY_ROOT
from functions import fleet_contract as contract
from standins.compute_api import ComputeApi
from standins.compute_state import InMemoryCompute

EXAMPLE = INVENTORY_ROOT / "example-production"
PROJECT = "my-dify-project"
REGION = "europe-west1"
FAB = str(Path(sys.executable).with_name("fab"))
MUTATING = ("insert", "patch", "update", "delete", "setTarget")


@dataclasses.dataclass
class Stand:
    api: ComputeApi
    backend: InMemoryCompute
    config: infra.InfraConfig

    def clients(self, config: infra.InfraConfig | None = None) -> infra.InfraClients:
        return infra.InfraClients(config or self.config, Compute(self.api.url))

    def client(self, name: str) -> Any:
        return Compute(self.api.url).client(name)

    def mutations(self) -> list[str]:
        return [c.method for c in self.api.actions() if c.method.endswith(MUTATING)]


@pytest.fixture
def stand() -> Iterator[Stand]:
    backend = InMemoryCompute(action_seconds=0.05, op_seconds=0.05)
    backend.add_project(PROJECT)
    api = ComputeApi(backend).start()
    try:
        yield Stand(api, backend, load_config(str(EXAMPLE), api.url))
    finally:
        api.stop()
        api.resources.close()
        backend.close()


def plain(message: Any) -> dict[str, Any]:
    return dict(type(message).to_dict(message, preserving_proto_field_name=False))


def test_example_plan_checks_each_item(stand: Stand) -> None:
    """Issue 14 item 7: the example's plan names every Compute item, changes nothing, prints IAM."""
    report = infra.plan(stand.config, stand.clients())
    got = {(ch.kind, ch.name): ch.action for ch in report.changes}
    template = next(n for k, n in got if k == "instanceTemplates")
    cert = next(n for k, n in got if k == "sslCertificates")
    assert got == {
        ("networks", "dify-vpc"): "create",
        ("subnetworks", "dify-subnet"): "create",
        ("routers", "dify-mig-router"): "create",
        ("firewalls", "dify-mig-allow-iap-ssh"): "create",
        ("firewalls", "dify-mig-allow-health-checks"): "create",
        ("firewalls", "dify-mig-allow-internal"): "create",
        ("healthChecks", "dify-mig-ready"): "create",
        ("healthChecks", "dify-mig-live"): "create",
        ("instanceTemplates", template): "create",
        ("instanceGroupManagers", "dify-mig"): "create",
        ("backendServices", "dify-backend"): "create",
        ("urlMaps", "dify-mig-urlmap"): "create",
        ("sslCertificates", cert): "create",
        ("targetHttpsProxies", "dify-mig-https-proxy"): "create",
        ("forwardingRules", "dify-mig-rule"): "create",
    }
    assert stand.mutations() == []
    iam = "\n".join(line.render() for line in report.iam)
    assert "iam service-accounts create dify-vm" in iam
    assert (
        "fleet-functions@my-dify-project.iam.gserviceaccount.com "
        "--role=projects/my-dify-project/roles/fleetFunctions" in iam
    )
    assert "service-123456789012@gcp-sa-monitoring-notification" in iam
    # the filter and the lists went to the endpoint as the client sends them
    lists = [c for c in stand.api.calls() if c.method.endswith(".list")]
    assert lists and all(c.query.get("filter") == 'description eq ".*fleet-infra:prod;.*"' for c in lists)


def test_apply_creates_everything_then_changes_nothing(stand: Stand) -> None:
    first = infra.apply(stand.config, stand.clients())
    assert {ch.action for ch in first.changes} == {"create"} and all(ch.done for ch in first.changes)
    # every write was a long-running operation that the client waited for
    ops = [op.status for op in stand.backend.ops.all()]
    assert len(ops) == 15 and set(ops) == {"DONE"}
    assert any(c.method == "globalOperations.wait" for c in stand.api.calls())
    assert any(c.method == "regionOperations.wait" for c in stand.api.calls())

    get = lambda client, **kw: plain(stand.client(client).get(project=PROJECT, **kw))  # noqa: E731
    backend = get("BackendServicesClient", backend_service="dify-backend")
    assert backend["sessionAffinity"] == "CLIENT_IP"
    assert backend["connectionDraining"]["drainingTimeoutSec"] == 30
    assert backend["healthChecks"][0].endswith("/global/healthChecks/dify-mig-ready")
    assert backend["backends"][0]["group"].endswith("/regions/europe-west1/instanceGroups/dify-mig")
    ready = get("HealthChecksClient", health_check="dify-mig-ready")
    live = get("HealthChecksClient", health_check="dify-mig-live")
    assert (
        ready["httpHealthCheck"]["requestPath"],
        ready["checkIntervalSec"],
        ready["healthyThreshold"],
        ready["unhealthyThreshold"],
    ) == ("/health", 5, 2, 2)
    assert (
        live["httpHealthCheck"]["requestPath"],
        live["checkIntervalSec"],
        live["timeoutSec"],
        live["unhealthyThreshold"],
    ) == ("/nginx-health", 10, 5, 6)

    mig = plain(
        stand.client("RegionInstanceGroupManagersClient").get(
            project=PROJECT, region=REGION, instance_group_manager="dify-mig"
        )
    )
    assert mig["autoHealingPolicies"] == [
        {"healthCheck": "projects/my-dify-project/global/healthChecks/dify-mig-live", "initialDelaySec": 600}
    ]
    assert mig["namedPorts"] == [{"name": "http", "port": 80}]
    assert mig["targetSize"] == 3 and mig["baseInstanceName"] == "dify"
    listed = stand.client("RegionInstanceGroupManagersClient").list(project=PROJECT, region=REGION)
    assert [plain(m)["autoHealingPolicies"] for m in listed] == [mig["autoHealingPolicies"]]
    template_name = mig["instanceTemplate"].rsplit("/", 1)[-1]
    members = Compute(stand.api.url).mig_members(
        mig_ref({"project": PROJECT, "region": REGION, "name": "dify-mig"})
    )
    zones = {m.zone for m in members}
    assert len(members) == 3 and len(zones) >= 2 and zones <= set(stand.config.zones)
    assert all(m.name.startswith("dify-") and m.labels["fleet-mig"] == "dify-mig" for m in members)

    tpl = get("InstanceTemplatesClient", instance_template=template_name)["properties"]
    nic = tpl["networkInterfaces"][0]
    assert "accessConfigs" not in nic or nic["accessConfigs"] == []  # no external IP
    assert nic["subnetwork"].endswith("/regions/europe-west1/subnetworks/dify-subnet")
    assert tpl["shieldedInstanceConfig"] == {
        "enableSecureBoot": True,
        "enableVtpm": True,
        "enableIntegrityMonitoring": True,
    }
    items = {i["key"]: i["value"] for i in tpl["metadata"]["items"]}
    assert items["enable-guest-attributes"] == "TRUE"
    assert items["startup-script"] == startup_script("gs://my-dify-project-fleet/fleets/prod")
    assert tpl["serviceAccounts"] == [
        {
            "email": "dify-vm@my-dify-project.iam.gserviceaccount.com",
            "scopes": ["https://www.googleapis.com/auth/cloud-platform"],
        }
    ]
    assert tpl["labels"] == {"fleet": "prod", "fleet-mig": "dify-mig"}
    router = get("RoutersClient", region=REGION, router="dify-mig-router")
    assert router["nats"][0]["natIpAllocateOption"] == "AUTO_ONLY"
    assert router["nats"][0]["subnetworks"][0]["name"].endswith("/subnetworks/dify-subnet")
    # the firewall rules, as Compute holds them, apply to the network tag the template gives every VM
    assert tpl["tags"] == {"items": ["dify"]}
    rules = {
        name: get("FirewallsClient", firewall=f"dify-mig-{name}")
        for name in ("allow-iap-ssh", "allow-health-checks", "allow-internal")
    }
    assert {
        name: (
            r["sourceRanges"],
            [(a["IPProtocol"], a.get("ports", [])) for a in r["allowed"]],
            r["targetTags"],
        )
        for name, r in rules.items()
    } == {
        "allow-iap-ssh": (["35.235.240.0/20"], [("tcp", ["22"])], ["dify"]),
        "allow-health-checks": (["35.191.0.0/16", "130.211.0.0/22"], [("tcp", ["80"])], ["dify"]),
        "allow-internal": (["10.10.0.0/24"], [("tcp", []), ("udp", []), ("icmp", [])], ["dify"]),
    }
    assert all(r["network"].endswith("/global/networks/dify-vpc") for r in rules.values())
    proxy = get("TargetHttpsProxiesClient", target_https_proxy="dify-mig-https-proxy")
    cert = get("SslCertificatesClient", ssl_certificate=proxy["sslCertificates"][0].rsplit("/", 1)[-1])
    assert cert["type"] == "MANAGED" and cert["managed"]["domains"] == ["dify.example.com"]
    rule = get("GlobalForwardingRulesClient", forwarding_rule="dify-mig-rule")
    assert rule["portRange"] == "443-443" and rule["target"].endswith(
        "/targetHttpsProxies/dify-mig-https-proxy"
    )

    stand.api.clear_calls()
    second = infra.apply(stand.config, stand.clients())
    assert {ch.action for ch in second.changes} == {"unchanged"}
    assert stand.mutations() == [] and stand.api.actions() == []


def test_a_changed_setting_is_exactly_one_update(stand: Stand) -> None:
    infra.apply(stand.config, stand.clients())
    longer = dataclasses.replace(stand.config, draining_timeout=45)
    stand.api.clear_calls()
    report = infra.apply(longer, stand.clients(longer))
    changed = [(ch.kind, ch.action, ch.changes) for ch in report.changes if ch.action != "unchanged"]
    assert changed == [("backendServices", "update", ["connectionDraining.drainingTimeoutSec: 30 -> 45"])]
    assert stand.mutations() == ["backendServices.patch"]
    patch = stand.api.calls("backendServices.patch")[0]
    assert patch.body["fingerprint"]  # Compute refuses a backend-service patch without the current one
    backend = plain(
        stand.client("BackendServicesClient").get(project=PROJECT, backend_service="dify-backend")
    )
    assert backend["connectionDraining"]["drainingTimeoutSec"] == 45
    assert backend["sessionAffinity"] == "CLIENT_IP"  # a patch keeps the rest
    stand.api.clear_calls()
    assert infra.plan(longer, stand.clients(longer)).changed is False


def test_new_template_and_domain_then_prune_deletes_only_owned(stand: Stand) -> None:
    infra.apply(stand.config, stand.clients())
    old = {(ch.kind, ch.name) for ch in infra.plan(stand.config, stand.clients()).changes}
    # somebody else's firewall in the same project: never touched
    t = Compute(stand.api.url).types()
    op = stand.client("FirewallsClient").insert_unary(
        project=PROJECT,
        firewall_resource=t.Firewall(
            name="ops-allow-vpn",
            network=f"projects/{PROJECT}/global/networks/dify-vpc",
            allowed=[t.Allowed(I_p_protocol="tcp", ports=["443"])],
            source_ranges=["10.99.0.0/16"],
        ),
    )
    Compute(stand.api.url).wait(op, project=PROJECT)
    changed = dataclasses.replace(stand.config, machine_type="e2-standard-8", domains=("dify.example.org",))
    plan = infra.plan(changed, stand.clients(changed))
    actions = sorted((ch.kind, ch.action) for ch in plan.changes if ch.action != "unchanged")
    assert actions == [
        ("instanceGroupManagers", "update"),  # pointed at the new template
        ("instanceTemplates", "create"),
        ("instanceTemplates", "orphan"),
        ("sslCertificates", "create"),
        ("sslCertificates", "orphan"),
        ("targetHttpsProxies", "update"),  # pointed at the new certificate
    ]
    infra.apply(changed, stand.clients(changed))
    stand.api.clear_calls()
    pruned = infra.apply(changed, stand.clients(changed), prune=True)
    deleted = sorted((ch.kind, ch.name) for ch in pruned.changes if ch.action == "delete")
    assert [k for k, _ in deleted] == ["instanceTemplates", "sslCertificates"]
    assert set(deleted) <= old
    assert sorted(stand.mutations()) == ["instanceTemplates.delete", "sslCertificates.delete"]
    left = stand.api.resources.dump()
    assert "ops-allow-vpn" in {f["name"] for f in left["firewalls"]}
    assert len(left["instanceTemplates"]) == 1 and len(left["sslCertificates"]) == 1
    stand.api.clear_calls()
    assert infra.apply(changed, stand.clients(changed), prune=True).changed is False


def test_a_renamed_proxy_moves_the_forwarding_rule_with_set_target(stand: Stand) -> None:
    infra.apply(stand.config, stand.clients())
    renamed = dataclasses.replace(stand.config, proxy="dify-https")
    stand.api.clear_calls()
    report = infra.apply(renamed, stand.clients(renamed))
    actions = sorted((ch.kind, ch.name, ch.action) for ch in report.changes if ch.action != "unchanged")
    assert actions == [
        ("forwardingRules", "dify-mig-rule", "update"),
        ("targetHttpsProxies", "dify-https", "create"),
        ("targetHttpsProxies", "dify-mig-https-proxy", "orphan"),
    ]
    assert stand.mutations() == ["targetHttpsProxies.insert", "globalForwardingRules.setTarget"]
    rule = plain(
        stand.client("GlobalForwardingRulesClient").get(project=PROJECT, forwarding_rule="dify-mig-rule")
    )
    assert rule["target"].endswith("/targetHttpsProxies/dify-https")


def test_a_failing_operation_is_a_clear_error_and_a_rerun_finishes(stand: Stand) -> None:
    stand.api.resources.fail_next(
        "backendServices.insert", "QUOTA_EXCEEDED: Quota 'BACKEND_SERVICES' exceeded"
    )
    with pytest.raises(infra.InfraError) as err:
        infra.apply(stand.config, stand.clients())
    text = err.value.render()
    assert "create backend service dify-backend failed" in text and "QUOTA_EXCEEDED" in text
    assert "run infra.apply again" in text
    report = infra.apply(stand.config, stand.clients())
    assert sorted(ch.kind for ch in report.changes if ch.action == "create") == [
        "backendServices",
        "forwardingRules",
        "sslCertificates",
        "targetHttpsProxies",
        "urlMaps",
    ]


def test_a_name_taken_by_someone_else_is_a_conflict(stand: Stand) -> None:
    t = Compute(stand.api.url).types()
    op = stand.client("HealthChecksClient").insert_unary(
        project=PROJECT,
        health_check_resource=t.HealthCheck(
            name="dify-mig-live", type_="TCP", tcp_health_check=t.TCPHealthCheck(port=80)
        ),
    )
    Compute(stand.api.url).wait(op, project=PROJECT)
    stand.api.clear_calls()
    with pytest.raises(infra.InfraError, match="health check dify-mig-live: a resource of this name exists"):
        infra.apply(stand.config, stand.clients())
    assert stand.mutations() == []


def test_an_adopted_network_and_subnet_are_used_never_changed(stand: Stand) -> None:
    """Requirement 1's "or adopt existing ones" against the endpoint: `create: false` resources that
    exist and match are `adopt` (the rest is built on them, they get no mark and no call); a missing
    one, or a subnet on another CIDR, is a conflict and apply changes nothing."""
    compute = Compute(stand.api.url)
    t = compute.types()
    adopted = dataclasses.replace(
        stand.config,
        network="shared",
        create_network=False,
        subnet="shared-ew1",
        create_subnet=False,
        cidr="10.20.0.0/20",
    )
    stand.api.clear_calls()
    with pytest.raises(infra.InfraError, match="adopted from the inventory, but it does not exist"):
        infra.apply(adopted, stand.clients(adopted))
    assert stand.mutations() == []

    op = stand.client("NetworksClient").insert_unary(
        project=PROJECT,
        network_resource=t.Network(name="shared", auto_create_subnetworks=False, description="by hand"),
    )
    compute.wait(op, project=PROJECT)
    op = stand.client("SubnetworksClient").insert_unary(
        project=PROJECT,
        region=REGION,
        subnetwork_resource=t.Subnetwork(
            name="shared-ew1",
            network=f"projects/{PROJECT}/global/networks/shared",
            ip_cidr_range="10.20.0.0/16",
        ),
    )
    compute.wait(op, project=PROJECT, region=REGION)
    stand.api.clear_calls()
    with pytest.raises(infra.InfraError, match="differs from the inventory"):
        infra.apply(adopted, stand.clients(adopted))
    assert stand.mutations() == []
    plan = infra.plan(adopted, stand.clients(adopted))
    (subnet,) = [ch for ch in plan.changes if ch.kind == "subnetworks"]
    assert subnet.action == "conflict" and subnet.changes == ["ipCidrRange: 10.20.0.0/16 -> 10.20.0.0/20"]

    matching = dataclasses.replace(adopted, cidr="10.20.0.0/16")
    stand.api.clear_calls()
    report = infra.apply(matching, stand.clients(matching))
    actions = {(ch.kind, ch.name): ch.action for ch in report.changes}
    assert actions[("networks", "shared")] == "adopt" and actions[("subnetworks", "shared-ew1")] == "adopt"
    assert {a for (kind, _), a in actions.items() if kind not in ("networks", "subnetworks")} == {"create"}
    assert not [m for m in stand.mutations() if m.startswith(("networks.", "subnetworks."))]
    network = plain(stand.client("NetworksClient").get(project=PROJECT, network="shared"))
    assert network["description"] == "by hand"  # no mark: never ours, never pruned
    router = plain(
        stand.client("RoutersClient").get(project=PROJECT, region=REGION, router="dify-mig-router")
    )
    assert router["network"].endswith("/global/networks/shared")
    assert router["nats"][0]["subnetworks"][0]["name"].endswith(f"/regions/{REGION}/subnetworks/shared-ew1")
    rules = [plain(r) for r in stand.client("FirewallsClient").list(project=PROJECT)]
    internal = next(r for r in rules if r["name"] == "dify-mig-allow-internal")
    assert internal["network"].endswith("/global/networks/shared") and internal["sourceRanges"] == [
        "10.20.0.0/16"
    ]
    pruned = infra.apply(matching, stand.clients(matching), prune=True)
    assert not pruned.changed and stand.client("NetworksClient").get(project=PROJECT, network="shared")


# --- the stand-in's REST semantics, with the real client -----------------------------------------


def test_standin_rest_semantics(stand: Stand) -> None:
    compute = Compute(stand.api.url)
    t = compute.types()
    nets = stand.client("NetworksClient")
    op = nets.insert_unary(
        project=PROJECT, network_resource=t.Network(name="n1", auto_create_subnetworks=False)
    )
    assert op.status == t.Operation.Status.PENDING  # the network exists once the operation is DONE
    compute.wait(op, project=PROJECT)
    with pytest.raises(gexc.Conflict, match="already exists"):
        nets.insert_unary(project=PROJECT, network_resource=t.Network(name="n1"))
    with pytest.raises(gexc.NotFound):
        nets.get(project=PROJECT, network="n2")
    # the same requestId again: the same operation, nothing done twice (not a 409)
    rid = "8c0f2a8e-6a8b-4f55-9a55-2b1b5b0f4a11"
    req = t.InsertNetworkRequest(project=PROJECT, network_resource=t.Network(name="n3"), request_id=rid)
    first = nets.insert_unary(request=req)
    compute.wait(first, project=PROJECT)
    assert nets.insert_unary(request=req).name == first.name
    subnets = stand.client("SubnetworksClient")
    with pytest.raises(gexc.BadRequest, match="ipCidrRange"):
        subnets.insert_unary(
            project=PROJECT,
            region=REGION,
            subnetwork_resource=t.Subnetwork(
                name="s1", network="projects/my-dify-project/global/networks/n1", ip_cidr_range="10.0.0.1/24"
            ),
        )
    with pytest.raises(gexc.NotFound, match="networks/ghost"):
        subnets.insert_unary(
            project=PROJECT,
            region=REGION,
            subnetwork_resource=t.Subnetwork(
                name="s1",
                network="projects/my-dify-project/global/networks/ghost",
                ip_cidr_range="10.0.0.0/24",
            ),
        )
    # a health check in use cannot be deleted; a stale fingerprint is refused
    checks = stand.client("HealthChecksClient")
    for name in ("hc-a", "hc-b", "hc-c"):
        compute.wait(
            checks.insert_unary(
                project=PROJECT,
                health_check_resource=t.HealthCheck(
                    name=name, type_="HTTP", http_health_check=t.HTTPHealthCheck(port=80, request_path="/")
                ),
            ),
            project=PROJECT,
        )
    services = stand.client("BackendServicesClient")
    compute.wait(
        services.insert_unary(
            project=PROJECT,
            backend_service_resource=t.BackendService(
                name="be", health_checks=["projects/my-dify-project/global/healthChecks/hc-a"]
            ),
        ),
        project=PROJECT,
    )
    with pytest.raises(gexc.BadRequest, match="already being used by"):
        checks.delete_unary(project=PROJECT, health_check="hc-a")
    with pytest.raises(gexc.PreconditionFailed):
        services.patch_unary(
            project=PROJECT,
            backend_service="be",
            backend_service_resource=t.BackendService(fingerprint="stale", timeout_sec=60),
        )
    # list: the filter and the pages as the client sends them
    listed = list(checks.list(request=t.ListHealthChecksRequest(project=PROJECT, max_results=2)))
    assert [h.name for h in listed] == ["hc-a", "hc-b", "hc-c"]
    pages = [c.query.get("pageToken") for c in stand.api.calls("healthChecks.list")]
    assert pages == [None, "2"]
    hits = checks.list(request=t.ListHealthChecksRequest(project=PROJECT, filter='name = "hc-b"'))
    assert [h.name for h in hits] == ["hc-b"]
    with pytest.raises(gexc.BadRequest, match="filter"):
        list(checks.list(request=t.ListHealthChecksRequest(project=PROJECT, filter="name ~~ x")))


def test_mig_insert_needs_a_backend_that_can_create_one(stand: Stand) -> None:
    class NoCreate(InMemoryCompute):
        add_mig = None  # type: ignore[assignment]  # like the Docker-backed local MIG

    backend = NoCreate()
    backend.add_project(PROJECT)
    with ComputeApi(backend) as api:
        status, body = api.dispatch(
            "POST",
            f"/compute/v1/projects/{PROJECT}/regions/{REGION}/instanceGroupManagers",
            json.dumps(
                {"name": "m", "baseInstanceName": "m", "instanceTemplate": "x", "targetSize": 1}
            ).encode(),
        )
        api.resources.close()
    backend.close()
    assert status == 400 and "cannot create a MIG" in body["error"]["message"]


# --- the CLI -------------------------------------------------------------------------------------


def fab(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    return subprocess.run([FAB, *args], capture_output=True, text=True, timeout=120, env=env)


def test_cli_plan_then_apply(stand: Stand, capsys: pytest.CaptureFixture[str]) -> None:
    from invoke.exceptions import Exit

    from fleet.cli import infra as tasks

    # the task bodies in-process (their rendering), then the real `fab` once (a start costs seconds)
    tasks.plan_.body(None, inventory=str(EXAMPLE), endpoint=stand.api.url)
    out = capsys.readouterr().out
    assert "15 create" in out and "run `fab infra.apply`" in out
    # the example's data layer is on Google's APIs, which cannot be read here: said, and the plan goes on
    assert "data layer: not checked: data layer check: no Google credentials" in out
    assert "gcloud iam service-accounts create dify-vm --project=my-dify-project" in out
    assert stand.mutations() == []
    applied = fab("infra.apply", "--inventory", str(EXAMPLE), "--endpoint", stand.api.url, "--json")
    assert applied.returncode == 0, applied.stderr
    assert json.loads(applied.stdout)["counts"] == {"create": 15}
    assert {ch["action"] for ch in json.loads(applied.stdout)["changes"]} == {"create"}
    tasks.apply_.body(None, inventory=str(EXAMPLE), endpoint=stand.api.url)
    assert "15 unchanged" in capsys.readouterr().out
    with pytest.raises(Exit) as bad:  # bad input: exit code 2 and the error, as every task
        tasks.plan_.body(None, inventory=str(INVENTORY_ROOT / "no-such-inventory"))
    assert bad.value.code == 2 and "no-such-inventory" in capsys.readouterr().err


def test_the_plan_shows_the_data_layers_findings(
    stand: Stand, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 14 item 2 inside `infra.plan`: what the data layer lacks, with the commands, beside the
    Compute plan. The example's data layer pointed at the (empty) local stand-in of those APIs. The
    Compute plan and the data layer check share one read of defaults.yaml."""
    from fleet.cli import infra as tasks
    from fleet.inventory import loader
    from standins.datalayer_api import LocalDataLayerApi

    reads: list[str] = []
    read_yaml = loader._read_yaml

    def counting(path: Path, *args: Any, **kwargs: Any) -> Any:
        reads.append(path.name)
        return read_yaml(path, *args, **kwargs)

    monkeypatch.setattr(loader, "_read_yaml", counting)

    inventory = tmp_path / "prod"
    shutil.copytree(EXAMPLE, inventory)
    defaults = yaml.safe_load((inventory / "defaults.yaml").read_text())
    with LocalDataLayerApi() as data_api:
        defaults["data"]["data_layer"]["endpoints"] = {
            api: data_api.url for api in ("sqladmin", "redis", "storage", "compute")
        }
        (inventory / "defaults.yaml").write_text(yaml.safe_dump(defaults))
        tasks.plan_.body(None, inventory=str(inventory), json_=True, endpoint=stand.api.url)
        report = json.loads(capsys.readouterr().out)
        assert reads == ["defaults.yaml"], "one read for the Compute plan and the data layer check"
        tasks.plan_.body(None, inventory=str(inventory), endpoint=stand.api.url)
        text = capsys.readouterr().out
        assert reads == ["defaults.yaml"] * 2
    assert report["counts"] == {"create": 15}  # the Compute plan is whole
    layer = report["data_layer"]
    assert layer["checked"] is True and layer["ok"] is False
    missing = {(f["resource"], f["property"]) for f in layer["findings"] if f["severity"] == "error"}
    sql = defaults["data"]["data_layer"]["sql_instance"]
    redis = defaults["data"]["data_layer"]["redis_instance"]
    assert (f"cloudsql/{sql}", "instance") in missing and (f"redis/{redis}", "instance") in missing
    assert any(c.startswith(f"gcloud sql instances create {sql} ") for c in layer["commands"])
    assert f"gcloud sql instances create {sql} " in text and "15 create" in text
    assert stand.mutations() == []


def test_a_replace_rollouts_release_template_is_not_drift(stand: Stand) -> None:
    """After (or during) `fab rollout --strategy replace` the MIG runs a release template made from the
    template infra wants: infra.plan keeps it; a template made from another base is still moved."""
    infra.apply(stand.config, stand.clients())
    ref = contract.MigRef(PROJECT, REGION, "dify-mig")
    move = mu.MigMove(Compute(stand.api.url), ref, "", poll=0.05)
    base = move.current_template()
    release, _body, created = move.release_template(base, "r-0123456789ab", "1.1.0")
    assert created and release != base
    move.set_template(release)

    stand.api.clear_calls()
    report = infra.apply(stand.config, stand.clients())
    mig = next(ch for ch in report.changes if ch.kind == "instanceGroupManagers")
    assert (mig.action, mig.changes) == ("unchanged", [])
    assert release in mig.note and "r-0123456789ab" in mig.note and base in mig.note
    assert report.changed is False and stand.mutations() == []
    assert move.current_template() == release

    # another setting of the MIG changes: patched, and the release template stays
    healing = dataclasses.replace(stand.config, initial_delay=900)
    report = infra.apply(healing, stand.clients(healing))
    mig = next(ch for ch in report.changes if ch.kind == "instanceGroupManagers")
    assert mig.action == "update" and [c.split(":")[0] for c in mig.changes] == [
        "autoHealingPolicies[0].initialDelaySec"
    ]
    assert move.current_template() == release

    # the inventory changes the template: the MIG moves to the new base (its VMs' agent reads the release)
    bigger = dataclasses.replace(healing, machine_type="e2-standard-8")
    report = infra.apply(bigger, stand.clients(bigger))
    mig = next(ch for ch in report.changes if ch.kind == "instanceGroupManagers")
    assert mig.action == "update" and mig.changes[0].startswith("instanceTemplate:")
    assert move.current_template() not in (base, release)
    assert infra.plan(bigger, stand.clients(bigger)).changed is False


def test_a_template_that_only_claims_the_base_is_drift(stand: Stand) -> None:
    infra.apply(stand.config, stand.clients())
    ref = contract.MigRef(PROJECT, REGION, "dify-mig")
    move = mu.MigMove(Compute(stand.api.url), ref, "", poll=0.05)
    base = move.current_template()
    found = move.template(base)
    assert found is not None
    props = mu.release_properties(found, "r-0123456789ab", "1.1.0")
    props["machineType"] = "e2-micro"  # made by hand, naming the base: not what infra would keep
    t = Compute(stand.api.url).types()
    op = stand.client("InstanceTemplatesClient").insert_unary(
        project=PROJECT,
        instance_template_resource=t.InstanceTemplate.from_json(
            json.dumps({"name": "by-hand", "properties": props}), ignore_unknown_fields=True
        ),
    )
    Compute(stand.api.url).wait(op, project=PROJECT)
    move.set_template("by-hand")
    mig = next(
        ch for ch in infra.plan(stand.config, stand.clients()).changes if ch.kind == "instanceGroupManagers"
    )
    assert mig.action == "update" and mig.changes[0].startswith("instanceTemplate:")


def test_the_examples_cpu_policies_select_the_members_infra_apply_made(stand: Stand, tmp_path: Path) -> None:
    """Issue 14 items 5 and 7 on the example itself: the CPU conditions `monitoring.apply` derives from
    inventory/example-production select the MIG's members by the label the template infra.apply made
    gives them, not by a name prefix (its base instance name `dify` is not the MIG's name). The
    inventory is loaded as an operator would, its hosts discovered from the MIG apply created."""
    from fleet import inventory
    from fleet.alerting import policies as mon
    from standins import monitoring_filter as mf

    infra.apply(stand.config, stand.clients())
    prod = tmp_path / "prod"
    shutil.copytree(EXAMPLE, prod)
    doc = yaml.safe_load((prod / "defaults.yaml").read_text())
    (prod / "deploy_key").write_text("placeholder\n")
    doc["data"]["ssh"]["key_file"] = "deploy_key"
    doc["data"]["gce"]["api_endpoint"] = stand.api.url
    (prod / "defaults.yaml").write_text(yaml.safe_dump(doc))
    inv = inventory.load(str(prod))
    members = Compute(stand.api.url).mig_members(
        mig_ref({"project": PROJECT, "region": REGION, "name": "dify-mig"})
    )
    assert sorted(inv.hosts) == sorted(m.name for m in members) and len(members) == 3
    assert stand.config.base_instance_name == "dify" and stand.config.mig == "dify-mig"

    mig = plain(
        stand.client("RegionInstanceGroupManagersClient").get(
            project=PROJECT, region=REGION, instance_group_manager="dify-mig"
        )
    )
    template = mig["instanceTemplate"].rsplit("/", 1)[-1]
    template_labels = plain(
        stand.client("InstanceTemplatesClient").get(project=PROJECT, instance_template=template)
    )["properties"]["labels"]

    config = mon.config_from_inventory(inv, {})
    assert config.project_number == "123456789012"  # the Monitoring service agent's publisher binding
    policies = {d.key: d.message for d in mon.desired_state(config, {}) if d.kind == "alert_policy"}
    for key, comparison in (("policy-scale-out-dify-mig", "GT"), ("policy-scale-in-dify-mig", "LT")):
        cpu = next(
            c.condition_threshold
            for c in policies[key].conditions
            if mon.CPU_METRIC in c.condition_threshold.filter
        )
        assert cpu.comparison.name == f"COMPARISON_{comparison}"
        found = mf.parse(cpu.filter)
        assert not any("name" in c.selector or c.op != "=" for c in found), cpu.filter
        (selector,) = [c for c in found if c.selector.startswith("metadata.user_labels.")]
        key_, (value,) = mf.label_key(selector.selector), selector.args
        # every member carries that label with that value, and it came from the template
        assert {m.labels.get(key_) for m in members} == {value}
        assert template_labels[key_] == value
