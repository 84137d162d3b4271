"""Migrations as a rollout phase, through the engine's seam (a fake HostOps, in memory): planned only when
the schema revision changes, a restore point first, the migration once on the canary host before
anything is switched, journaled; a failure switches nothing and names host, command and restore point;
a resumed rollout does not migrate again; a rollback across a schema change is refused with the
restore command. The Cloud SQL side runs against its stand-in in tests/integration/."""

from __future__ import annotations

import shlex
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from fleet.commands import release as rc
from fleet.errors import FleetError
from fleet.release import pairing
from fleet.rollout import InPlace, Plan, Release, restore
from fleet.rollout import journal as jr
from fleet.rollout.journal import Journal, read
from fleet.rollout.restore import Migration, RestorePoint
from fleet.rollout.service import Request, _schema
from tests.unit.test_rollout_engine import (
    KNOWN,
    NEW,
    NOBEAT,
    OLD,
    FakeBundle,
    FakeLB,
    FakeMarks,
    FakeOps,
    Ran,
    Sim,
    fleet,
    plan_for,
)

# the schema revisions of OLD (1.0.0), NEW (1.1.0) and OLDER (0.9.0)
MANIFEST = pairing.parse_manifest(
    """
releases:
  "0.9.0": {sandbox: "0.2.9", plugin_daemon: "0.0.1", schema: "rev-a"}
  "1.0.0": {sandbox: "0.2.10", plugin_daemon: "0.0.3", schema: "rev-b"}
  "1.1.0": {sandbox: "0.2.10", plugin_daemon: "0.0.5", schema: "rev-c"}
  "1.1.1": {sandbox: "0.2.10", plugin_daemon: "0.0.5", schema: "rev-c"}
  "1.2.0": {sandbox: "0.2.11", plugin_daemon: "0.0.6"}
"""
)
PATCH = Release("e" * 16, "1.1.1", NOBEAT)
KNOWN[PATCH.id] = PATCH


@pytest.fixture(autouse=True)
def _no_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("fleet.rollout.journal.os.fsync", lambda fd: None)


