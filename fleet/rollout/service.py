"""Rollout and rollback as library calls: select, plan (or load the journal to resume), then lock,
journal, engine, unlock, and a typed `Outcome` back. `fab rollout`/`fab rollback`, the demo and the
benchmark all call `perform`; only how they show it differs (the `Hooks`).

Nothing here prints or asks: a caller that wants the plan shown, a confirmation, a progress display
or Ctrl-C handling passes hooks (fleet/cli/rollout.py does all four).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from fleet.errors import FleetError
from fleet.release import budget
from fleet.rollout.engine import Observer
from fleet.rollout.model import Plan, Report


@dataclass
class Request:
    """What to roll where. `None` = not given: the inventory's `rollout` section, else the default."""

    action: str = "rollout"  # rollout | rollback
    inventory: str | None = None
    hosts: str | None = None
    group: str | None = None
    where: Sequence[str] = ()
    version: str = ""  # rollout: render and upload this version (default: the inventory's)
    spec: str | None = None  # rollout --release / rollback --to: a staged release (id, prefix, version)
    canary: int | None = None
    batch: str | None = None
    max_failures: str | None = None
    on_failure: str | None = None
    drain_wait: float | None = None
    min_ready: float | None = None
    health_timeout: float | None = None
    dry_run: bool = False
    message: str = ""
    resume: bool = False
    rollout_id: str = ""
    workers: int = 0
    strategy: str | None = None  # ssh | replace (default: the inventory's rollout.strategy, else ssh)
    allow_schema_rollback: bool = False  # rollback: go back across a schema change (the code only)


def _no_warning(text: str) -> None: ...


@dataclass
class Hooks:
    """How a caller watches and steers a run; every hook is optional."""

    warn: Callable[[str], None] = _no_warning
    # after planning, before anything changes (not called on a dry run): show it, ask (raise to cancel)
    planned: Callable[[Plan, bool], None] | None = None  # (plan, resumed)
    # around the run itself: e.g. a progress display and signal handlers; yields the event observer
    watch: Callable[[Plan], AbstractContextManager[Observer | None]] | None = None
    stop: threading.Event | None = None  # set it to stop after the current host step (Ctrl-C)


@dataclass
class Outcome:
    """`report` is None when nothing ran: nothing to do, or a dry run (then `diffs`, per host)."""

    plan: Plan
    report: Report | None = None
    dry_run: bool = False
    diffs: dict[str, Any] = field(default_factory=dict)  # host -> fleet.diff result, None = unreadable
    budgets: tuple[Any, ...] = ()  # fleet.release.budget.Budget: database connections at the largest size
    interrupted: bool = False  # the stop event was set
    replace: dict[str, Any] | None = None  # --strategy replace dry run: template, its diff, update policy

    @property
    def exit_code(self) -> int:
        return self.report.exit_code if self.report is not None else 0


def rollout(
    inventory: str | None = None, *, version: str = "", release: str | None = None, **o: Any
) -> Outcome:
    """`fab rollout` as a call: `rollout("local", version="1.1.0")`. Keywords: Request's fields, and
    `hooks`."""
    hooks = o.pop("hooks", None)
    return perform(Request("rollout", inventory, version=version, spec=release, **o), hooks)


def rollback(inventory: str | None = None, *, to: str | None = None, **o: Any) -> Outcome:
    """`fab rollback` as a call: back to each host's previous release, or `to` a staged one."""
    hooks = o.pop("hooks", None)
    return perform(Request("rollback", inventory, spec=to, **o), hooks)


