"""Database migrations as a rollout phase: which rollout migrates (the schema revision changes), where
it runs, the restore point taken before it, and what a rollback across it must be told.

A release's schema revision is data: compose/releases.yaml gives one per DIFY_VERSION (`schema:`).
Why there and not read from the image: the plan (and `--dry-run`) must know it before anything is
pulled or run, on the operator's machine, for the target and for every host's current release (a
version string is all a host's release.json has); reading the alembic head out of an image means
pulling and running it on some host. The manifest is already where each DIFY_VERSION's companions
are pinned, so a new release is one line there.

The phase (fleet/rollout/engine.py): under the fleet lock, after staging (images pulled), before the
canary: take a restore point (Cloud SQL: an on-demand backup, or a PITR timestamp when backups are
off; no managed database named: the time), journal it, run the migration once as a one-off container
of the target release on the first canary host (fleet.commands.release.compose_migrate), journal the
result. A failure switches nothing and ends the rollout (the lock is released by the run) with an
error naming the host, the command and the restore point. A resumed rollout whose journal says the
migration finished does not migrate again.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from fleet.commands import release as rc
from fleet.errors import FleetError
from fleet.gcp.sqlbackup import RestorePoint

if TYPE_CHECKING:
    from fleet.inventory import Inventory
    from fleet.release.pairing import Manifest

# fleet.rollout.model imports this module (Plan.migration), so plans and releases are typed loosely
# here: a Plan (jobs with .source/.target Releases, .unchanged, .batches, .action) and a Release (.version)
Plan = Any
Release = Any

__all__ = [
    "LocalRestorePoints",
    "Migration",
    "RestorePoint",
    "RestorePoints",
    "plan_migration",
    "restore_points_for",
    "schema_change",
]


class RestorePoints(Protocol):
    """Takes a restore point of the fleet's database (raises FleetError when it cannot)."""

    def describe(self) -> str:
        """What `take` would record, for a dry run."""
        ...

    def take(self, description: str) -> RestorePoint: ...


class LocalRestorePoints:
    """No managed database named in the inventory: the restore point is the time it was taken."""

    def describe(self) -> str:
        return "a timestamp (the inventory names no Cloud SQL instance: data_layer.sql_instance)"

    def take(self, description: str) -> RestorePoint:
        when = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        return RestorePoint(
            "timestamp",
            when,
            when,
            "database",
            f"restore the database to its state at {when} with your database's own tools",
        )


def restore_points_for(inv: Inventory) -> RestorePoints:
    """Cloud SQL when the inventory names its data layer (data_layer.sql_instance), else timestamps."""
    if not any(h.settings.data_layer is not None for h in inv.hosts.values()):
        return LocalRestorePoints()
    from fleet.gcp.sqlbackup import CloudSqlRestorePoints
    from fleet.inventory import datalayer

    layer = datalayer.resolve(inv)
    return CloudSqlRestorePoints(layer.project, layer.sql_instance, endpoint=layer.endpoints.sqladmin)


@dataclass(frozen=True)
class Migration:
    """The pending migration of a rollout, as planned (the journal's plan carries it)."""

    from_revisions: tuple[str, ...]  # the revisions the fleet's hosts run now ("none": no release)
    to_revision: str
    host: str  # where the one-off container runs: the first canary host
    release: str  # the target release it runs from
    command: tuple[str, ...]  # inside the api service, entrypoint replaced
    timeout: int
    restore: str  # what restore point will be taken (RestorePoints.describe)

    def label(self) -> str:
        return f"{' + '.join(self.from_revisions)} -> {self.to_revision}"

    def shell(self, layout: rc.Layout) -> str:
        return rc.compose_migrate(layout, self.release, self.command).display()

    def as_dict(self) -> dict[str, Any]:
        return {
            "from": list(self.from_revisions),
            "to": self.to_revision,
            "host": self.host,
            "release": self.release,
            "command": list(self.command),
            "timeout": self.timeout,
            "restore": self.restore,
        }

    @classmethod
    def from_dict(cls, raw: Any) -> Migration | None:
        if not isinstance(raw, Mapping) or not raw.get("to"):
            return None
        return cls(
            tuple(str(r) for r in raw.get("from") or ()),
            str(raw["to"]),
            str(raw["host"]),
            str(raw["release"]),
            tuple(str(w) for w in raw.get("command") or rc.MIGRATE_COMMAND),
            int(raw.get("timeout") or 1800),
            str(raw.get("restore") or ""),
        )


NO_RELEASE = "none"


