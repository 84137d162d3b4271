"""The rollout's data: releases, host jobs, the plan (what the journal stores), outcomes and the report."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from fleet.commands import release as rc
from fleet.commands.base import release_id
from fleet.commands.rollout import BEAT
from fleet.errors import FleetError
from fleet.release import hoststeps as ht
from fleet.rollout.pacing import Timings
from fleet.rollout.restore import Migration

if TYPE_CHECKING:
    from fleet.release.bundle import Bundle

ON_FAILURE = ("rollback", "pause", "continue")
EXIT_CODES = {"succeeded": 0, "failed": 1, "rolled-back": 3, "paused": 4, "interrupted": 4}
BEAT_ROLE = "beat"
# host results that count against the failure budget
FAILED_RESULTS = ("rolled-back", "failed", "unreachable")
DONE_RESULTS = ("updated", "unchanged")


@dataclass(frozen=True)
class Release:
    """A release on one host: its id, version and the services disabled there (profiles)."""

    id: str
    version: str
    disabled: tuple[str, ...] = ()

    @property
    def runs_beat(self) -> bool:
        return BEAT not in self.disabled

    def label(self) -> str:
        return f"{self.version} ({self.id})"

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "version": self.version, "disabled": list(self.disabled)}

    @classmethod
    def from_dict(cls, raw: Any) -> Release | None:
        if not isinstance(raw, Mapping) or not raw.get("id"):
            return None
        disabled = raw.get("disabled") or []
        return cls(release_id(str(raw["id"])), str(raw.get("version") or ""), tuple(str(s) for s in disabled))

    @classmethod
    def from_state(cls, state: rc.HostState) -> Release | None:
        if not state.current:
            return None
        return cls(state.current, state.version or "", tuple(ht.disabled_services(state.record)))

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> Release:
        return cls(bundle.release_id, bundle.version, tuple(bundle.disabled_services))


@dataclass
class HostJob:
    host: str
    batch: int
    source: Release | None  # what the host ran before: where a failure puts it back
    target: Release
    previous: str | None = None  # its `previous` link before: a revert restores it too

    def as_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "batch": self.batch,
            "source": self.source.as_dict() if self.source else None,
            "target": self.target.as_dict(),
            "previous": self.previous,
        }


@dataclass
class Plan:
    """Everything a run needs, and what the journal stores so that a resume runs the same plan."""

    rollout_id: str
    action: str  # rollout | rollback
    inventory: str
    label: str  # what the operator asked for: a version, "previous", a release id
    jobs: dict[str, HostJob]
    batches: list[list[str]]
    unchanged: dict[str, Release]
    budget: int
    on_failure: str
    timings: Timings
    operator: str
    message: str = ""
    beat_host: str | None = None
    strategy: str = "ssh"  # ssh (in place) | replace (the MIG): a resume goes on the same way
    migration: Migration | None = None  # the schema migration phase before the canary (restore.py)

    def as_dict(self) -> dict[str, Any]:
        return {
            "rollout_id": self.rollout_id,
            "action": self.action,
            "inventory": self.inventory,
            "label": self.label,
            "jobs": [j.as_dict() for j in self.jobs.values()],
            "batches": self.batches,
            "unchanged": {h: r.as_dict() for h, r in self.unchanged.items()},
            "budget": self.budget,
            "on_failure": self.on_failure,
            "timings": asdict(self.timings),
            "operator": self.operator,
            "message": self.message,
            "beat_host": self.beat_host,
            "strategy": self.strategy,
            "migration": self.migration.as_dict() if self.migration else None,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Plan:
        try:
            jobs = {}
            for j in raw["jobs"]:
                target = Release.from_dict(j["target"])
                if target is None:
                    raise KeyError("target")
                previous = release_id(j["previous"]) if j.get("previous") else None
                jobs[j["host"]] = HostJob(
                    j["host"], int(j["batch"]), Release.from_dict(j.get("source")), target, previous
                )
            unchanged = {h: r for h, v in (raw.get("unchanged") or {}).items() if (r := Release.from_dict(v))}
            return cls(
                rollout_id=str(raw["rollout_id"]),
                action=str(raw["action"]),
                inventory=str(raw["inventory"]),
                label=str(raw["label"]),
                jobs=jobs,
                batches=[list(b) for b in raw["batches"]],
                unchanged=unchanged,
                budget=int(raw["budget"]),
                on_failure=str(raw["on_failure"]),
                timings=Timings(**raw["timings"]),
                operator=str(raw["operator"]),
                message=str(raw.get("message") or ""),
                beat_host=raw.get("beat_host"),
                strategy=str(raw.get("strategy") or "ssh"),
                migration=Migration.from_dict(raw.get("migration")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise FleetError(
                f"the journal's plan is incomplete ({exc})", hint="it cannot be resumed"
            ) from None


@dataclass
class HostOutcome:
    host: str
    batch: int
    # updated unchanged rolled-back reverted failed unreachable interrupted not-started
    result: str = "not-started"
    from_release: str | None = None
    from_version: str | None = None
    to_release: str | None = None
    to_version: str | None = None
    duration: float = 0.0
    error: str | None = None
    problems: list[str] = field(default_factory=list)
    drained: bool | None = False  # at the end; None = unknown (unreachable)
    steps: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Report:
    rollout_id: str
    action: str
    label: str
    outcome: str  # succeeded | failed | rolled-back | paused | interrupted
    hosts: list[HostOutcome]
    failures: int
    budget: int
    duration: float
    problems: list[str] = field(default_factory=list)
    stage_seconds: float = 0.0
    resume_command: str | None = None
    beat_seen: list[list[str]] = field(default_factory=list)  # hosts running worker_beat at each check
    # the migration phase: from/to, host, command, restore_point, status (done | failed | skipped)
    migration: dict[str, Any] | None = None

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.outcome]

    def as_dict(self) -> dict[str, Any]:
        return {
            "rollout_id": self.rollout_id,
            "action": self.action,
            "target": self.label,
            "outcome": self.outcome,
            "exit_code": self.exit_code,
            "failures": self.failures,
            "budget": self.budget,
            "duration": round(self.duration, 2),
            "stage_seconds": round(self.stage_seconds, 2),
            "problems": self.problems,
            "resume_command": self.resume_command,
            "beat_seen": self.beat_seen,
            "migration": self.migration,
            "hosts": [h.as_dict() for h in self.hosts],
        }


class HostFailed(FleetError):
    """A gate did not pass on one host (the host is still reachable)."""

    def __init__(self, host: str, step: str, what: str) -> None:
        self.step = step
        super().__init__(f"{step}: {what}", where=host)


class Interrupted(Exception):
    """The operator asked to stop (SIGINT/SIGTERM) or the lock was lost: leave the host as it was."""