def perform(req: Request, hooks: Hooks | None = None) -> Outcome:
    """One rollout or rollback, start to end (or its plan, with `dry_run`)."""
    hooks = hooks or Hooks()
    warn = hooks.warn
    if req.strategy not in (None, "ssh", "replace"):
        raise FleetError(f"invalid --strategy {req.strategy!r}", hint="ssh | replace; nothing was changed")
    preload = _preload() if not req.dry_run else None
    from fleet import rollout as ro
    from fleet.inventory import choose
    from fleet.rollout import journal as jr
    from fleet.rollout import lock as lk
    from fleet.ssh.runner import build_nornir

    inv, chosen = choose(req.inventory, req.hosts, req.group, req.where)
    inventory_arg = req.inventory or inv.name
    journal_dir = jr.fleet_dir(inv)

    replay = None
    if req.resume:
        path = jr.find(journal_dir, req.rollout_id or None)
        replay = jr.load(path)
        if replay.plan is None:
            raise FleetError(f"journal {path} has no plan", hint="it cannot be resumed")
        if replay.finished:
            raise FleetError(
                f"nothing to resume: rollout {replay.rollout_id} ended: {replay.outcome}",
                where=str(path),
            )
        if jr.pid_alive(replay.pid):
            raise FleetError(
                f"rollout {replay.rollout_id} is still running (pid {replay.pid})",
                hint="stop it with Ctrl-C (it undrains and releases the lock), then resume",
            )
        plan = ro.Plan.from_dict(replay.plan)
        missing = [h for h in plan.jobs if h not in inv.hosts]
        if missing:
            raise FleetError(
                f"hosts of rollout {plan.rollout_id} are no longer in the inventory: {', '.join(missing)}",
                hint="put them back, or start a new rollout",
            )
        chosen = [inv.hosts[h] for h in plan.jobs]
    ro.check_beat_singleton(inv)
    if not req.dry_run and req.action == "rollout":
        from fleet.rollout.publish import check_publishable

        check_publishable(inv, chosen)
    # every inventory host (connections open lazily): worker_beat is checked fleet-wide
    nr = build_nornir(inv, list(inv.hosts.values()), req.workers or None)
    names = {h.name for h in chosen}
    selected = nr.filter(filter_func=lambda h: h.name in names)
    try:
        bundles = None
        from fleet.rollout import restore

        points = restore.restore_points_for(inv)
        if replay is None:
            plan, bundles = _plan(req, inv, chosen, selected)
            _schema(req, inv, chosen, plan, points, journal_dir, warn)
        elif plan.action == "rollout":
            bundles = _rerender(inv, chosen, plan, warn)
        if not plan.jobs:
            return Outcome(plan, dry_run=req.dry_run)
        strategy = req.strategy or chosen[0].settings.rollout.strategy
        if replay is not None and req.strategy and req.strategy != plan.strategy:
            raise FleetError(
                f"rollout {plan.rollout_id} ran with --strategy {plan.strategy}",
                hint=f"resume it with --strategy {plan.strategy} (or without --strategy)",
            )
        strategy = plan.strategy if replay is not None else strategy
        plan.strategy = strategy
        migration = getattr(plan, "migration", None)
        if strategy == "replace" and migration is not None:
            # the MIG recreates VMs that boot the release with MIGRATION_ENABLED=false: nobody would
            # migrate, and the new code would meet the old schema
            raise FleetError(
                f"--strategy replace does not run database migrations yet: release {migration.release} "
                f"changes the schema ({migration.label()})",
                hint="roll this release out with --strategy ssh (the migration runs once, before the "
                "canary, after a restore point), or set dify.migrations: off and migrate first; "
                "nothing was changed",
            )
        budgets = budget.for_inventory(inv, bundles) if bundles else ()
        if req.dry_run:
            preview = _replace_preview(inv, chosen, plan, warn) if strategy == "replace" else None
            return Outcome(
                plan, dry_run=True, diffs=_diffs(selected, bundles), budgets=budgets, replace=preview
            )
        for note in filter(None, (b.warning() for b in budgets)):
            warn(note)
        if hooks.planned is not None:
            hooks.planned(plan, replay is not None)
        if preload is not None:
            preload.join()
        store = lk.for_inventory(inv, chosen, warn=warn)
        compute = store.compute
        from fleet.rollout import lbview

        views: dict[str, Any] = {}

        def lb_for(host: Any) -> Any:
            if host.name not in views:
                views[host.name] = lbview.for_host(host, lambda: compute, plan.timings.drain_wait)
            return views[host.name]

        for h in chosen:
            lb_for(h)  # bad LB settings are input errors: refuse before anything runs
        stop = hooks.stop or threading.Event()
        run = ro.Run(
            inv=inv,
            nr=nr,
            lock=store,
            lb=lb_for,
            marks=ro.Marks(compute),
            journal_dir=journal_dir,
            bundles=bundles,
            stop=stop,
            inventory_arg=inventory_arg,
            ttl=lk.ttl_of(chosen),
            warn=warn,
            restore_points=points,
        )
        if strategy == "replace":
            from fleet.rollout import publish as pub
            from fleet.rollout import replace

            targets = {h: j.target.id for h, j in plan.jobs.items()}
            sources = {h: j.source.id for h, j in plan.jobs.items() if j.source is not None}

            def prepare() -> list[str]:
                return pub.upload_releases(inv, bundles, targets, sources, warn)

            run.strategy = replace.engine_for(replace.for_hosts(chosen, compute), prepare=prepare)
        from fleet.rollout import announce

        events = announce.publisher_for(inv, chosen, warn)
        run.events = events
        what = f"{plan.action} {plan.label} on {len(plan.jobs)} host(s) by {plan.operator}"
        if events is not None:
            events.publish(
                "rollout",
                plan.action,
                "resumed" if replay else "started",
                rollout_id=plan.rollout_id,
                detail=what,
            )
        watch = hooks.watch(plan) if hooks.watch is not None else nullcontext(None)
        with watch as observer:
            run.observer = observer
            report = ro.execute(run, plan, resume=replay)
        from fleet.rollout import publish

        releases = {h: j.target.id for h, j in plan.jobs.items()} | {
            h: r.id for h, r in plan.unchanged.items()
        }
        published = publish.record_run(
            inv,
            plan.action,
            report.outcome,
            bundles,
            releases,
            actor=plan.operator,
            rollout_id=plan.rollout_id,
            warn=warn,
        )
        newcomers = publish.joined_meanwhile(inv, list(releases)) if published is not None else []
        if newcomers:
            warn(
                f"{', '.join(newcomers)} joined the MIG during this {plan.action} and booted the release "
                f"that was the fleet's then, not {plan.label}: run `fab {plan.action}` again to bring "
                "them along (new VMs from now on boot the new release)"
            )
        if events is not None:
            result = announce.result_of(report.outcome)
            events.publish(
                "rollout", plan.action, result, rollout_id=plan.rollout_id, detail=f"{what}: {report.outcome}"
            )
        return Outcome(plan, report, interrupted=stop.is_set())
    finally:
        nr.close_connections(on_good=True, on_failed=True)