def _revisions(manifest: Manifest, releases: Iterable[Release | None]) -> list[str]:
    out: list[str] = []
    for rel in releases:
        rev = NO_RELEASE if rel is None else manifest.revision(rel.version) or f"unknown({rel.version})"
        if rev not in out:
            out.append(rev)
    return out


def plan_migration(
    plan: Plan,
    manifest: Manifest | None,
    *,
    enabled: bool = True,
    command: Sequence[str] = rc.MIGRATE_COMMAND,
    timeout: int = 1800,
    restore: str = "",
    warn: Any = None,
) -> Migration | None:
    """The migration a rollout needs: when the target's schema revision differs from a revision some
    host of the fleet runs (a host without a release counts: a fresh database needs its schema).
    None when nothing changes, when migrations are off, or when the target's revision is not recorded
    (then `warn` says so)."""
    if plan.action != "rollout" or not plan.jobs or manifest is None or not enabled:
        return None
    targets = {j.target.version for j in plan.jobs.values()}
    if len(targets) != 1:
        return None
    host = plan.batches[0][0]
    sources = [j.source for j in plan.jobs.values()] + list(plan.unchanged.values())
    return pending_migration(
        manifest,
        sources,
        plan.jobs[host].target,
        host,
        command=command,
        timeout=timeout,
        restore=restore,
        warn=warn,
    )


def pending_migration(
    manifest: Manifest,
    sources: Iterable[Release | None],
    target: Release,
    host: str,
    *,
    command: Sequence[str] = rc.MIGRATE_COMMAND,
    timeout: int = 1800,
    restore: str = "",
    warn: Any = None,
) -> Migration | None:
    """The migration that bringing hosts running `sources` (None: no release) to `target` needs, run
    on `host`: None when no revision changes, or when the target's is not recorded (`warn` says so).
    `fab rollout` (plan_migration) and `fab deploy` both ask here."""
    to_rev = manifest.revision(target.version)
    if to_rev is None:
        if warn is not None:
            warn(
                f"DIFY_VERSION {target.version} has no schema revision in compose/releases.yaml: no "
                "migration phase; migrate the database yourself if this release needs it"
            )
        return None
    from_revs = _revisions(manifest, sources)
    if from_revs == [to_rev]:
        return None
    return Migration(
        tuple(r for r in from_revs if r != to_rev) or (to_rev,),
        to_rev,
        host,
        target.id,
        tuple(command),
        timeout,
        restore,
    )


def _version_key(version: str) -> tuple[int, ...] | None:
    match = re.match(r"v?(\d+(?:\.\d+)*)", version or "")
    return tuple(int(n) for n in match.group(1).split(".")) if match else None


def schema_going_back(
    manifest: Manifest | None, sources: Iterable[Release | None], target: Release
) -> tuple[list[str], list[str]] | None:
    """For a deploy (which goes either way): (the revisions of the hosts that run a NEWER DIFY_VERSION
    than `target` with another schema revision, [the target's revision]); None when no host would go
    back across a schema change, or when a revision is not recorded (nothing to tell)."""
    if manifest is None:
        return None
    back = manifest.revision(target.version)
    to_key = _version_key(target.version)
    if back is None or to_key is None:
        return None
    now: list[str] = []
    for rel in sources:
        if rel is None:
            continue
        rev, key = manifest.revision(rel.version), _version_key(rel.version)
        if rev is not None and rev != back and key is not None and key > to_key and rev not in now:
            now.append(rev)
    return (now, [back]) if now else None


def schema_change(plan: Plan, manifest: Manifest | None) -> tuple[list[str], list[str]] | None:
    """For a rollback: (revisions the hosts run now, revisions they would go back to) when they differ;
    None when they are the same, or when a release's revision is not recorded (nothing to tell)."""
    if manifest is None or not plan.jobs:
        return None
    now = _revisions(manifest, [j.source for j in plan.jobs.values()])
    back = _revisions(manifest, [j.target for j in plan.jobs.values()])
    if any(r == NO_RELEASE or r.startswith("unknown(") for r in now + back):
        return None
    return None if set(now) == set(back) else (now, back)


@dataclass(frozen=True)
class Recorded:
    """A restore point a rollout of this inventory journaled before migrating."""

    rollout_id: str
    to_revision: str
    point: RestorePoint


def recorded_restore_points(journal_dir: Path) -> list[Recorded]:
    """Every restore point this machine's journals of the inventory hold, oldest first."""
    from fleet.rollout import journal as jr

    found: list[Recorded] = []
    for path in jr.journals(journal_dir):
        for event in jr.read(path):
            if event.get("event") == "migration" and event.get("status") == "restore-point":
                point = RestorePoint.from_dict(event.get("restore_point"))
                if point is not None:
                    found.append(Recorded(path.stem, str(event.get("to") or ""), point))
    return found


