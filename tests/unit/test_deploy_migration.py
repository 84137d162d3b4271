"""`fab deploy` and the database schema (fleet/rollout/deploy.py SchemaPhase, dify.migrations: phase):
the same decisions and the same phase as `fab rollout` (fleet/rollout/restore.py). A deploy that
changes the schema revision (a host without a release counts) takes a restore point and migrates
once, on the first host, after every host is prepared and before any host switches, journaled; a
failing migration switches nothing and says why; a deploy back across a schema change is refused
naming the restore point and its command unless allowed. The per-host SSH work is stubbed (the
rollout's migration runs for real in tests/integration/test_rollout.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleet import inventory
from fleet.commands import release as rc
from fleet.errors import FleetError
from fleet.release.hoststeps import StepError
from fleet.rollout import deploy as dp
from fleet.rollout.journal import read
from fleet.ssh.runner import HostResult
from tests.unit.test_rollout_migration import MANIFEST, Points

OLD_ID, NEW_ID, PATCH_ID = "a" * 16, "b" * 16, "c" * 16
VERSIONS = {OLD_ID: "1.0.0", NEW_ID: "1.1.0", PATCH_ID: "1.1.1"}  # schema rev-b, rev-c, rev-c


@pytest.fixture(autouse=True)
def _no_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("fleet.rollout.journal.os.fsync", lambda fd: None)


@pytest.fixture
def inv(tmp_path: Path) -> inventory.Inventory:
    root = tmp_path / "inv"
    root.mkdir()
    hosts = {name: {"hostname": "127.0.0.1", "port": 2200 + i} for i, name in enumerate(("w1", "w2", "w3"))}
    (root / "hosts.yaml").write_text(yaml.safe_dump(hosts))
    return inventory.load(str(root))


class Bundle:
    disabled_services: tuple[str, ...] = ()

    def __init__(self, rid: str) -> None:
        self.release_id, self.version = rid, VERSIONS[rid]


class Fleet:
    """The hosts, without SSH: preflight reports each host's current release; `log` is every
    migration and every switch, in order."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, current: dict[str, str | None]) -> None:
        self.current = current
        self.log: list[str] = []
        self.migrate_error: str | None = None

        def run_on(inv: Any, hosts: Any, step: Any, **_kw: Any) -> list[HostResult]:
            results = []
            for h in hosts:  # as the runner does: an exception becomes the host's failed result
                try:
                    results.append(step(type("Ctx", (), {"host": h})()))
                except FleetError as exc:
                    results.append(HostResult(h.name, "failed", error=exc.render()))
            return results

        def preflight(ctx: Any, bundle: Any, pull_timeout: Any = None) -> dict[str, Any]:
            return {"state": self.state(ctx.host.name), "bytes_sent": 0}

        def migrate(ctx: Any, rid: str, command: Any, timeout: float) -> str:
            self.log.append(f"migrate {ctx.host.name} {rid} {' '.join(command)}")
            if self.migrate_error:
                raise StepError(ctx.host.name, "migrate", self.migrate_error)
            return "Database migration successful!"

        def activate(ctx: Any, bundle: Any, state: Any, **kw: Any) -> dp.DeployOutcome:
            self.log.append(f"switch {ctx.host.name}")
            return dp.DeployOutcome(
                ctx.host.name, "deployed", state.current, state.version, bundle.release_id, bundle.version
            )

        monkeypatch.setattr(dp, "run_on", run_on)
        monkeypatch.setattr(dp, "preflight", preflight)
        monkeypatch.setattr(dp, "activate", activate)
        monkeypatch.setattr(dp.ht, "migrate", migrate)
        monkeypatch.setattr(dp.ht, "prune", lambda ctx, keep: None)

    def state(self, name: str) -> rc.HostState:
        rid = self.current[name]
        record = {"version": VERSIONS[rid]} if rid else None
        return rc.HostState(True, rid, None, False, record, None)


def schema(tmp_path: Path, points: Points | None = None, **kw: Any) -> dp.SchemaPhase:
    return dp.SchemaPhase(
        MANIFEST, ("flask", "upgrade-db"), 60, points or Points(), tmp_path / "journal", **kw
    )


def deploy(
    inv: inventory.Inventory, rid: str, phase: dp.SchemaPhase, guard: dp.Guard | None = None
) -> dp.DeployReport:
    hosts = list(inv.hosts.values())
    bundles: Any = {h.name: Bundle(rid) for h in hosts}
    guard = guard or dp.Guard("dp-20261130-090000-abcd")
    return dp.deploy(inv, hosts, bundles, operator="alice@box", health_timeout=5, guard=guard, schema=phase)


def journal_of(phase: dp.SchemaPhase) -> list[dict[str, Any]]:
    paths = sorted(phase.journal_dir.glob("*.jsonl"))
    assert len(paths) == 1, paths
    return read(paths[0])