def _preload() -> threading.Thread:
    """google-cloud-compute takes seconds to import: do it while SSH connects and the bundle renders,
    through fleet.gcp.compute's own lazy path (the same modules, never the package's __init__), so
    connections that resolve host keys in other threads meanwhile import safely."""
    import contextlib

    def load() -> None:
        from fleet.errors import FleetError
        from fleet.gcp import compute

        with contextlib.suppress(ImportError, FleetError):
            compute.preload()

    thread = threading.Thread(target=load, name="preload-compute", daemon=True)
    thread.start()
    return thread


def _plan(req: Request, inv: Any, chosen: list[Any], nr: Any) -> tuple[Any, Any]:
    from fleet import rollout as ro
    from fleet.rollout import deploy as dp
    from fleet.rollout import lock as lk
    from fleet.rollout.hostops import SshHostOps

    opts = ro.resolve_options(
        chosen[0],
        canary=req.canary,
        batch=req.batch,
        max_failures=req.max_failures,
        on_failure=req.on_failure,
        drain_wait=req.drain_wait,
        min_ready=req.min_ready,
        health_timeout=req.health_timeout,
    )
    bundles = None
    if req.action == "rollout" and not req.spec:
        bundles = dp.render_all(inv, chosen, version=req.version or None)
    states = ro.read_states(nr, preflight=not req.dry_run)
    if bundles is not None:
        targets = {h: ro.Release.from_bundle(b) for h, b in bundles.items()}
        label = next(iter(bundles.values())).version
    else:
        targets = ro.staged_targets(SshHostOps(nr), states, req.spec)
        label = req.spec or "previous"
    plan = ro.make_plan(
        rollout_id=ro.new_rollout_id(req.action),
        action=req.action,
        inventory=inv.name,
        label=label,
        order=[h.name for h in chosen],
        sources={h: ro.Release.from_state(s) for h, s in states.items()},
        targets=targets,
        drained={h: s.drained for h, s in states.items()},
        previous={h: s.previous for h, s in states.items()},
        canary=opts["canary"],
        batch=opts["batch"],
        max_failures=opts["max_failures"],
        on_failure=opts["on_failure"],
        timings=opts["timings"],
        operator=lk.operator(),
        message=req.message,
        beat_host=next(iter(ro.beat_hosts(inv)), None),
    )
    return plan, bundles