class MigOps(FakeOps):
    """FakeOps that can migrate: records each run; `migrate_error` makes it fail like the host's compose."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.migrations: list[tuple[str, str, tuple[str, ...], float]] = []
        self.migrate_error: str | None = None

    def migrate(self, name: str, rid: str, command: Sequence[str], timeout: float) -> str:
        self._op(name, "migrate")
        self.migrations.append((name, rid, tuple(command), timeout))
        if self.migrate_error:
            from fleet.release.hoststeps import StepError

            raise StepError(name, "migrate", self.migrate_error)
        return "Database migration successful!"


class Points:
    """RestorePoints that count what they take (or fail)."""

    def __init__(self, error: str | None = None) -> None:
        self.taken: list[str] = []
        self.error = error

    def describe(self) -> str:
        return "a test backup"

    def take(self, description: str) -> RestorePoint:
        if self.error:
            raise FleetError(self.error, where="Cloud SQL Admin")
        self.taken.append(description)
        n = len(self.taken)
        return RestorePoint(
            "backup",
            f"17000{n}",
            "2026-11-30T03:00:00Z",
            "cloudsql/p/dify-main",
            f"gcloud sql backups restore 17000{n} --restore-instance=dify-main --project=p",
        )


def migrating_plan(sims: dict[str, Sim], target: Release = NEW, **kw: Any) -> Plan:
    plan = plan_for(sims, target, **kw)
    plan.migration = restore.plan_migration(plan, MANIFEST, restore="a test backup")
    return plan


def go(
    tmp_path: Path, ops: MigOps, plan: Plan, points: Points, *, migrated: dict[str, Any] | None = None
) -> Ran:
    journal = Journal.create(tmp_path, plan.rollout_id)
    engine = InPlace(
        ops,
        plan,
        journal=journal,
        lb=lambda host: FakeLB(),  # type: ignore[arg-type,return-value]
        marks=FakeMarks(),  # type: ignore[arg-type]
        bundles={h: FakeBundle(j.target.id) for h, j in plan.jobs.items()},  # type: ignore[misc]
        restore_points=points,
        migrated=migrated,
    )
    report = engine.run()
    return Ran(report, ops, FakeMarks(), read(journal.path))


# --------------------------------------------------------------------------- planning


def test_a_release_that_changes_the_schema_gets_a_migration_on_the_canary_host() -> None:
    plan = migrating_plan(fleet(3))
    mig = plan.migration
    assert mig is not None
    assert (mig.from_revisions, mig.to_revision) == (("rev-b",), "rev-c")
    assert mig.host == plan.batches[0][0] == "h1"
    assert mig.release == NEW.id
    assert mig.command == ("flask", "upgrade-db")
    assert mig.restore == "a test backup"


def test_no_migration_when_the_revision_stays() -> None:
    sims = {f"h{i}": Sim(current=NEW.id, previous=OLD.id) for i in (1, 2)}
    assert migrating_plan(sims, PATCH).migration is None  # 1.1.0 -> 1.1.1: same schema rev-c


def test_a_host_on_an_older_schema_or_without_a_release_still_needs_it() -> None:
    sims = {"h1": Sim(current=NEW.id), "h2": Sim(current=None)}
    mig = migrating_plan(sims, PATCH).migration
    assert mig is not None and mig.from_revisions == ("none",) and mig.to_revision == "rev-c"


def test_an_unrecorded_revision_or_migrations_off_plan_no_phase() -> None:
    broken = Release("f" * 16, "1.2.0", NOBEAT)
    warnings: list[str] = []
    plan = plan_for(fleet(2), broken)
    assert restore.plan_migration(plan, MANIFEST, warn=warnings.append) is None
    assert "1.2.0 has no schema revision" in warnings[0]
    assert restore.plan_migration(plan_for(fleet(2)), MANIFEST, enabled=False) is None
    assert restore.plan_migration(plan_for(fleet(2), action="rollback"), MANIFEST) is None


def test_the_plan_round_trips_its_migration_through_the_journal() -> None:
    plan = migrating_plan(fleet(2))
    again = Plan.from_dict(plan.as_dict())
    assert again.migration == plan.migration
    assert Plan.from_dict({**plan.as_dict(), "migration": None}).migration is None


def test_the_manifest_reads_and_checks_schema_revisions() -> None:
    assert MANIFEST.revision("1.1.0") == "rev-c" and MANIFEST.revision("1.2.0") is None
    assert MANIFEST.revision("9.9.9") is None
    shipped = pairing.load_manifest()
    assert shipped is not None and shipped.revision("1.0.0") != shipped.revision("1.1.0")
    with pytest.raises(FleetError, match="schema revision"):
        pairing.parse_manifest("releases: {'1.0': {sandbox: '1', plugin_daemon: '2', schema: 'a b'}}")
    with pytest.raises(FleetError, match="schema revision"):
        pairing.parse_manifest("releases: {'1.0': {sandbox: '1', plugin_daemon: '2', schema: 3}}")


# --------------------------------------------------------------------------- the command, as data


def test_the_migration_is_a_one_off_container_of_the_target_release() -> None:
    layout = rc.Layout(rc.DEFAULT_ROOT, rc.DEFAULT_PROJECT)
    cmd = rc.compose_migrate(layout, NEW.id)
    last = shlex.split(cmd.shell().splitlines()[-1])
    rel = f"{layout.release(NEW.id)}"
    assert last == [
        *["docker", "compose", "-p", layout.project, "--project-directory", rel],
        *["-f", f"{rel}/docker-compose.yaml", "--env-file", f"{rel}/.env"],
        *["run", "--rm", "--no-deps", "-T", "--entrypoint", "flask", "api", "upgrade-db"],
    ]
    assert "flock -w" in cmd.shell()  # under the host's compose lock, like every compose operation
    odd = rc.compose_migrate(layout, NEW.id, ["sh", "-c", "flask upgrade-db; echo '$HOME'"])
    assert shlex.split(odd.shell().splitlines()[-1])[-3:] == ["api", "-c", "flask upgrade-db; echo '$HOME'"]
    with pytest.raises(FleetError, match="invalid migration command"):
        rc.compose_migrate(layout, NEW.id, ["flask", ""])
    with pytest.raises(FleetError, match="invalid release id"):
        rc.compose_migrate(layout, "../x")


# --------------------------------------------------------------------------- the phase, in the engine


def test_the_migration_runs_once_after_staging_and_before_any_switch(tmp_path: Path) -> None:
    ops, points = MigOps(fleet(3)), Points()
    ran = go(tmp_path, ops, migrating_plan(fleet(3)), points)
    assert ran.report.outcome == "succeeded"
    assert ops.migrations == [("h1", NEW.id, ("flask", "upgrade-db"), 1800.0)]
    assert len(points.taken) == 1
    ops_order = [op for _, op in ops.calls]
    assert ops_order.index("migrate") > max(i for i, op in enumerate(ops_order) if op == "pull")
    assert ops_order.index("migrate") < ops_order.index("drain") < ops_order.index("switch")
    kinds = [(e["event"], e.get("status")) for e in ran.events if e["event"] in ("migration", "batch")]
    assert kinds[:4] == [
        ("migration", "start"),
        ("migration", "restore-point"),
        ("migration", "done"),
        ("batch", "start"),
    ]
    done = next(e for e in ran.events if e["event"] == "migration" and e["status"] == "done")
    assert done["restore_point"]["id"] == "170001" and done["to"] == "rev-c" and done["host"] == "h1"
    assert "--entrypoint flask api upgrade-db" in done["command"]
    assert ran.report.migration is not None and ran.report.migration["status"] == "done"
    assert ran.report.as_dict()["migration"]["restore_point"]["id"] == "170001"


def test_no_phase_no_restore_point(tmp_path: Path) -> None:
    ops, points = MigOps(fleet(2)), Points()
    plan = plan_for(fleet(2))
    ran = go(tmp_path, ops, plan, points)
    assert ran.report.outcome == "succeeded" and ops.migrations == [] and points.taken == []
    assert not [e for e in ran.events if e["event"] == "migration"]


def test_a_failing_migration_switches_nothing_and_names_host_command_and_restore_point(
    tmp_path: Path,
) -> None:
    ops, points = MigOps(fleet(3)), Points()
    ops.migrate_error = "migrate the database failed (exit 1): relation already exists"
    ran = go(tmp_path, ops, migrating_plan(fleet(3)), points)
    assert ran.report.outcome == "failed" and ran.report.exit_code == 1
    assert not {"drain", "switch", "up"} & {op for _, op in ops.calls}
    assert all(s.current == OLD.id and not s.drained for s in ops.sims.values())
    assert all(h.result == "not-started" for h in ran.report.hosts)
    problem = ran.report.problems[-1]
    assert "failed on h1" in problem and "relation already exists" in problem
    assert "--entrypoint flask api upgrade-db" in problem
    assert (
        "backup 170001 of cloudsql/p/dify-main" in problem and "gcloud sql backups restore 170001" in problem
    )
    assert "nothing was switched" in problem
    failed = [e for e in ran.events if e["event"] == "migration" and e["status"] == "failed"]
    assert failed and failed[0]["restore_point"]["id"] == "170001" and failed[0]["stage"] == "migrate"
    assert ran.report.migration is not None and ran.report.migration["status"] == "failed"


def test_no_restore_point_no_migration(tmp_path: Path) -> None:
    ops, points = MigOps(fleet(2)), Points(error="the backup of cloudsql/p/dify-main failed: quota")
    ran = go(tmp_path, ops, migrating_plan(fleet(2)), points)
    assert ran.report.outcome == "failed"
    assert ops.migrations == [] and "switch" not in [op for _, op in ops.calls]
    assert "no restore point could be taken" in ran.report.problems[-1]
    assert "quota" in ran.report.problems[-1]


def test_a_resumed_rollout_does_not_migrate_again(tmp_path: Path) -> None:
    """Killed after the migration: the journal's `migration done` reaches the next run (Replay.migrated)."""
    sims = fleet(2)
    plan = migrating_plan(sims)
    first = Journal.create(tmp_path / "j", plan.rollout_id)
    first.append("plan", **plan.as_dict())
    first.append("migration", status="start", to="rev-c", host="h1")
    point = Points().take("x").as_dict()
    first.append("migration", status="restore-point", to="rev-c", host="h1", restore_point=point)
    first.append("migration", status="done", to="rev-c", host="h1", restore_point=point)
    first.close()
    replay = jr.load(first.path)
    assert replay.migrated is not None and replay.migrated["restore_point"]["id"] == "170001"
    assert Plan.from_dict(replay.plan or {}).migration == plan.migration

    ops, points = MigOps(sims), Points()
    ran = go(tmp_path, ops, plan, points, migrated=replay.migrated)
    assert ran.report.outcome == "succeeded"
    assert ops.migrations == [] and points.taken == []
    skipped = [e for e in ran.events if e["event"] == "migration"]
    assert [e["status"] for e in skipped] == ["skipped"]
    assert ran.report.migration is not None and ran.report.migration["restore_point"]["id"] == "170001"


