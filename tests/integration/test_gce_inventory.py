"""Hosts from MIGs: inventory.load reads zonal and regional MIG members with the real
google-cloud-compute client from a local Compute endpoint, merges groups/defaults, and marks the
members tasks must skip; `fab hosts` shows them with status and action."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleet import inventory
from fleet.errors import FleetError, InventoryError
from fleet.gcp.compute import natural_key
from standins.compute_api import ComputeApi
from standins.compute_state import InMemoryCompute
from tests.fixtures.sshd import fab

PROJECT = "my-project"
ZONE = "europe-west1-b"
REGION = "europe-west1"


@pytest.fixture
def api() -> Iterator[tuple[ComputeApi, InMemoryCompute]]:
    backend = InMemoryCompute(action_seconds=0.1, op_seconds=0.05)
    backend.add_mig(PROJECT, ZONE, "dify-mig", size=2, base_instance_name="dify")
    backend.add_mig(
        PROJECT, REGION, "dify-r", size=2, base_instance_name="dify-r", zones=[f"{REGION}-c", f"{REGION}-d"]
    )
    server = ComputeApi(backend).start()
    yield server, backend
    server.stop()
    backend.close()


def write_inventory(path: Path, gce: dict[str, Any], hosts: dict[str, Any] | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "id_ed25519").write_text("not a real key: nothing connects in this module\n")
    defaults = {
        "username": "deploy",
        "data": {"ssh": {"key_file": "id_ed25519", "proxy": "iap"}, "roles": ["app"], "gce": gce},
    }
    groups = {"app": {"data": {"app": {"keep_releases": 3}}}, "dify-r": {"data": {"vars": {"TIER": "r"}}}}
    (path / "defaults.yaml").write_text(yaml.safe_dump(defaults))
    (path / "groups.yaml").write_text(yaml.safe_dump(groups))
    if hosts is not None:
        (path / "hosts.yaml").write_text(yaml.safe_dump(hosts))
    return path


def gce_settings(url: str, **extra: Any) -> dict[str, Any]:
    return {
        "project": PROJECT,
        "api_endpoint": url,
        "migs": [
            {"zone": ZONE, "name": "dify-mig"},
            {"project": PROJECT, "region": REGION, "name": "dify-r"},
        ],
        "member_groups": ["app"],
        "beat": "first",
        **extra,
    }


def test_members_of_zonal_and_regional_migs_become_hosts(
    api: tuple[ComputeApi, InMemoryCompute], tmp_path: Path
) -> None:
    server, backend = api
    inv = inventory.load(str(write_inventory(tmp_path / "prod", gce_settings(server.url))))
    zonal = backend.member_names(PROJECT, ZONE, "dify-mig")
    regional = backend.member_names(PROJECT, REGION, "dify-r")
    assert set(inv.hosts) == {*zonal, *regional}
    state = {i["name"]: i for i in backend.dump()["instances"]}
    for name, h in inv.hosts.items():
        assert h.get("gce.instance") == name and h.get("gce.instance_id") == state[name]["id"]
        assert h.get("gce.zone") == state[name]["zone"].rsplit("/", 1)[1]
        assert h.get("gce.status") == "RUNNING" and h.get("gce.current_action") == "NONE"
        assert h.get("app.keep_releases") == 3  # member_groups -> group data merged
    for name in regional:
        assert inv.hosts[name].groups == ("dify-r", "app")  # the MIG's own group, when defined
        assert inv.hosts[name].get("gce.mig") == f"{PROJECT}/{REGION}/dify-r"
        assert inv.hosts[name].get("vars.TIER") == "r"
    assert {inv.hosts[n].get("gce.zone") for n in regional} == {f"{REGION}-c", f"{REGION}-d"}
    first = min(inv.hosts, key=natural_key)
    assert [n for n, h in inv.hosts.items() if "beat" in h.get("roles")] == [first]
    calls = {c.method for c in server.calls()}
    assert {
        "instanceGroupManagers.listManagedInstances",
        "regionInstanceGroupManagers.listManagedInstances",
        "instances.list",
    } <= calls


def test_members_not_running_or_busy_are_listed_and_skipped(
    api: tuple[ComputeApi, InMemoryCompute], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server, backend = api
    stopping, busy = backend.member_names(PROJECT, ZONE, "dify-mig")
    backend.update_instance(PROJECT, ZONE, stopping, status="STOPPING")
    backend.update_instance(PROJECT, ZONE, busy, current_action="RECREATING")
    path = write_inventory(tmp_path / "prod", gce_settings(server.url))
    inv = inventory.load(str(path))
    assert len(inv.hosts) == 4
    ready = inventory.select(inv)
    assert {h.name for h in ready} == set(backend.member_names(PROJECT, REGION, "dify-r"))
    err = capsys.readouterr().err
    assert f"skipped {stopping}: instance is STOPPING, not RUNNING" in err
    assert f"skipped {busy}: MIG action RECREATING in progress" in err
    assert len(inventory.select(inv, include_unready=True)) == 4

    r = fab("hosts", "--inventory", str(path), "--json")
    assert r.returncode == 0, r.stderr
    rows = {row["host"]: row for row in json.loads(r.stdout)["hosts"]}
    assert rows[stopping]["status"] == "STOPPING" and rows[stopping]["skip_reason"].startswith("instance is")
    assert rows[busy]["current_action"] == "RECREATING" and "RECREATING" in rows[busy]["skip_reason"]
    assert all(row["host_key_name"] == f"compute.{row['instance_id']}" for row in rows.values())
    assert all(row["host_keys"] == "guest_attributes" for row in rows.values())
    table = fab("hosts", "--inventory", str(path))
    assert table.returncode == 0 and "MIG action RECREATING in progress" in table.stdout


def test_hosts_yaml_entry_overrides_its_member_when_discovery_is_mig(
    api: tuple[ComputeApi, InMemoryCompute], tmp_path: Path
) -> None:
    server, backend = api
    member = backend.member_names(PROJECT, ZONE, "dify-mig")[0]
    hosts = {
        member: {"port": 2222, "data": {"roles": ["app", "special"]}},
        "bastion": {"hostname": "10.9.9.9", "data": {"ssh": {"proxy": "none"}}},
    }
    path = write_inventory(tmp_path / "prod", gce_settings(server.url, discovery="mig"), hosts)
    inv = inventory.load(str(path))
    assert inv.hosts[member].port == 2222 and inv.hosts[member].get("roles")[:2] == ["app", "special"]
    assert inv.hosts[member].get("gce.status") == "RUNNING"
    assert "bastion" in inv.hosts and inv.hosts["bastion"].get("gce.mig") is None
    # auto (the default) with hosts listed: hosts.yaml only, Compute is not asked
    server.clear_calls()
    only_static = {"bastion": hosts["bastion"]}
    static = inventory.load(str(write_inventory(tmp_path / "static", gce_settings(server.url), only_static)))
    assert set(static.hosts) == {"bastion"} and server.calls() == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"migs": [{"zone": ZONE, "region": REGION, "name": "dify-mig"}]}, "exactly one of zone or region"),
        ({"migs": [{"zone": ZONE, "name": "Dify"}]}, "not a valid managed instance group name"),
        ({"member_groups": ["nope"]}, "unknown group"),
        ({"migs": [{"zone": ZONE, "name": "ghost-mig"}]}, "not found"),
    ],
)
def test_bad_mig_settings_are_clear_errors(
    api: tuple[ComputeApi, InMemoryCompute], tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    server, _ = api
    path = write_inventory(tmp_path / "prod", {**gce_settings(server.url), **change})
    with pytest.raises(FleetError, match=message):
        inventory.load(str(path))


def test_unreachable_compute_endpoint_is_a_clear_error(tmp_path: Path) -> None:
    path = write_inventory(tmp_path / "prod", gce_settings("http://127.0.0.1:9"))
    with pytest.raises(FleetError, match="cannot reach the Compute API"):
        inventory.load(str(path))
    r = fab("hosts", "--inventory", str(path))
    assert r.returncode == 2 and "cannot reach the Compute API" in r.stderr and "Traceback" not in r.stderr


def test_empty_migs_and_no_hosts(api: tuple[ComputeApi, InMemoryCompute], tmp_path: Path) -> None:
    server, backend = api
    backend.add_mig(PROJECT, "europe-west1-c", "empty-mig", size=0)
    path = write_inventory(
        tmp_path / "prod", gce_settings(server.url, migs=[{"zone": "europe-west1-c", "name": "empty-mig"}])
    )
    with pytest.raises(InventoryError, match="no hosts defined"):
        inventory.load(str(path))


def test_example_production_inventory_loads_and_renders(
    api: tuple[ComputeApi, InMemoryCompute], tmp_path: Path
) -> None:
    """inventory/example-production, copied as the README says, against a MIG of that name."""
    import shutil

    from fleet.release import bundle
    from fleet.release import hoststeps as ht
    from fleet.ssh.connection import ssh_params

    server, backend = api
    zones = ["europe-west1-b", "europe-west1-c", "europe-west1-d"]  # the example's regional MIG
    backend.add_mig(
        "my-dify-project", "europe-west1", "dify-mig", size=3, base_instance_name="dify", zones=zones
    )
    prod = tmp_path / "prod"
    shutil.copytree(Path(__file__).resolve().parents[2] / "inventory" / "example-production", prod)
    doc = yaml.safe_load((prod / "defaults.yaml").read_text())
    (prod / "deploy_key").write_text("placeholder\n")
    doc["data"]["ssh"]["key_file"] = "deploy_key"  # the operator's own key
    doc["data"]["gce"]["api_endpoint"] = server.url  # instead of compute.googleapis.com
    (prod / "defaults.yaml").write_text(yaml.safe_dump(doc))

    inv = inventory.load(str(prod))
    members = backend.member_names("my-dify-project", "europe-west1", "dify-mig")
    assert sorted(inv.hosts) == sorted(members)
    first = sorted(members, key=natural_key)[0]  # local-2 before local-10
    for name, h in inv.hosts.items():
        p = ssh_params(h, inv)
        assert h.get("gce.zone") in zones
        assert p.proxy_command is not None and p.proxy_command.startswith(
            f"gcloud compute start-iap-tunnel {name} 22 --listen-on-stdin --zone={h.get('gce.zone')} "
            "--project=my-dify-project"
        )
        assert p.known_hosts_name == f"compute.{h.get('gce.instance_id')}" and p.guest_keys is not None
        assert h.groups == ("dify-mig", "dify") and h.get("app.min_free_mb") == 2048
        assert h.get("roles") == (["app", "beat"] if name == first else ["app"])
    # its secrets are Secret Manager references, read through the real client from the stand-in
    from standins.secretmanager_api import LocalSecretManager

    with LocalSecretManager() as sm:
        for key, ref in doc["data"]["secrets"].items():
            sm.put("my-dify-project", ref["secret_manager"], f"test-{key.lower()}")
        doc["data"]["gce"]["secretmanager_endpoint"] = sm.url
        (prod / "defaults.yaml").write_text(yaml.safe_dump(doc))
        inv = inventory.load(str(prod))
        source, meta = bundle.load_source(), bundle.local_meta(operator="test")
        bundles = {n: ht.bundle_for(inv, h, source, meta) for n, h in inv.hosts.items()}
    assert all(b.env["DB_PASSWORD"] == "test-db_password" for b in bundles.values())
    assert {b.version for b in bundles.values()} == {doc["data"]["vars"]["DIFY_VERSION"]}
    others = {bundles[n].release_id for n in members if n != first}
    assert len(others) == 1 and bundles[first].release_id not in others  # only the beat host differs
