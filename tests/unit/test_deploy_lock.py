"""`fab deploy` under the fleet lock (fleet/rollout/deploy.py under_lock + deploy): the lock and the rollout
marks through the real Compute client against the local Compute REST stand-in; the per-host SSH work
is stubbed (tests/integration/test_deploy_lock.py runs the real CLI over sshd)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleet import inventory
from fleet.commands import release as rc
from fleet.gcp.compute import Compute
from fleet.rollout import deploy as dp
from fleet.rollout.lock import FleetLock, LockHeld
from fleet.ssh.runner import HostResult
from functions.fleet_contract import LOCK_METADATA_KEY, ROLLOUT_LABEL, parse_lock
from standins.compute_api import ComputeApi
from standins.compute_state import InMemoryCompute

PROJECT, ZONE = "fleet-test", "europe-west1-b"


@pytest.fixture
def gce(tmp_path: Path) -> Iterator[tuple[inventory.Inventory, ComputeApi, InMemoryCompute]]:
    backend = InMemoryCompute(action_seconds=0.01, op_seconds=0.01)
    backend.add_project(PROJECT)
    api = ComputeApi(backend).start()
    inv_dir = tmp_path / "inv"
    inv_dir.mkdir()
    hosts = {}
    for name in ("web-1", "web-2"):
        backend.add_instance(PROJECT, ZONE, name)
        hosts[name] = {"hostname": "127.0.0.1", "port": 22, "data": {"gce": {"instance": name}}}
    (inv_dir / "hosts.yaml").write_text(yaml.safe_dump(hosts))
    defaults = {"data": {"gce": {"project": PROJECT, "zone": ZONE, "api_endpoint": api.url}}}
    (inv_dir / "defaults.yaml").write_text(yaml.safe_dump(defaults))
    yield inventory.load(str(inv_dir)), api, backend
    api.stop()
    backend.close()


class FakeBundle:
    release_id = "a" * 16
    version = "1.1.0"


def stub_hosts(monkeypatch: pytest.MonkeyPatch, during: Any) -> list[str]:
    """No SSH: preflight finds each host on an older release; activation calls `during(host)`."""
    switched: list[str] = []

    def run_on(inv: Any, hosts: Any, step: Any, **_kw: Any) -> list[HostResult]:
        return [step(type("Ctx", (), {"host": h})()) for h in hosts]

    def preflight(ctx: Any, bundle: Any, pull_timeout: Any = None) -> dict[str, Any]:
        return {
            "state": rc.HostState(True, "b" * 16, None, False, {"version": "1.0.0"}, None),
            "bytes_sent": 0,
        }

    def activate(ctx: Any, bundle: Any, state: Any, **kw: Any) -> dp.DeployOutcome:
        during(ctx.host)
        switched.append(ctx.host.name)
        return dp.DeployOutcome(ctx.host.name, "deployed", state.current, "1.0.0", bundle.release_id, "1.1.0")

    monkeypatch.setattr(dp, "run_on", run_on)
    monkeypatch.setattr(dp, "preflight", preflight)
    monkeypatch.setattr(dp, "activate", activate)
    monkeypatch.setattr(dp.ht, "prune", lambda ctx, keep: None)
    return switched


def label(api: ComputeApi, name: str) -> str | None:
    inst = Compute(api.url).instance(PROJECT, ZONE, name)
    return dict(inst.labels).get(ROLLOUT_LABEL)


def test_deploy_holds_the_lock_and_marks_each_host_while_it_switches(
    gce: tuple[inventory.Inventory, ComputeApi, InMemoryCompute], monkeypatch: pytest.MonkeyPatch
) -> None:
    inv, api, _ = gce
    hosts = list(inv.hosts.values())
    seen: dict[str, tuple[str | None, Any]] = {}

    def during(host: Any) -> None:
        stored = parse_lock(Compute(api.url).project_metadata(PROJECT)[0].get(LOCK_METADATA_KEY))
        seen[host.name] = (label(api, host.name), stored)
        with pytest.raises(LockHeld) as err:  # a rollout started now is refused, naming the deploy
            FleetLock(Compute(api.url), PROJECT, inv.name, holder="other:1:1").acquire(
                "bob@other", "rollout 1.2.0", "ro-20261126-000000-beef"
            )
        assert "deploy 1.1.0" in err.value.what and "dp-" in err.value.what

    switched = stub_hosts(monkeypatch, during)
    bundles: dict[str, Any] = {h.name: FakeBundle() for h in hosts}
    with dp.under_lock(inv, hosts, "deploy 1.1.0") as guard:
        report = dp.deploy(inv, hosts, bundles, operator="alice@box", health_timeout=5, guard=guard)
    assert report.ok and sorted(switched) == ["web-1", "web-2"]
    for name in ("web-1", "web-2"):
        mark, lock = seen[name]
        assert lock is not None and lock.rollout_id == guard.rollout_id and guard.rollout_id.startswith("dp-")
        assert mark == guard.rollout_id  # marked while it switched, exactly like a rollout's host
        assert label(api, name) is None  # and unmarked after
    assert LOCK_METADATA_KEY not in Compute(api.url).project_metadata(PROJECT)[0]  # released


def test_no_host_switches_once_the_lock_is_lost(
    gce: tuple[inventory.Inventory, ComputeApi, InMemoryCompute], monkeypatch: pytest.MonkeyPatch
) -> None:
    inv, _, _ = gce
    hosts = list(inv.hosts.values())
    switched = stub_hosts(monkeypatch, lambda host: None)
    bundles: dict[str, Any] = {h.name: FakeBundle() for h in hosts}
    guard = dp.Guard("dp-20261126-000000-abcd", lost=lambda: "it was released")
    report = dp.deploy(inv, hosts, bundles, operator="alice@box", health_timeout=5, guard=guard)
    assert switched == [] and not report.ok
    assert all(o.result == "not-started" and "lock lost" in (o.error or "") for o in report.outcomes)


def test_without_a_compute_project_there_is_no_lock(tmp_path: Path) -> None:
    (tmp_path / "hosts.yaml").write_text(yaml.safe_dump({"h1": {"hostname": "127.0.0.1"}}))
    inv = inventory.load(str(tmp_path))
    with dp.under_lock(inv, list(inv.hosts.values()), "deploy") as guard:
        assert guard.mark is None and guard.lost is None and guard.rollout_id.startswith("dp-")


def test_a_second_deploy_during_a_deploy_is_refused(
    gce: tuple[inventory.Inventory, ComputeApi, InMemoryCompute],
) -> None:
    inv, _, _ = gce
    hosts = list(inv.hosts.values())
    with dp.under_lock(inv, hosts, "deploy 1.1.0") as first:
        second = dp.under_lock(inv, hosts, "deploy 1.2.0")
        with pytest.raises(LockHeld, match=first.rollout_id):
            second.__enter__()
