"""`fab rollout` and `fab rollback`: batches behind the load balancer, health gates, fleet rollback,
lock, journal and resume (fleet/rollout.py). Exit codes: 0 succeeded, 1 failed, 2 bad input,
3 rolled back, 4 paused or interrupted (resumable)."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

from fabric import task
from invoke.exceptions import Exit

from fleet.errors import FleetError
from fleet.tasks.common import fleet_errors, select, task_help

SELECTION = ("inventory", "hosts", "group", "where", "json")
RUN_HELP = {
    "canary": "hosts in the first batch (default: rollout.canary, else 1; 0 = none)",
    "batch": "batch size after the canary: N, P% or a list 1,25%,50% (last repeats)",
    "max_failures": "failed hosts tolerated: N or P% (default: rollout.max_failures, else 0)",
    "on_failure": "past the budget: rollback (default) | pause | continue",
    "drain_wait": "seconds to wait at most for the LB to stop sending a drained host traffic",
    "min_ready": "seconds a host must stay healthy in the LB before the next one",
    "health_timeout": "seconds a host has to become healthy",
    "dry_run": "print the plan and per-host diff; change nothing",
    "yes": "do not ask for confirmation",
    "message": "why: stored in the fleet lock for others to see",
    "resume": "continue an interrupted rollout from each host's real state",
    "rollout_id": "with --resume: which rollout (default: the newest of the inventory)",
}


def _opt(value: Any, unset: Any) -> Any:
    return None if value == unset else value


@task(
    help=task_help(
        *SELECTION,
        "workers",
        version="release version to roll out (DIFY_VERSION); default: the inventory's",
        release="roll out a release already staged on the hosts: id, id prefix or version",
        **RUN_HELP,
    ),
    iterable=["where"],
)
@fleet_errors
def rollout(
    c: Any,
    version: str = "",
    release: str = "",
    inventory: str | None = None,
    hosts: str | None = None,
    group: str | None = None,
    where: list[str] | None = None,
    canary: int = -1,
    batch: str = "",
    max_failures: str = "",
    on_failure: str = "",
    drain_wait: float = -1.0,
    min_ready: float = -1.0,
    health_timeout: float = -1.0,
    dry_run: bool = False,
    yes: bool = False,
    json_: bool = False,
    message: str = "",
    resume: bool = False,
    rollout_id: str = "",
    workers: int = 0,
) -> None:
    """Roll a release across the fleet in batches, zero downtime behind the load balancer.

    Plan, take the fleet lock, stage on every host (upload + pull, nothing switches), then batch by
    batch (canary first), per host: mark, drain, wait until the LB stops sending it traffic, switch,
    up, verify, undrain, wait until the LB sends it traffic, min-ready soak, record, unmark. A host
    that fails goes back to its previous release; past --max-failures the rollout stops and, with
    --on-failure rollback, puts every updated host back, newest batch first. Ctrl-C finishes the
    current host step, undrains, releases the lock and prints the --resume command.
    Exit: 0 succeeded, 1 failed, 2 bad input, 3 rolled back, 4 paused/interrupted.
    """
    code = _main(
        "rollout",
        version=version,
        spec=release or None,
        inventory=inventory,
        hosts=hosts,
        group=group,
        where=where,
        canary=_opt(canary, -1),
        batch=batch or None,
        max_failures=max_failures or None,
        on_failure=on_failure or None,
        drain_wait=_opt(drain_wait, -1.0),
        min_ready=_opt(min_ready, -1.0),
        health_timeout=_opt(health_timeout, -1.0),
        dry_run=dry_run,
        yes=yes,
        json_=json_,
        message=message,
        resume=resume,
        rollout_id=rollout_id,
        workers=workers,
    )
    if code:
        raise Exit(code=code)


@task(
    help=task_help(
        *SELECTION,
        "workers",
        to="go to this staged release instead of each host's previous one: id, id prefix or version",
        **RUN_HELP,
    ),
    iterable=["where"],
)
@fleet_errors
def rollback(
    c: Any,
    to: str = "",
    inventory: str | None = None,
    hosts: str | None = None,
    group: str | None = None,
    where: list[str] | None = None,
    canary: int = -1,
    batch: str = "",
    max_failures: str = "",
    on_failure: str = "",
    drain_wait: float = -1.0,
    min_ready: float = -1.0,
    health_timeout: float = -1.0,
    dry_run: bool = False,
    yes: bool = False,
    json_: bool = False,
    message: str = "",
    resume: bool = False,
    rollout_id: str = "",
    workers: int = 0,
) -> None:
    """Put every selected host back on its previous release, batch by batch behind the LB.

    Or `--to` a staged release. The same batches, drain and health gates as `fab rollout`; the same
    exit codes.
    """
    code = _main(
        "rollback",
        version="",
        spec=to or None,
        inventory=inventory,
        hosts=hosts,
        group=group,
        where=where,
        canary=_opt(canary, -1),
        batch=batch or None,
        max_failures=max_failures or None,
        on_failure=on_failure or None,
        drain_wait=_opt(drain_wait, -1.0),
        min_ready=_opt(min_ready, -1.0),
        health_timeout=_opt(health_timeout, -1.0),
        dry_run=dry_run,
        yes=yes,
        json_=json_,
        message=message,
        resume=resume,
        rollout_id=rollout_id,
        workers=workers,
    )
    if code:
        raise Exit(code=code)


# --------------------------------------------------------------------------- shared body


def _preload() -> threading.Thread:
    """google-cloud-compute takes seconds to import: do it while SSH connects and the bundle renders.
    Join the thread before anything else imports it: two threads importing that package at once can
    see it half-initialised."""
    import contextlib
    import importlib

    def load() -> None:
        with contextlib.suppress(ImportError):
            importlib.import_module("google.cloud.compute_v1")

    thread = threading.Thread(target=load, name="preload-compute", daemon=True)
    thread.start()
    return thread


def _main(action: str, **o: Any) -> int:
    preload = _preload() if not o["dry_run"] else None
    from fleet import journal as jr
    from fleet import lock as lk
    from fleet import rollout as ro
    from fleet import ui
    from fleet.runner import build_nornir

    inv, chosen = select(o["inventory"], o["hosts"], o["group"], o["where"])
    inventory_arg = o["inventory"] or inv.name
    journal_dir = jr.fleet_dir(inv)

    def warn(text: str) -> None:
        sys.stderr.write(f"warning: {ui.safe(text)}\n")
        sys.stderr.flush()

    replay = None
    if o["resume"]:
        path = jr.find(journal_dir, o["rollout_id"] or None)
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
    # every inventory host (connections open lazily): worker_beat is checked fleet-wide
    nr = build_nornir(inv, list(inv.hosts.values()), o["workers"] or None)
    names = {h.name for h in chosen}
    selected = nr.filter(filter_func=lambda h: h.name in names)
    try:
        bundles = None
        if replay is None:
            plan, bundles = _plan(action, inv, chosen, selected, o, warn)
        elif plan.action == "rollout":
            bundles = _rerender(inv, chosen, plan, warn)
        if not plan.jobs:
            if o["json_"]:
                ui.print_json({"rollout_id": None, "outcome": "succeeded", "exit_code": 0, "hosts": []})
            else:
                print(f"nothing to do: every selected host already runs {plan.label}")
            return 0
        from fleet.rollout_view import RolloutView, print_plan, print_summary

        if o["dry_run"]:
            _dry_run(plan, selected, bundles, o["json_"])
            return 0
        if not o["json_"]:
            print_plan(plan)
        if replay is None and not o["yes"]:
            _confirm(action)
        if preload is not None:
            preload.join()
        store = lk.for_inventory(inv, chosen, warn=warn)
        compute = store.compute
        from fleet import lbview

        views: dict[str, Any] = {}

        def lb_for(host: Any) -> Any:
            if host.name not in views:
                views[host.name] = lbview.for_host(host, lambda: compute, plan.timings.drain_wait)
            return views[host.name]

        for h in chosen:
            lb_for(h)  # bad LB settings are input errors: refuse before anything runs
        stop = threading.Event()
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
        )
        view = RolloutView(plan)
        run.observer = view
        with _signals(stop, warn), view:
            report = ro.execute(run, plan, resume=replay)
        if o["json_"]:
            ui.print_json(report.as_dict())
        else:
            print_summary(report)
        if report.resume_command and stop.is_set():
            warn(f"interrupted; hosts undrained, lock released. Resume with: {report.resume_command}")
        return report.exit_code
    finally:
        nr.close_connections(on_good=True, on_failed=True)


def _plan(action: str, inv: Any, chosen: list[Any], nr: Any, o: dict[str, Any], warn: Any) -> tuple[Any, Any]:
    from fleet import deploy as dp
    from fleet import lock as lk
    from fleet import rollout as ro

    opts = ro.resolve_options(
        chosen[0],
        canary=o["canary"],
        batch=o["batch"],
        max_failures=o["max_failures"],
        on_failure=o["on_failure"],
        drain_wait=o["drain_wait"],
        min_ready=o["min_ready"],
        health_timeout=o["health_timeout"],
    )
    bundles = None
    if action == "rollout" and not o["spec"]:
        bundles = dp.render_all(inv, chosen, version=o["version"] or None)
    states = ro.read_states(nr, preflight=not o["dry_run"])
    if bundles is not None:
        targets = {h: ro.Release.from_bundle(b) for h, b in bundles.items()}
        label = next(iter(bundles.values())).version
    else:
        targets = ro.staged_targets(nr, states, o["spec"])
        label = o["spec"] or "previous"
    plan = ro.make_plan(
        rollout_id=ro.new_rollout_id(action),
        action=action,
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
        message=o["message"],
        beat_host=next(iter(ro.beat_hosts(inv)), None),
    )
    return plan, bundles


def _rerender(inv: Any, chosen: list[Any], plan: Any, warn: Any) -> Any:
    """Bundles for a resumed rollout, used only where they still render to the planned release."""
    from fleet import deploy as dp

    version = next(iter(plan.jobs.values())).target.version
    try:
        bundles = dp.render_all(inv, chosen, version=version or None)
    except FleetError as exc:
        warn(f"cannot re-render the release ({exc.what}); resuming with what is staged on the hosts")
        return None
    return {h: b for h, b in bundles.items() if h in plan.jobs and b.release_id == plan.jobs[h].target.id}


def _dry_run(plan: Any, nr: Any, bundles: Any, json_: bool) -> None:
    from fleet import deploy as dp
    from fleet import ui
    from fleet.rollout_view import print_plan
    from fleet.runner import run_step

    diffs: dict[str, Any] = {}
    if bundles is not None:
        for r in run_step(nr, dp.diff_step(bundles)):
            diffs[r.host] = r.data["diff"] if r.ok else None
    if json_:
        payload = plan.as_dict()
        payload["dry_run"] = True
        payload["diffs"] = {h: (d.as_dict() if d is not None else None) for h, d in diffs.items()}
        ui.print_json(payload)
        return
    print_plan(plan)
    for host, d in diffs.items():
        print(f"== {host}")
        print(ui.safe(d.render()) if d is not None else "   (could not read the current release)")
    print("dry run: nothing was changed")


def _confirm(action: str) -> None:
    if not sys.stdin.isatty():
        raise FleetError(
            f"refusing to {action} without confirmation", hint="pass --yes (or run it on a terminal)"
        )
    answer = input(f"Proceed with the {action}? [y/N] ").strip().lower()
    if answer not in ("y", "yes"):
        raise FleetError(f"{action} cancelled", hint="nothing was changed")


class _signals:
    """SIGINT/SIGTERM set `stop`: the engine finishes the current host step, undrains, and stops."""

    def __init__(self, stop: threading.Event, warn: Any) -> None:
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

    def __enter__(self) -> _signals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.saved[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)
