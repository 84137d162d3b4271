"""fleet/gcp/infra.py without any API: configuration checks, desired state, the diff."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pytest

from fleet.commands.agent import startup_script
from fleet.errors import InventoryError
from fleet.gcp import infra
from fleet.inventory.loader import load_defaults, settings_of
from fleet.paths import INVENTORY_ROOT

EXAMPLE = INVENTORY_ROOT / "example-production"


def example_data() -> dict[str, Any]:
    _, defaults, _ = load_defaults(str(EXAMPLE))
    return copy.deepcopy(defaults["data"])


def config(data: dict[str, Any] | None = None, **infra_over: Any) -> infra.InfraConfig:
    raw = data if data is not None else example_data()
    raw["infra"] = {**raw["infra"], **infra_over}
    return infra.config_from_data(settings_of(raw, "test"), "test", username="deploy")


def by_kind(config_: infra.InfraConfig) -> dict[str, list[infra.Desired]]:
    out: dict[str, list[infra.Desired]] = {}
    for d in infra.desired_state(config_):
        out.setdefault(d.kind, []).append(d)
    return out


def test_example_resolves_names_that_match_lb_gce_and_monitoring() -> None:
    c = config()
    assert (c.project, c.region, c.mig, c.fleet) == ("my-dify-project", "europe-west1", "dify-mig", "prod")
    assert c.backend_service == "dify-backend"  # = lb.backend, which rollouts watch
    assert c.zones == ("europe-west1-b", "europe-west1-c", "europe-west1-d")
    assert c.readiness.path == "/health" and c.liveness.path == "/nginx-health"
    assert c.readiness.interval == 5 and c.liveness.unhealthy == 6 and c.initial_delay == 600
    assert c.session_affinity == "CLIENT_IP" and c.draining_timeout == 30
    assert c.domains == ("dify.example.com",) and c.proxy == "dify-mig-https-proxy"
    assert c.project_number == "123456789012"


def test_desired_state_in_dependency_order() -> None:
    kinds = [d.kind for d in infra.desired_state(config())]
    assert kinds == [
        "networks",
        "subnetworks",
        "routers",
        "firewalls",
        "firewalls",
        "firewalls",
        "healthChecks",
        "healthChecks",
        "instanceTemplates",
        "instanceGroupManagers",
        "backendServices",
        "urlMaps",
        "sslCertificates",
        "targetHttpsProxies",
        "forwardingRules",
    ]
    assert [kinds.index(k) for k in infra.ORDER if k in kinds] == sorted(kinds.index(k) for k in set(kinds))


def test_template_private_shielded_with_agent_and_labels() -> None:
    c = config()
    tpl = by_kind(c)["instanceTemplates"][0]
    props = tpl.body["properties"]
    assert props["networkInterfaces"] == [
        {
            "network": "projects/my-dify-project/global/networks/dify-vpc",
            "subnetwork": "projects/my-dify-project/regions/europe-west1/subnetworks/dify-subnet",
        }
    ]  # no accessConfigs: no external IP
    assert all(props["shieldedInstanceConfig"].values())
    items = {i["key"]: i["value"] for i in props["metadata"]["items"]}
    assert items["enable-guest-attributes"] == "TRUE"
    assert items["startup-script"] == startup_script("gs://my-dify-project-fleet/fleets/prod")
    assert (
        items["fleet-mig"] == "projects/my-dify-project/regions/europe-west1/instanceGroupManagers/dify-mig"
    )
    assert items["fleet-store"] == "gs://my-dify-project-fleet/fleets/prod" and items["fleet-beat"] == "first"
    assert items["ssh-keys"].startswith("deploy:ssh-ed25519 ")
    assert props["serviceAccounts"] == [
        {
            "email": "dify-vm@my-dify-project.iam.gserviceaccount.com",
            "scopes": ["https://www.googleapis.com/auth/cloud-platform"],
        }
    ]
    assert props["labels"]["fleet-mig"] == "dify-mig"
    # no external IP: autoheal's per-instance signal is the agent's health metric (monitoring's "auto")
    assert items["fleet-health-metric"] == "true"


@pytest.mark.parametrize(
    ("source", "on"), [("auto", True), ("agent-metric", True), ("uptime", False), ("none", False)]
)
def test_the_health_metric_follows_monitoring_instance_health(source: str, on: bool) -> None:
    data = example_data()
    data["monitoring"]["instance_health"] = {"source": source}
    tpl = by_kind(config(data))["instanceTemplates"][0]
    items = {i["key"]: i["value"] for i in tpl.body["properties"]["metadata"]["items"]}
    assert ("fleet-health-metric" in items) is on


def test_template_name_follows_its_content() -> None:
    first = by_kind(config())["instanceTemplates"][0].name
    again = by_kind(config())["instanceTemplates"][0].name
    bigger = by_kind(config(machine_type="e2-standard-8"))["instanceTemplates"][0].name
    assert first == again and first != bigger and first.startswith("dify-mig-tpl-")


def test_mig_heals_on_liveness_and_lb_reads_readiness() -> None:
    d = by_kind(config())
    mig = d["instanceGroupManagers"][0].body
    assert mig["autoHealingPolicies"] == [
        {"healthCheck": "projects/my-dify-project/global/healthChecks/dify-mig-live", "initialDelaySec": 600}
    ]
    assert mig["namedPorts"] == [{"name": "http", "port": 80}]
    assert len(mig["distributionPolicy"]["zones"]) == 3 and mig["targetSize"] == 3
    backend = d["backendServices"][0].body
    assert backend["healthChecks"] == ["projects/my-dify-project/global/healthChecks/dify-mig-ready"]
    assert backend["sessionAffinity"] == "CLIENT_IP"
    assert backend["connectionDraining"] == {"drainingTimeoutSec": 30}
    checks = {h.name: h.body for h in d["healthChecks"]}
    assert checks["dify-mig-ready"]["httpHealthCheck"]["requestPath"] == "/health"
    assert checks["dify-mig-live"]["httpHealthCheck"]["requestPath"] == "/nginx-health"
    rules = {f.name: f.body for f in d["firewalls"]}
    assert rules["dify-mig-allow-iap-ssh"]["sourceRanges"] == ["35.235.240.0/20"]
    assert rules["dify-mig-allow-health-checks"]["sourceRanges"] == ["35.191.0.0/16", "130.211.0.0/22"]
    assert rules["dify-mig-allow-internal"]["sourceRanges"] == ["10.10.0.0/24"]


def test_without_domains_plain_http_on_80() -> None:
    data = example_data()
    data["monitoring"]["uptime"]["lb_url"] = "http://dify.example.com/health"
    d = by_kind(config(data, domains=[]))
    assert "sslCertificates" not in d and "targetHttpsProxies" not in d
    assert d["targetHttpProxies"][0].name == "dify-mig-http-proxy"
    assert d["forwardingRules"][0].body["portRange"] == "80-80"


def test_adopted_network_and_subnet_are_checked_not_owned() -> None:
    d = by_kind(
        config(
            network={"name": "shared", "create": False},
            subnet={"name": "shared-ew1", "create": False, "cidr": "10.20.0.0/20"},
        )
    )
    assert d["networks"][0].adopt and d["subnetworks"][0].adopt
    assert d["subnetworks"][0].check == ("network", "ipCidrRange")


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"zones": ["europe-west1-b", "europe-west4-a"]}, "not in region europe-west1"),
        ({"zones": ["europe-west1-b"]}, "at least 2"),
        ({"subnet": {"cidr": "10.10.0.1/24"}}, "host bits"),
        ({"subnet": {"cidr": "8.8.8.0/24"}}, "private range"),
        ({"domains": ["Dify.Example.com"]}, "lowercase DNS name"),
        ({"scopes": ["cloud-platform"]}, "OAuth scope URL"),
        ({"service_account": "me@gmail.com"}, "service_account"),
        ({"names": {"router": "Bad_Name"}}, "names.router"),
        ({"colour": "blue"}, "unknown key"),
    ],
)
def test_bad_infra_settings_are_clear_errors(over: dict[str, Any], message: str) -> None:
    with pytest.raises(InventoryError, match=message):
        config(**over)


def test_rules_across_sections() -> None:
    data = example_data()
    data["lb"]["liveness"]["path"] = "/health"
    with pytest.raises(InventoryError, match="drain-aware"):
        config(data)
    data = example_data()
    data["lb"]["check_interval"] = 2.5
    with pytest.raises(InventoryError, match="whole seconds"):
        config(data)
    data = example_data()
    data["gce"]["migs"] = [{"project": "my-dify-project", "zone": "europe-west1-b", "name": "dify-mig"}]
    with pytest.raises(InventoryError, match="regional MIG"):
        config(data)
    data = example_data()
    data["monitoring"]["scale"]["migs"] = ["other-mig"]
    with pytest.raises(InventoryError, match="does not name the MIG"):
        config(data)
    data = example_data()
    del data["store"]
    with pytest.raises(InventoryError, match=r"no data\.store"):
        config(data)
    data = example_data()
    data["infra"]["metadata"] = {"fleet-store": "x"}
    with pytest.raises(InventoryError, match="derives itself"):
        config(data)
    data = example_data()
    data["infra"]["domains"] = []
    with pytest.raises(InventoryError, match=r"lb_url .* is https on dify\.example\.com"):
        config(data)
    data = example_data()
    data["monitoring"]["uptime"]["lb_url"] = "http://dify.example.com/health"
    with pytest.raises(InventoryError, match="the LB serves https"):
        config(data)
    data = example_data()
    del data["infra"]
    with pytest.raises(InventoryError, match=r"no data\.infra"):
        infra.config_from_data(settings_of(data, "t"), "t")


def server_view(want: infra.Desired) -> dict[str, Any]:
    """What Compute answers for a resource created from `want`: full URLs, filled-in fields."""

    def expand(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: expand(v) for k, v in node.items()}
        if isinstance(node, list):
            return [expand(v) for v in node]
        if isinstance(node, str) and node.startswith("projects/"):
            return "https://www.googleapis.com/compute/v1/" + node
        if isinstance(node, int) and not isinstance(node, bool) and node > 100:
            return str(node)  # int64 fields come back as strings
        return node

    return {
        **expand(want.body),
        "id": "123",
        "selfLink": "x",
        "fingerprint": "fp1",
        "kind": "compute#x",
        "creationTimestamp": "2026-01-01T00:00:00Z",
    }


def test_plan_one_actions() -> None:
    c = config()
    d = by_kind(c)
    backend = d["backendServices"][0]
    assert infra.plan_one(backend, None, c.mark).action == "create"
    actual = server_view(backend)
    same = infra.plan_one(backend, actual, c.mark)
    assert same.action == "unchanged", same.changes
    changed = copy.deepcopy(actual)
    changed["connectionDraining"]["drainingTimeoutSec"] = 300
    upd = infra.plan_one(backend, changed, c.mark)
    assert upd.action == "update" and upd.fingerprint == "fp1"
    assert upd.changes == ["connectionDraining.drainingTimeoutSec: 300 -> 30"]
    foreign = {**actual, "description": "made by hand"}
    assert infra.plan_one(backend, foreign, c.mark).action == "conflict"
    rule = d["forwardingRules"][0]
    moved = {**server_view(rule), "portRange": "80-80"}
    assert infra.plan_one(rule, moved, c.mark).action == "replace"
    mig = d["instanceGroupManagers"][0]
    resized = {**server_view(mig), "targetSize": 7}  # size is the scalers' business after creation
    assert infra.plan_one(mig, resized, c.mark).action == "unchanged"
    renamed = {**server_view(mig), "baseInstanceName": "other"}
    conflict = infra.plan_one(mig, renamed, c.mark)
    assert conflict.action == "conflict" and "baseInstanceName" in conflict.note


def test_other_fleets_resources_are_never_orphans() -> None:
    c = config()
    mine = {"name": "old-tpl", "description": f"x ({c.mark} managed)"}
    theirs = {"name": "their-tpl", "description": "x (fleet-infra:prod2; managed)"}
    wanted = {"dify-mig-tpl-1"}
    out = infra.owned_leftovers("instanceTemplates", [mine, theirs], wanted, c.mark, prune=True)
    assert [(o.name, o.action) for o in out] == [("old-tpl", "delete")]
    out = infra.owned_leftovers("instanceGroupManagers", [{**mine, "name": "old-mig"}], set(), c.mark, True)
    assert out[0].action == "orphan"


def test_diff_compares_references_by_path_and_numbers_by_value() -> None:
    assert (
        infra.diff_fields(
            {"a": "projects/p/global/x/y", "n": 50, "f": 1.0, "b": True},
            {
                "a": "https://compute.googleapis.com/compute/v1/projects/p/global/x/y",
                "n": "50",
                "f": 1,
                "b": True,
                "extra": 1,
            },
        )
        == []
    )
    assert infra.diff_fields({"l": [1, 2]}, {"l": [1]}) == [("l", "[1] -> [1, 2]")]
    assert infra.diff_fields({"m": {"k": "v"}}, {}) == [("m", 'null -> {"k": "v"}')]


def test_iam_lines_are_quoted_and_complete() -> None:
    lines = [line.render() for line in infra.iam_lines(config())]
    assert lines[0].startswith("gcloud iam service-accounts create dify-vm --project=my-dify-project")
    assert any(
        "roles/storage.objectViewer" in line and "gs://my-dify-project-fleet" in line for line in lines
    )
    assert any("secrets add-iam-policy-binding dify-db-password" in line for line in lines)
    assert any("service-123456789012@gcp-sa-monitoring-notification" in line for line in lines)
    assert "'--display-name=fleet VMs'" in lines[0]
    no_number = dataclasses.replace(config(), project_number=None)
    assert not any("pubsub" in line.render() for line in infra.iam_lines(no_number))


def test_template_tells_the_agent_how_many_releases_to_keep() -> None:
    """The agent prunes after serving a release, as `fab deploy` does; it keeps app.keep_releases."""
    from fleet.agent import flow

    for keep in (5, 3):
        raw = example_data()
        raw["app"] = {**raw.get("app", {}), "keep_releases": keep}
        tpl = by_kind(config(raw))["instanceTemplates"][0]
        items = {i["key"]: i["value"] for i in tpl.body["properties"]["metadata"]["items"]}
        assert items["fleet-keep-releases"] == str(keep)
        # what the agent on a VM made from this template reads back
        cfg = flow.read_config(FakeMetadata(items))  # type: ignore[arg-type]
        assert cfg.keep_releases == keep


class FakeMetadata:
    """The template's metadata as the metadata server serves it to the VM's agent."""

    def __init__(self, items: dict[str, str]) -> None:
        self.items = items

    def attribute(self, key: str) -> str | None:
        return self.items.get(key)

    def project_attribute(self, key: str) -> str | None:
        return None

    def instance_name(self) -> str:
        return "dify-mig-x1z2"

    def zone(self) -> str:
        return "europe-west1-b"

    def project_id(self) -> str:
        return "my-dify-project"