def test_a_deploy_that_changes_the_schema_migrates_once_before_any_host_switches(
    inv: inventory.Inventory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hosts = Fleet(monkeypatch, dict.fromkeys(("w1", "w2", "w3"), OLD_ID))
    points = Points()
    phase = schema(tmp_path, points)
    report = deploy(inv, NEW_ID, phase)
    assert report.ok
    assert hosts.log[0] == f"migrate w1 {NEW_ID} flask upgrade-db"  # once, on the first host, first
    assert sorted(hosts.log[1:]) == ["switch w1", "switch w2", "switch w3"]
    assert len(points.taken) == 1 and "dp-20261130-090000-abcd" in points.taken[0]
    assert report.migration is not None and report.migration["status"] == "done"
    assert (report.migration["from"], report.migration["to"]) == (["rev-b"], "rev-c")
    assert report.migration["restore_point"]["id"] == "170001"
    events = journal_of(phase)
    assert [e["event"] for e in events] == ["deploy", "migration", "migration", "migration", "end"]
    assert [e.get("status") for e in events[1:4]] == ["start", "restore-point", "done"]
    assert "docker compose" in events[1]["command"] and "upgrade-db" in events[1]["command"]
    assert events[-1]["outcome"] == "succeeded" and events[-1]["hosts"]["w3"] == "deployed"
    assert json.loads(json.dumps(report.as_dict()))["migration"]["status"] == "done"


def test_a_first_deploy_on_hosts_without_a_release_migrates(
    inv: inventory.Inventory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hosts = Fleet(monkeypatch, dict.fromkeys(("w1", "w2", "w3")))
    report = deploy(inv, OLD_ID, schema(tmp_path))
    assert report.ok and report.migration is not None
    assert report.migration["from"] == ["none"] and report.migration["to"] == "rev-b"
    assert [line for line in hosts.log if line.startswith("migrate")] == [
        f"migrate w1 {OLD_ID} flask upgrade-db"
    ]


def test_no_migration_and_no_journal_when_the_revision_stays(
    inv: inventory.Inventory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hosts = Fleet(monkeypatch, dict.fromkeys(("w1", "w2", "w3"), NEW_ID))
    points = Points()
    phase = schema(tmp_path, points)
    report = deploy(inv, PATCH_ID, phase)  # 1.1.0 -> 1.1.1: both rev-c
    assert report.ok and report.migration is None and points.taken == []
    assert not any(line.startswith("migrate") for line in hosts.log) and len(hosts.log) == 3
    assert not phase.journal_dir.exists()


def test_a_failing_migration_switches_nothing_and_names_the_restore_point(
    inv: inventory.Inventory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hosts = Fleet(monkeypatch, {"w1": OLD_ID, "w2": OLD_ID, "w3": NEW_ID})
    hosts.migrate_error = "alembic: relation already exists"
    phase = schema(tmp_path)
    report = deploy(inv, NEW_ID, phase)
    assert not report.ok and report.stopped_at == "migration"
    assert hosts.log == [f"migrate w1 {NEW_ID} flask upgrade-db"]  # and no switch
    assert all(o.result == "not-started" for o in report.outcomes)
    (problem,) = report.problems
    assert "the migration rev-b -> rev-c failed on w1" in problem and "relation already exists" in problem
    assert "nothing was switched" in problem and "gcloud sql backups restore 170001" in problem
    assert report.migration is not None and report.migration["status"] == "failed"
    events = journal_of(phase)
    assert events[-2]["status"] == "failed" and (events[-1]["event"], events[-1]["outcome"]) == (
        "end",
        "failed",
    )


def test_no_restore_point_no_migration(
    inv: inventory.Inventory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hosts = Fleet(monkeypatch, dict.fromkeys(("w1", "w2", "w3"), OLD_ID))
    report = deploy(inv, NEW_ID, schema(tmp_path, Points(error="backups are disabled")))
    assert report.stopped_at == "migration" and hosts.log == []
    assert (
        "no restore point could be taken" in report.problems[0]
        and "backups are disabled" in report.problems[0]
    )


def test_a_lost_lock_stops_before_the_migration(
    inv: inventory.Inventory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hosts = Fleet(monkeypatch, dict.fromkeys(("w1", "w2", "w3"), OLD_ID))
    points = Points()
    guard = dp.Guard("dp-20261130-090000-abcd", lost=lambda: "it expired")
    report = deploy(inv, NEW_ID, schema(tmp_path, points), guard)
    assert report.stopped_at == "migration" and hosts.log == [] and points.taken == []
    assert "fleet lock lost before the migration: it expired" in report.problems[0]


def test_a_deploy_back_across_the_schema_change_is_refused_naming_the_restore_point(
    inv: inventory.Inventory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hosts = Fleet(monkeypatch, dict.fromkeys(("w1", "w2", "w3"), OLD_ID))
    phase = schema(tmp_path)
    assert deploy(inv, NEW_ID, phase).ok  # migrates rev-b -> rev-c, restore point 170001 journaled
    hosts.current = dict.fromkeys(("w1", "w2", "w3"), NEW_ID)
    hosts.log.clear()
    with pytest.raises(FleetError) as err:
        deploy(inv, OLD_ID, phase)
    assert hosts.log == []  # nothing migrated, nothing switched
    assert err.value.what.startswith("deploy back across a database schema change")
    assert "run schema rev-c" in err.value.what and "expects rev-b" in err.value.what
    hint = err.value.hint or ""
    assert "taken before migrating to rev-c (rollout dp-20261130-090000-abcd)" in hint
    assert "gcloud sql backups restore 170001 --restore-instance=dify-main --project=p" in hint
    assert "--force-schema-rollback" in hint

    warnings: list[str] = []
    forced = schema(tmp_path, allow_back=True, warn=warnings.append)
    report = deploy(inv, OLD_ID, forced)
    assert report.ok and report.migration is None
    assert sorted(hosts.log) == ["switch w1", "switch w2", "switch w3"]  # the code only: no migration
    assert "allowed by --force-schema-rollback" in warnings[0] and "170001" in warnings[0]


def test_migrations_off_means_no_schema_phase(inv: inventory.Inventory) -> None:
    hosts = list(inv.hosts.values())
    assert isinstance(dp.SchemaPhase.for_hosts(inv, hosts), dp.SchemaPhase)  # phase: the default
    defaults = Path(inv.path) / "defaults.yaml"
    defaults.write_text(yaml.safe_dump({"data": {"dify": {"migrations": "off"}}}))
    off = inventory.load(str(inv.path))
    assert dp.SchemaPhase.for_hosts(off, list(off.hosts.values())) is None


def test_deploy_release_passes_the_inventorys_schema_phase(
    inv: inventory.Inventory, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}

    def fake(inventory: Any, hosts: Any, bundles: Any, **kw: Any) -> dp.DeployReport:
        seen.update(kw)
        return dp.DeployReport("1.1.0", [])

    monkeypatch.setattr(dp, "deploy", fake)
    bundles: Any = {h: Bundle(NEW_ID) for h in inv.hosts}
    dp.deploy_release(inv, bundles=bundles, allow_schema_rollback=True)
    phase = seen["schema"]
    assert isinstance(phase, dp.SchemaPhase) and phase.allow_back is True
    assert phase.command == ("flask", "upgrade-db") and phase.timeout == 1800


def test_the_dry_run_shows_the_pending_migration_or_the_refusal(
    inv: inventory.Inventory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from invoke.exceptions import Exit

    from fleet.cli import release as cli
    from fleet.release import bundle as bundle_mod

    hosts = Fleet(monkeypatch, {"w1": None, "w2": OLD_ID, "w3": OLD_ID})
    monkeypatch.setattr("fleet.ssh.runner.run_on", dp.run_on)
    monkeypatch.setattr(dp.ht, "current_files", lambda ctx: {})
    monkeypatch.setattr(dp.ht, "read_state", lambda ctx: hosts.state(ctx.host.name))
    monkeypatch.setattr(
        bundle_mod, "diff", lambda files, bundle: type("D", (), {"render": lambda self: "  (diff)"})()
    )
    monkeypatch.setattr("fleet.release.budget.for_inventory", lambda inv, bundles: ())
    chosen = list(inv.hosts.values())
    bundles: Any = {h.name: Bundle(NEW_ID) for h in chosen}
    cli._print_diff(inv, chosen, bundles, False, schema=schema(tmp_path))
    out = capsys.readouterr().out
    assert "migration: database schema none + rev-b -> rev-c, once, after every host is prepared" in out
    assert "restore point first: a test backup" in out
    assert "then on w1: docker compose run --rm --no-deps -T --entrypoint flask api upgrade-db" in out
    assert hosts.log == []  # a dry run migrates and switches nothing

    hosts.current = dict.fromkeys(("w1", "w2", "w3"), NEW_ID)
    back: Any = {h.name: Bundle(OLD_ID) for h in chosen}
    with pytest.raises(Exit) as code:
        cli._print_diff(inv, chosen, back, False, schema=schema(tmp_path))
    assert code.value.code == 2
    assert "refused: deploy back across a database schema change" in capsys.readouterr().out


def test_fab_help_deploy_documents_migrations() -> None:
    import subprocess
    import sys

    fab = str(Path(sys.executable).with_name("fab"))
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [fab, "--help", "deploy"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout
    assert "--force-schema-rollback" in out and "migrat" in out


def test_resume_without_an_id_never_picks_a_deploys_journal(tmp_path: Path) -> None:
    import os as _os

    from fleet.rollout import journal as jr

    rollout = jr.Journal.create(tmp_path, "ro-20261130-090000-aaaa")
    rollout.append("plan", jobs={})
    rollout.close()
    deploy_journal = jr.Journal.create(tmp_path, "dp-20261130-090100-bbbb")
    deploy_journal.append("deploy", label="1.1.0")
    deploy_journal.close()
    _os.utime(deploy_journal.path, (2_000_000_000, 2_000_000_000))  # the newest
    assert jr.find(tmp_path) == rollout.path
    assert jr.find(tmp_path, "dp-20261130-090100-bbbb") == deploy_journal.path  # by id: still found