def test_a_started_but_unfinished_migration_runs_again_on_resume(tmp_path: Path) -> None:
    events = [{"event": "plan"}, {"event": "migration", "status": "start"}]
    assert jr.replay("ro-x", events).migrated is None  # upgrade-db is idempotent: it runs again


def test_a_canary_failing_after_the_migration_rolls_back_code_and_says_the_schema_stays(
    tmp_path: Path,
) -> None:
    sims = fleet(3)
    ops, points = MigOps(sims, broken=(NEW.id,)), Points()
    ran = go(tmp_path, ops, migrating_plan(sims), points)
    assert ran.report.outcome == "rolled-back"
    assert len(ops.migrations) == 1
    note = next(p for p in ran.report.problems if "schema stays" in p)
    assert "rev-c" in note and "170001" in note and "gcloud sql backups restore" in note


# --------------------------------------------------------------------------- rollback across a change


def rollback_plan(sims: dict[str, Sim]) -> Plan:
    return plan_for(sims, {h: KNOWN[s.previous or ""] for h, s in sims.items()}, action="rollback")


def test_a_rollback_within_one_schema_is_not_a_schema_change() -> None:
    sims = {f"h{i}": Sim(current=PATCH.id, previous=NEW.id) for i in (1, 2)}
    assert restore.schema_change(rollback_plan(sims), MANIFEST) is None
    assert restore.schema_change(rollback_plan(fleet(2)), MANIFEST) == (["rev-b"], ["rev-a"])
    unrecorded = Release("9" * 16, "1.2.0", NOBEAT)  # no schema in the manifest: nothing to tell
    KNOWN[unrecorded.id] = unrecorded
    sims = {"h1": Sim(current=unrecorded.id, previous=NEW.id)}
    assert restore.schema_change(rollback_plan(sims), MANIFEST) is None


