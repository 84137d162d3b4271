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
