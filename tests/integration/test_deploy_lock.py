"""`fab deploy` under the fleet lock, over real OpenSSH, with the Compute REST stand-in in-process.

The sshd hosts are not bootstrapped, so a deploy stops at its preflight: enough to see that it takes the
lock before touching a host, refuses while a rollout holds it, releases it after, and that a plain
SSH inventory (no Compute project, so no lock backend) deploys as before.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from fleet.gcp.compute import Compute
from fleet.local.sshd_hosts import SshdFleet
from fleet.rollout.lock import FleetLock
from functions.fleet_contract import LOCK_METADATA_KEY, parse_lock
from standins.compute_api import ComputeApi
from standins.compute_state import InMemoryCompute
from tests.fixtures.sshd import fab

pytestmark = pytest.mark.sshd

PROJECT, ZONE = "fleet-test", "europe-west1-b"
VARS = {"DB_HOST": "10.0.0.3", "PGVECTOR_HOST": "10.0.0.4", "REDIS_HOST": "10.0.0.5"}
VARS["GOOGLE_STORAGE_BUCKET_NAME"] = "files"
SECRETS = ["SECRET_KEY", "DB_PASSWORD", "REDIS_PASSWORD", "PGVECTOR_PASSWORD", "SANDBOX_API_KEY"]
SECRETS += ["PLUGIN_DAEMON_KEY", "PLUGIN_DIFY_INNER_API_KEY"]
ENV = {f"TEST_{k}": f"test-secret-{k.lower()}-0123456789" for k in SECRETS}


def renderable(fleet: SshdFleet, gce: dict[str, Any] | None = None) -> None:
    """Give the inventory the release variables and secrets (from the environment) it needs."""
    path = fleet.inventory_dir / "defaults.yaml"
    defaults = yaml.safe_load(path.read_text())
    defaults["data"]["vars"] = dict(VARS)
    defaults["data"]["secrets"] = {k: {"env": f"TEST_{k}"} for k in SECRETS}
    if gce is not None:
        defaults["data"]["gce"] = gce
    path.write_text(yaml.safe_dump(defaults))


@pytest.fixture
def gce_sshd(fresh_sshd: SshdFleet) -> Iterator[tuple[SshdFleet, ComputeApi]]:
    """The two sshd hosts as GCE instances of the stand-in (the lock lives in its project metadata)."""
    backend = InMemoryCompute(action_seconds=0.01, op_seconds=0.01)
    backend.add_project(PROJECT)
    api = ComputeApi(backend).start()
    inv = fresh_sshd.inventory_dir
    hosts = yaml.safe_load((inv / "hosts.yaml").read_text())
    for name, spec in hosts.items():
        backend.add_instance(PROJECT, ZONE, name)
        spec["data"] = {"gce": {"instance": name}}
    (inv / "hosts.yaml").write_text(yaml.safe_dump(hosts))
    renderable(fresh_sshd, {"project": PROJECT, "zone": ZONE, "api_endpoint": api.url})
    yield fresh_sshd, api
    api.stop()
    backend.close()


def _lock_writes(api: ComputeApi) -> list[Any]:
    values = []
    for call in api.calls("projects.setCommonInstanceMetadata"):
        items = {i["key"]: i.get("value") for i in (call.body or {}).get("items", [])}
        values.append(parse_lock(items.get(LOCK_METADATA_KEY)))
    return values


def test_deploy_is_refused_while_a_rollout_holds_the_lock(gce_sshd: tuple[SshdFleet, ComputeApi]) -> None:
    fleet, api = gce_sshd
    rollout = FleetLock(Compute(api.url), PROJECT, "other", holder="elsewhere:42:1")
    held = rollout.acquire("alice@elsewhere", "rollout 1.2.0", "ro-20261126-000000-abcd", ttl=300)
    api.clear_calls()
    r = fab("deploy", "--inventory", str(fleet.inventory_dir), "--version", "1.0.0", "--json", env=ENV)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "locked" in r.stderr and "alice@elsewhere" in r.stderr and "ro-20261126-000000-abcd" in r.stderr
    assert r.stdout == ""  # refused before any host was touched: no report
    assert _lock_writes(api) == [] and api.calls("instances.setLabels") == []
    assert parse_lock(Compute(api.url).project_metadata(PROJECT)[0][LOCK_METADATA_KEY]) == held


def test_deploy_takes_the_lock_and_releases_it(gce_sshd: tuple[SshdFleet, ComputeApi]) -> None:
    fleet, api = gce_sshd
    r = fab("deploy", "--inventory", str(fleet.inventory_dir), "--version", "1.0.0", "--json", env=ENV)
    assert r.returncode == 1, r.stdout + r.stderr  # not bootstrapped: stopped at preflight
    report = json.loads(r.stdout)
    assert report["stopped_at"] == "preflight"
    writes = _lock_writes(api)
    assert writes and writes[0] is not None and writes[0].rollout_id.startswith("dp-")
    assert writes[0].reason == "deploy 1.0.0" and writes[-1] is None  # taken, then released
    assert LOCK_METADATA_KEY not in Compute(api.url).project_metadata(PROJECT)[0]


def test_a_plain_ssh_inventory_deploys_without_a_lock(fresh_sshd: SshdFleet) -> None:
    """No Compute project: no lock backend, the deploy runs as it always did (here: to preflight)."""
    renderable(fresh_sshd)
    r = fab("deploy", "--inventory", str(fresh_sshd.inventory_dir), "--version", "1.0.0", "--json", env=ENV)
    assert r.returncode == 1, r.stdout + r.stderr
    report = json.loads(r.stdout)
    assert report["stopped_at"] == "preflight"
    assert all(h["result"] == "failed" and h["error"] for h in report["hosts"]), report
    assert "lock" not in r.stderr and "Compute" not in r.stderr