def journal_with_restore_point(directory: Path, to: str = "rev-c") -> RestorePoint:
    journal = Journal.create(directory, "ro-20261130-030000-abcd")
    point = Points().take("x")
    journal.append("migration", status="restore-point", to=to, host="h1", restore_point=point.as_dict())
    journal.close()
    return point


def test_the_refusal_names_the_restore_point_and_its_exact_command(tmp_path: Path) -> None:
    point = journal_with_restore_point(tmp_path)
    recorded = restore.recorded_restore_points(tmp_path)
    assert [r.point for r in recorded] == [point]
    err = restore.refuse_schema_rollback(["rev-c"], ["rev-b"], recorded, "--force-schema-rollback")
    assert "rev-c" in err.what and "rev-b" in err.what
    assert err.hint is not None
    assert "backup 170001 of cloudsql/p/dify-main" in err.hint
    assert point.restore_command in err.hint and "--force-schema-rollback" in err.hint
    none = restore.refuse_schema_rollback(["rev-c"], ["rev-b"], [], "--force-schema-rollback")
    assert none.hint is not None and "no restore point of that migration is journaled" in none.hint


def test_fab_rollback_across_the_shipped_releases_is_refused_unless_allowed(tmp_path: Path) -> None:
    """The service's check, with compose/releases.yaml as shipped (1.0.0 and 1.1.0 differ)."""
    old = Release("1" * 16, "1.0.0", NOBEAT)
    new = Release("2" * 16, "1.1.0", NOBEAT)
    KNOWN.update({old.id: old, new.id: new})
    sims = {f"h{i}": Sim(current=new.id, previous=old.id) for i in (1, 2)}
    shipped = pairing.load_manifest()
    assert shipped is not None
    point = journal_with_restore_point(tmp_path, to=shipped.revision("1.1.0") or "")
    chosen = [SimpleNamespace(settings=SimpleNamespace(dify=SimpleNamespace(migrations="phase")))]
    warned: list[str] = []
    with pytest.raises(FleetError) as info:
        _schema(Request("rollback"), None, chosen, rollback_plan(sims), Points(), tmp_path, warned.append)
    assert "rollback across a database schema change" in info.value.what
    assert point.restore_command in (info.value.hint or "")
    _schema(
        Request("rollback", allow_schema_rollback=True),
        None,
        chosen,
        rollback_plan(sims),
        Points(),
        tmp_path,
        warned.append,
    )
    assert warned and "allowed by --force-schema-rollback" in warned[0] and point.restore_command in warned[0]
    off = [SimpleNamespace(settings=SimpleNamespace(dify=SimpleNamespace(migrations="off")))]
    _schema(Request("rollback"), None, off, rollback_plan(sims), Points(), tmp_path, warned.append)


