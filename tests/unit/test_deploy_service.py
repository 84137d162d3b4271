"""`fab deploy` as a library call (fleet.rollout.deploy.deploy_release): what the task, the demo and the
benchmark call. The SSH part (fleet.rollout.deploy.deploy) is stubbed here; it runs for real in
tests/integration/test_deploy.py."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from fleet.rollout import deploy as dp


@pytest.fixture
def inv(tmp_path: Path) -> str:
    root = tmp_path / "inv"
    root.mkdir()
    hosts = {name: {"hostname": "127.0.0.1", "port": 2200 + i} for i, name in enumerate(("w1", "w2", "w3"))}
    (root / "hosts.yaml").write_text(yaml.safe_dump(hosts))
    (root / "defaults.yaml").write_text(yaml.safe_dump({"data": {"rollout": {"health_timeout": 42}}}))
    return str(root)


def test_deploy_release_renders_and_deploys_every_host_with_the_inventorys_timeout(
    inv: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}

    def render_all(inventory: Any, hosts: Any, *, version: str | None = None) -> dict[str, Any]:
        seen["rendered"] = ([h.name for h in hosts], version)
        return {h.name: SimpleNamespace(version=version, name=f"bundle-{h.name}") for h in hosts}

    def deploy(inventory: Any, hosts: Any, bundles: Any, **kw: Any) -> dp.DeployReport:
        names = {h: b.name for h, b in bundles.items()}
        seen["deployed"] = ([h.name for h in hosts], names, kw["health_timeout"], kw["guard"].rollout_id)
        return dp.DeployReport("1.2.3", [])

    monkeypatch.setattr(dp, "render_all", render_all)
    monkeypatch.setattr(dp, "deploy", deploy)
    report = dp.deploy_release(inv, version="1.2.3")
    assert isinstance(report, dp.DeployReport) and report.release_version == "1.2.3"
    assert seen["rendered"] == (["w1", "w2", "w3"], "1.2.3")
    hosts, bundles, timeout, deploy_id = seen["deployed"]
    assert (hosts, bundles, timeout) == (["w1", "w2", "w3"], {h: f"bundle-{h}" for h in hosts}, 42.0)
    assert deploy_id.startswith("dp-")  # under_lock's id: without a Compute project, no lock but an id


def _monitored(inv: str, pubsub_endpoint: str) -> None:
    defaults = Path(inv) / "defaults.yaml"
    doc = yaml.safe_load(defaults.read_text())
    doc["data"]["monitoring"] = {
        "project": "events-project",
        "fleet": "prod",
        "pubsub_endpoint": pubsub_endpoint,
        "events_topic": "fleet-events",
    }
    defaults.write_text(yaml.safe_dump(doc))


def _stub_ssh(monkeypatch: pytest.MonkeyPatch, failed_host: str | None) -> None:
    def render_all(inventory: Any, hosts: Any, *, version: str | None = None) -> dict[str, Any]:
        return {h.name: SimpleNamespace(version=version) for h in hosts}

    def deploy(inventory: Any, hosts: Any, bundles: Any, **kw: Any) -> dp.DeployReport:
        outcomes = [
            dp.DeployOutcome(h.name, "failed" if h.name == failed_host else "deployed") for h in hosts
        ]
        return dp.DeployReport("1.2.3", outcomes)

    monkeypatch.setattr(dp, "render_all", render_all)
    monkeypatch.setattr(dp, "deploy", deploy)


@pytest.mark.parametrize("failed_host", [None, "w2"])
def test_a_deploy_is_announced_on_the_fleet_events_topic(
    inv: str, monkeypatch: pytest.MonkeyPatch, failed_host: str | None
) -> None:
    from functions.fleet_contract import FleetEvent
    from standins.pubsub_api import LocalPubsub

    with LocalPubsub() as pubsub:
        topic = "projects/events-project/topics/fleet-events"
        pubsub.create_topic(topic)
        _monitored(inv, pubsub.emulator_host)
        _stub_ssh(monkeypatch, failed_host)
        report = dp.deploy_release(inv, version="1.2.3")
        events = [FleetEvent.from_message(m.data, m.attributes) for m in pubsub.messages(topic)]
    assert [(e.kind, e.action, e.result) for e in events] == [
        ("rollout", "deploy", "started"),
        ("rollout", "deploy", "failed" if failed_host else "done"),
    ]
    assert report.ok is (failed_host is None)
    assert {e.fleet for e in events} == {"prod"} and {e.project for e in events} == {"events-project"}
    assert len({e.rollout_id for e in events}) == 1 and events[0].rollout_id.startswith("dp-")
    assert ("failed on w2" in events[1].detail) is bool(failed_host)


def test_an_unreachable_events_topic_warns_and_the_deploy_goes_on(
    inv: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    _monitored(inv, dead)
    _stub_ssh(monkeypatch, None)
    monkeypatch.setattr("fleet.gcp.events.TIMEOUT", 2.0)
    warnings: list[str] = []
    report = dp.deploy_release(inv, version="1.2.3", warn=warnings.append)
    assert report.ok
    # one wait and one warning for the run, not one per event
    assert (
        len(warnings) == 1 and "not published to projects/events-project/topics/fleet-events" in warnings[0]
    )