def _schema(
    req: Request, inv: Any, chosen: list[Any], plan: Any, points: Any, journal_dir: Any, warn: Any
) -> None:
    """The database schema: a rollout that changes its revision gets a migration phase; a rollback
    across a change is refused unless allowed (fleet/rollout/restore.py). Neither with
    `dify.migrations: off`."""
    from fleet.release import pairing
    from fleet.rollout import restore

    manifest = pairing.load_manifest()
    dify = chosen[0].settings.dify
    if dify.migrations != "phase":
        return  # the operator migrates (and knows what a rollback across a schema change means)
    if plan.action == "rollout":
        plan.migration = restore.plan_migration(
            plan,
            manifest,
            enabled=dify.migrations == "phase",
            command=dify.migration_command,
            timeout=dify.migration_timeout,
            restore=points.describe(),
            warn=warn,
        )
        return
    change = restore.schema_change(plan, manifest)
    if change is None:
        return
    now, back = change
    restore.guard_schema_rollback(now, back, journal_dir, allowed=req.allow_schema_rollback, warn=warn)


def _replace_preview(inv: Any, chosen: list[Any], plan: Any, warn: Any) -> dict[str, Any]:
    """What a replace rollout would make and set (reads only)."""
    from fleet.rollout import lock as lk
    from fleet.rollout import replace

    move = replace.for_hosts(chosen, lk.for_inventory(inv, chosen, warn=warn).compute)
    target = next(iter(plan.jobs.values())).target
    return replace.preview(move, move.base_template(), target, max(len(b) for b in plan.batches))


def _rerender(inv: Any, chosen: list[Any], plan: Any, warn: Any) -> Any:
    """Bundles for a resumed rollout, used only where they still render to the planned release."""
    from fleet.rollout import deploy as dp

    version = next(iter(plan.jobs.values())).target.version
    try:
        bundles = dp.render_all(inv, chosen, version=version or None)
    except FleetError as exc:
        warn(f"cannot re-render the release ({exc.what}); resuming with what is staged on the hosts")
        return None
    return {h: b for h, b in bundles.items() if h in plan.jobs and b.release_id == plan.jobs[h].target.id}


def _diffs(nr: Any, bundles: Any) -> dict[str, Any]:
    """Per host, what the rollout would change (only when it renders a release: `--version`)."""
    from fleet.rollout import deploy as dp
    from fleet.ssh.runner import run_step

    diffs: dict[str, Any] = {}
    if bundles is not None:
        for r in run_step(nr, dp.diff_step(bundles)):
            diffs[r.host] = r.data["diff"] if r.ok else None
    return diffs


class StopOnSignals:
    """SIGINT/SIGTERM set `stop`: the engine finishes the current host step, undrains, and stops."""

    def __init__(self, stop: threading.Event, warn: Callable[[str], None]) -> None:
        self.stop = stop
        self.warn = warn
        self.saved: dict[int, Any] = {}

    def _handler(self, signum: int, _frame: Any) -> None:
        if self.stop.is_set():
            self.warn("still finishing the current host step so that no host stays drained; please wait")
            return
        self.stop.set()
        self.warn(
            f"{signal.Signals(signum).name}: stopping after the current host step "
            "(hosts are undrained and the lock released first)"
        )

    def __enter__(self) -> StopOnSignals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.saved[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)