def refuse_schema_rollback(
    now: Sequence[str], back: Sequence[str], recorded: Sequence[Recorded], flag: str, what: str = "rollback"
) -> FleetError:
    """The error of a rollback (or a deploy back) across a schema change: the restore point and its
    exact command."""
    match = [r for r in recorded if r.to_revision in now]
    if match:
        last = match[-1]
        point = (
            f"the restore point taken before migrating to {last.to_revision} (rollout {last.rollout_id}) "
            f"is {last.point.text()}, taken {last.point.time}; restore it with: {last.point.restore_command}"
        )
    else:
        point = (
            "no restore point of that migration is journaled on this machine (the rollout that migrated "
            "ran elsewhere, or before migrations were a phase): find the backup taken before it "
            "(`gcloud sql backups list --instance=INSTANCE`)"
        )
    return FleetError(
        f"{what} across a database schema change: the hosts run schema {' + '.join(now)}, the release "
        f"to go back to expects {' + '.join(back)}; the code would go back, the schema would not",
        hint=f"{point}. To roll back the code anyway (the old code on the newer schema, which works only "
        f"if the migration was backward compatible), pass {flag}",
    )


def guard_schema_rollback(
    now: Sequence[str],
    back: Sequence[str],
    journal_dir: Path,
    *,
    allowed: bool,
    warn: Callable[[str], None],
    what: str = "rollback",
    flag: str = "--force-schema-rollback",
) -> None:
    """Refuse going back across a schema change (FleetError naming the restore point this machine's
    journals recorded and its restore command), or, `allowed`, say what that means and go on.
    `fab rollback` and `fab deploy` both guard here."""
    refusal = refuse_schema_rollback(now, back, recorded_restore_points(journal_dir), flag, what)
    if not allowed:
        raise refusal
    warn(f"{refusal.what} (allowed by {flag}). {(refusal.hint or '').split('. To roll back')[0]}")


# --------------------------------------------------------------------------- the phase itself


@dataclass
class PhaseResult:
    """How the migration phase ended: `report` is the run's summary (Report.migration, DeployReport
    .migration); `problem` says why it failed (nothing was switched)."""

    ok: bool
    report: dict[str, Any]
    problem: str | None = None


def run_phase(
    mig: Migration,
    *,
    rollout_id: str,
    command: str,
    points: RestorePoints | None,
    emit: Callable[..., Any],
    migrate: Callable[[], Any],
) -> PhaseResult:
    """A restore point, then the migration once (`migrate()`: a HostResult of running `mig` on
    `mig.host`), each journaled through `emit(event, **fields)`. The caller holds the fleet lock and
    switches nothing before this returns ok. `fab rollout` (the engine) and `fab deploy` run this."""
    base: dict[str, Any] = {"from": list(mig.from_revisions), "to": mig.to_revision, "host": mig.host}
    base["command"] = command
    emit("migration", status="start", **base)
    points = points or LocalRestorePoints()
    try:
        point = points.take(f"compose-fleet {rollout_id}: before schema {mig.to_revision}")
    except Exception as exc:
        error = (
            exc.render().replace("\n", " ") if isinstance(exc, FleetError) else f"{type(exc).__name__}: {exc}"
        )
        emit("migration", status="failed", stage="restore-point", error=error, **base)
        return PhaseResult(
            False,
            {**base, "status": "failed", "error": error},
            f"no restore point could be taken ({error}): nothing was migrated, nothing was switched",
        )
    emit("migration", status="restore-point", restore_point=point.as_dict(), **base)
    started = time.monotonic()
    result = migrate()
    seconds = round(time.monotonic() - started, 3)
    if not result.ok:
        error = result.error or result.status
        emit(
            "migration",
            status="failed",
            stage="migrate",
            error=error,
            seconds=seconds,
            restore_point=point.as_dict(),
            **base,
        )
        return PhaseResult(
            False,
            {**base, "status": "failed", "error": error, "restore_point": point.as_dict()},
            f"the migration {mig.label()} failed on {mig.host}: {error}; command: {command}; nothing "
            f"was switched on any host; restore point: {point.text()} (if the migration left the "
            f"schema half-way: {point.restore_command})",
        )
    output = str(result.data.get("output") or "")
    emit(
        "migration",
        status="done",
        seconds=seconds,
        restore_point=point.as_dict(),
        output=output[-500:],
        **base,
    )
    return PhaseResult(True, {**base, "status": "done", "seconds": seconds, "restore_point": point.as_dict()})
