"""Rollout and rollback as library calls (fleet.rollout.service), over real SSH to sshd hosts whose
release layout is a directory on this machine: planning reads the state and the staged releases
through SshHostOps; dry runs change nothing, so no Docker is needed. The CLI renders the same plan."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleet.local.sshd_hosts import SshdFleet
from fleet.rollout import service
from tests.fixtures.sshd import fab

pytestmark = pytest.mark.sshd

OLDER = ("d" * 16, "0.9.0")
OLD = ("a" * 16, "1.0.0")
NEW = ("b" * 16, "1.1.0")


@pytest.fixture(scope="module")
def layout_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshdFleet]:
    """Two sshd hosts sharing app.dir: they run NEW, previous OLD, OLDER also staged."""
    fleet = SshdFleet(tmp_path_factory.mktemp("svc")).create(2).start()
    app = fleet.root / "app"
    for i, (rid, version) in enumerate((OLDER, OLD, NEW)):
        rel = app / "releases" / rid
        rel.mkdir(parents=True)
        (rel / "release.json").write_text(json.dumps({"version": version, "disabled_services": []}, indent=2))
        os.utime(rel, (1_700_000_000 + i, 1_700_000_000 + i))
    (app / "current").symlink_to(f"releases/{NEW[0]}")
    (app / "previous").symlink_to(f"releases/{OLD[0]}")
    yield fleet
    fleet.destroy()


@pytest.fixture
def staged(layout_fleet: SshdFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The inventory of `layout_fleet` (journals in a directory of this test's own)."""
    monkeypatch.setenv("FLEET_JOURNAL_DIR", str(tmp_path / "journal"))
    return str(layout_fleet.inventory_dir)


def targets(outcome: service.Outcome) -> dict[str, tuple[str, str]]:
    return {h: (j.target.id, j.target.version) for h, j in outcome.plan.jobs.items()}


def test_rollback_is_a_library_call_returning_a_typed_outcome(staged: str) -> None:
    outcome = service.rollback(staged, dry_run=True)
    assert isinstance(outcome, service.Outcome) and outcome.report is None and outcome.dry_run
    assert outcome.exit_code == 0
    assert outcome.plan.action == "rollback" and outcome.plan.label == "previous"
    assert set(targets(outcome).values()) == {OLD} and len(outcome.plan.jobs) == 2
    assert {j.source.id for j in outcome.plan.jobs.values() if j.source} == {NEW[0]}


def test_rollback_to_a_staged_version_through_ssh_host_ops(staged: str) -> None:
    outcome = service.rollback(staged, to="0.9.0", dry_run=True, canary=0, batch="100%")
    assert set(targets(outcome).values()) == {OLDER} and outcome.plan.label == "0.9.0"


def test_rollout_release_already_current_is_nothing_to_do(staged: str) -> None:
    outcome = service.rollout(staged, release=NEW[0][:8], dry_run=True)
    assert outcome.plan.jobs == {} and outcome.report is None


def test_rollout_release_unknown_is_refused_naming_the_staged_ones(staged: str) -> None:
    from fleet.errors import FleetError

    with pytest.raises(FleetError, match="cannot find the release to go to") as info:
        service.rollout(staged, release="7.7.7", dry_run=True)
    assert "0.9.0" in info.value.render()


def test_cli_rollback_dry_run_renders_the_services_plan(staged: str) -> None:
    r = fab("rollback", "--inventory", staged, "--dry-run", "--json")  # FLEET_JOURNAL_DIR: `staged`
    assert r.returncode == 0, r.stderr
    payload: dict[str, Any] = json.loads(r.stdout)
    assert payload["dry_run"] is True and payload["action"] == "rollback"
    assert {j["target"]["id"] for j in payload["jobs"]} == {OLD[0]}


def test_ssh_host_ops_drive_one_host_through_the_engine_seam(layout_fleet: SshdFleet) -> None:
    """SshHostOps over real SSH: each() hands every host its connection; drain, switch and the
    `previous` link are the remote commands of fleet/commands/rollout.py (no Docker needed)."""
    from fleet import inventory
    from fleet.rollout.hostops import SshHostOps
    from fleet.ssh.runner import HostResult, build_nornir

    inv = inventory.load(str(layout_fleet.inventory_dir))
    first = sorted(inv.hosts)[0]
    nr = build_nornir(inv, list(inv.hosts.values()))
    ops = SshHostOps(nr)
    seen: dict[str, Any] = {}

    def steps(name: str) -> HostResult:
        ops.drain(name)
        seen["drained"] = ops.read_state(name).drained
        ops.switch_when_idle(name, OLD[0])
        ops.set_previous(name, OLDER[0])
        seen["moved"] = ops.read_state(name)
        ops.switch_when_idle(name, NEW[0])
        ops.set_previous(name, OLD[0])
        ops.undrain(name)
        seen["back"] = ops.read_state(name)
        return HostResult(name, "ok")

    try:
        assert ops.names() == sorted(inv.hosts) and ops.host(first).name == first
        [result] = ops.each([first], steps)
        assert result.ok, result.error
        assert seen["drained"] is True
        assert (seen["moved"].current, seen["moved"].previous) == (OLD[0], OLDER[0])
        back = seen["back"]
        assert (back.current, back.previous, back.drained) == (NEW[0], OLD[0], False)
        assert ops.unreachable(ConnectionResetError()) and not ops.unreachable(ValueError())
    finally:
        nr.close_connections(on_good=True, on_failed=True)
