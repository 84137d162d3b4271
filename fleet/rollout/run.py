"""One run, start to end: planning over SSH, then lock, journal, engine, unlock."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fleet.commands import release as rc
from fleet.errors import FleetError
from fleet.release import hoststeps as ht
from fleet.rollout.engine import Engine, Observer, _text
from fleet.rollout.hostops import HostOps, SshHostOps
from fleet.rollout.inplace import InPlace
from fleet.rollout.marks import Marks
from fleet.rollout.model import Plan, Release, Report
from fleet.rollout.planning import pick_release
from fleet.ssh.runner import HostContext, HostResult, run_step

if TYPE_CHECKING:
    from nornir.core import Nornir

    from fleet.inventory import FleetHost, Inventory
    from fleet.release.bundle import Bundle
    from fleet.rollout.journal import Journal
    from fleet.rollout.lbview import LBView


def read_states(nr: Nornir, *, preflight: bool = False) -> dict[str, rc.HostState]:
    """Every host's release state, or one FleetError naming each host that could not be read. With
    `preflight`, also what a rollout needs and only reads: Docker and Compose v2 answer, the layout
    exists, enough free disk (so a bad host is refused before the lock is even taken)."""
    results = run_step(nr, _ready_step if preflight else _state_step)
    bad = [f"{r.host}: {r.status}: {r.error}" for r in results if not r.ok]
    if bad:
        raise FleetError(
            "cannot read the release state of every host:\n  " + "\n  ".join(bad),
            hint="nothing was changed; fix or leave out those hosts (--hosts)",
        )
    return {r.host: r.data["state"] for r in results}


def _state_step(ctx: HostContext) -> HostResult:
    return HostResult(ctx.host.name, "ok", data={"state": ht.read_state(ctx)})


def _ready_step(ctx: HostContext) -> HostResult:
    from fleet.rollout.deploy import check_ready

    return HostResult(ctx.host.name, "ok", data={"state": check_ready(ctx)})


def staged_targets(ops: HostOps, states: Mapping[str, rc.HostState], spec: str | None) -> dict[str, Release]:
    """Per host of `states`, the staged release to go to: `previous` (spec None), else an id/prefix or
    a version (`fab rollout --release`, `fab rollback --to`)."""

    def find(name: str) -> HostResult:
        state = states[name]
        if spec is None:
            if not state.previous:
                raise FleetError("no previous release to roll back to", where=name)
            rid = state.previous
        else:
            rid = pick_release(ops.releases(name), spec, name)
        record = ops.release_record(name, rid)
        try:
            import json

            meta = json.loads(record)
        except ValueError:
            raise FleetError(f"release {rid} has no readable release.json", where=name) from None
        version = meta.get("version") if isinstance(meta, dict) else None
        disabled = meta.get("disabled_services") if isinstance(meta, dict) else None
        rel = Release(rid, str(version or ""), tuple(str(s) for s in disabled or ()))
        return HostResult(name, "ok", data={"release": rel})

    results = ops.each(list(states), find)
    bad = [r.error or r.status for r in results if not r.ok]
    if bad:
        raise FleetError(
            "cannot find the release to go to on every host:\n  " + "\n  ".join(bad),
            hint="nothing was changed",
        )
    return {r.host: r.data["release"] for r in results}


# =========================================================================== one run, start to end


@dataclass
class Run:
    """What `execute` needs besides the plan."""

    inv: Inventory
    nr: Nornir
    lock: Any  # fleet.rollout.lock.FleetLock
    lb: Callable[[FleetHost], LBView]
    marks: Marks
    journal_dir: Any  # pathlib.Path
    bundles: Mapping[str, Bundle] | None = None
    observer: Observer | None = None
    stop: threading.Event | None = None
    inventory_arg: str | None = None
    ttl: float = 300.0
    warn: Callable[[str], None] | None = None
    # builds the engine: InPlace (over SSH), or fleet.rollout.replace.engine_for(...) (the MIG)
    strategy: Callable[..., Engine] = InPlace
    events: Any = None  # fleet.gcp.events.EventPublisher: lock events on the fleet's topic
    restore_points: Any = None  # fleet.rollout.restore.RestorePoints: before a migration phase


def execute(run: Run, plan: Plan, resume: Any = None) -> Report:
    """Lock, journal, engine, unlock. `resume` is a fleet.rollout.journal.Replay of the rollout to continue.

    A resume claims the journal first (one process per rollout: a second `--resume` is refused), then
    takes the lock (refused while another process holds this rollout). A lock that is lost, or that
    cannot be renewed in time, stops the engine at its next step (hosts undrained) and is journaled."""
    import os

    from fleet.rollout import journal as jr
    from fleet.rollout import lock as lk

    journal: Journal | None = None
    if resume is not None:
        journal = jr.Journal.claim(jr.find(run.journal_dir, plan.rollout_id))
        resume = jr.load(journal.path)  # what the journal says now that no other process can add to it
        if resume.finished:
            journal.close()
            raise FleetError(
                f"nothing to resume: rollout {plan.rollout_id} ended: {resume.outcome}",
                where=str(journal.path),
            )

    def journal_lost(exc: FleetError) -> None:
        if journal is not None:
            journal.append("lock", status="lost", error=exc.what)

    reason = plan.message or plan.label
    try:
        events = run.events

        def announce(action: str, result: str, detail: str) -> None:
            if events is not None:
                events.publish("lock", action, result, rollout_id=plan.rollout_id, detail=detail)

        with lk.holding(
            run.lock,
            plan.operator,
            reason,
            plan.rollout_id,
            run.ttl,
            run.warn,
            on_lost=journal_lost,
            announce=announce,
        ) as heartbeat:
            held = heartbeat.lock
            try:
                if resume is None:
                    journal = jr.Journal.create(run.journal_dir, plan.rollout_id)
                    journal.append(
                        "plan", pid=os.getpid(), lock=held.owner, holder=held.holder, **plan.as_dict()
                    )
                else:
                    assert journal is not None
                    journal.append(
                        "resume", pid=os.getpid(), lock=held.owner, holder=held.holder, touched=resume.touched
                    )
                engine = run.strategy(
                    SshHostOps(run.nr),
                    plan,
                    journal=journal,
                    lb=run.lb,
                    marks=run.marks,
                    bundles=run.bundles,
                    observer=run.observer,
                    stop=run.stop,
                    lock_lost=heartbeat.problem,
                    touched=resume.touched if resume is not None else (),
                    inventory_arg=run.inventory_arg,
                    resumed=resume is not None,
                    restore_points=run.restore_points,
                    migrated=resume.migrated if resume is not None else None,
                )
                if resume is not None and resume.reverting is not None:
                    report = engine.run(stage=False, phase="rollback", revert_hosts=resume.reverting)
                else:
                    report = engine.run(stage=True)
                if heartbeat.errors:
                    report.problems.append(f"lock renewal hiccups: {heartbeat.errors[-1]}")
                journal.append(
                    "end", outcome=report.outcome, failures=report.failures, problems=report.problems
                )
                return report
            except BaseException as exc:
                if journal is not None:
                    journal.append("end", outcome="failed", error=_text(exc))
                raise
    finally:
        if journal is not None:
            journal.close()