def test_the_service_plans_the_phase_from_the_inventory_settings(tmp_path: Path) -> None:
    old = Release("3" * 16, "1.0.0", NOBEAT)
    new = Release("4" * 16, "1.1.0", NOBEAT)
    KNOWN.update({old.id: old, new.id: new})
    sims = {f"h{i}": Sim(current=old.id) for i in (1, 2)}

    def settings(mode: str) -> list[Any]:
        dify = SimpleNamespace(
            migrations=mode, migration_command=["flask", "db", "upgrade"], migration_timeout=60
        )
        return [SimpleNamespace(settings=SimpleNamespace(dify=dify))]

    plan = plan_for(sims, new)
    _schema(Request("rollout"), None, settings("phase"), plan, Points(), tmp_path, print)
    assert isinstance(plan.migration, Migration)
    assert plan.migration.command == ("flask", "db", "upgrade") and plan.migration.timeout == 60
    assert plan.migration.restore == "a test backup"
    off = plan_for(sims, new)
    _schema(Request("rollout"), None, settings("off"), off, Points(), tmp_path, print)
    assert off.migration is None


def test_local_restore_points_are_timestamps() -> None:
    point = restore.LocalRestorePoints().take("x")
    assert point.kind == "timestamp" and point.id.endswith("Z") and point.id in point.restore_command
    assert RestorePoint.from_dict(point.as_dict()) == point


def test_the_plan_and_dry_run_show_the_pending_migration_and_its_restore_point(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from fleet.view.rollout import print_plan

    print_plan(migrating_plan(fleet(2)))
    out = capsys.readouterr().out
    assert "migration: database schema rev-b -> rev-c, once, before batch 1" in out
    assert "restore point first: a test backup" in out
    assert "then on h1: docker compose run --rm --no-deps -T --entrypoint flask api upgrade-db" in out
    print_plan(plan_for(fleet(2)))
    assert "migration" not in capsys.readouterr().out


@pytest.fixture
def compute_api() -> Iterator[Any]:
    """The Compute stand-in the fleet lock lives in (project metadata), as in test_rollout_lock.py."""
    from standins.compute_api import ComputeApi
    from standins.compute_state import InMemoryCompute

    backend = InMemoryCompute(action_seconds=0.05, op_seconds=0.01)
    backend.add_project("p", {})
    api = ComputeApi(backend).start()
    yield api
    api.stop()
    backend.close()


def test_a_failing_migration_through_execute_releases_the_fleet_lock(
    compute_api: Any, tmp_path: Path
) -> None:
    """The whole run (lock, journal, engine, unlock) with the engine on fake hosts: the lock the run
    took is gone afterwards, the journal ends `failed`, nothing was switched."""
    from fleet import rollout as ro
    from functions.fleet_contract import parse_lock
    from tests.unit.test_rollout_lock import _run, stored

    api = compute_api
    sims = fleet(2)
    ops = MigOps(sims)
    ops.migrate_error = "migrate the database failed (exit 1): boom"
    plan = migrating_plan(sims)
    points = Points()

    def strategy(_ssh: Any, the_plan: Plan, **kw: Any) -> InPlace:
        return InPlace(ops, the_plan, **kw)

    run = _run(api, tmp_path, strategy=strategy, restore_points=points)
    run.bundles = {h: FakeBundle(j.target.id) for h, j in plan.jobs.items()}  # type: ignore[misc]
    report = ro.execute(run, plan)
    assert report.outcome == "failed" and "boom" in report.problems[-1]
    assert parse_lock(stored(api)) is None  # released
    assert "switch" not in [op for _, op in ops.calls]
    events = jr.read(jr.find(tmp_path, plan.rollout_id))
    assert [e["status"] for e in events if e["event"] == "migration"] == ["start", "restore-point", "failed"]
    assert events[0]["event"] == "plan" and events[0]["lock"] == plan.operator  # it was held
    assert events[-1]["event"] == "end" and events[-1]["outcome"] == "failed"
