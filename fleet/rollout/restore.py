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

from collections.abc import Iterable, Mapping, Sequence
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
    target = next(iter(plan.jobs.values())).target
    to_rev = manifest.revision(target.version)
    if len(targets) != 1 or to_rev is None:
        if warn is not None and len(targets) == 1:
            warn(
                f"DIFY_VERSION {target.version} has no schema revision in compose/releases.yaml: no "
                "migration phase; migrate the database yourself if this release needs it"
            )
        return None
    sources = [j.source for j in plan.jobs.values()] + list(plan.unchanged.values())
    from_revs = _revisions(manifest, sources)
    if from_revs == [to_rev]:
        return None
    host = plan.batches[0][0]
    return Migration(
        tuple(r for r in from_revs if r != to_rev) or (to_rev,),
        to_rev,
        host,
        plan.jobs[host].target.id,
        tuple(command),
        timeout,
        restore,
    )


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
    now: Sequence[str], back: Sequence[str], recorded: Sequence[Recorded], flag: str
) -> FleetError:
    """The error of a rollback across a schema change: the restore point and its exact command."""
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
        f"rollback across a database schema change: the hosts run schema {' + '.join(now)}, the release "
        f"to go back to expects {' + '.join(back)}; the code would go back, the schema would not",
        hint=f"{point}. To roll back the code anyway (the old code on the newer schema, which works only "
        f"if the migration was backward compatible), pass {flag}",
    )
