"""`fab rollout` and `fab rollback`: batches behind the load balancer, health gates, fleet rollback,
lock, journal and resume. These tasks parse options, call fleet.rollout.service and render its
outcome. Exit codes: 0 succeeded, 1 failed, 2 bad input, 3 rolled back, 4 paused or interrupted
(resumable)."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from typing import Any

from fabric import task
from invoke.exceptions import Exit

from fleet.cli.common import fleet_errors, task_help
from fleet.errors import FleetError

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
    "strategy": "ssh: update hosts in place over SSH (default: rollout.strategy, else ssh) | replace: "
    "the MIG recreates each batch from the release's instance template (docs/rollout.md)",
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
    strategy: str = "",
) -> None:
    """Roll a release across the fleet in batches, zero downtime behind the load balancer.

    Plan, take the fleet lock, stage on every host (upload + pull, nothing switches), then batch by
    batch (canary first), per host: mark, drain, wait until the LB stops sending it traffic, switch,
    up, verify, undrain, wait until the LB sends it traffic, min-ready soak, record, unmark. A host
    that fails goes back to its previous release; past --max-failures the rollout stops and, with
    --on-failure rollback, puts every updated host back, newest batch first. Ctrl-C finishes the
    current host step, undrains, releases the lock and prints the --resume command.
    --strategy replace: instead of switching in place, the MIG recreates each batch from the
    release's instance template (made from the base template); gates: the agent's guest attributes
    report the release and the LB's backend service says HEALTHY, then min-ready.
    The plan (and --dry-run) shows the database connections the release opens at the fleet's largest
    size against dify.db_max_connections, and warns near or over it (docs/compose.md).
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
        strategy=strategy or None,
    )
    if code:
        raise Exit(code=code)


@task(
    help=task_help(
        *SELECTION,
        "workers",
        to="go to this staged release instead of each host's previous one: id, id prefix or version",
        force_schema_rollback="roll the code back across a database schema change (the schema stays; "
        "refused without it, naming the restore point and its restore command)",
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
    strategy: str = "",
    force_schema_rollback: bool = False,
) -> None:
    """Put every selected host back on its previous release, batch by batch behind the LB.

    Or `--to` a staged release. The same batches, drain and health gates as `fab rollout`; the same
    exit codes. A rollback to a release of another database schema revision (compose/releases.yaml)
    is refused, naming the restore point taken before the migration and the command that restores
    it; --force-schema-rollback rolls the code back anyway (the schema stays).
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
        strategy=strategy or None,
        allow_schema_rollback=force_schema_rollback,
    )
    if code:
        raise Exit(code=code)


# --------------------------------------------------------------------------- shared body


def _main(action: str, **o: Any) -> int:
    """Options in, the rollout service (fleet/rollout/service.py) called, its outcome rendered."""
    from contextlib import contextmanager

    from fleet.rollout import service
    from fleet.view import console as ui
    from fleet.view.rollout import RolloutView, print_plan, print_summary

    def warn(text: str) -> None:
        sys.stderr.write(f"warning: {ui.safe(text)}\n")
        sys.stderr.flush()

    def planned(plan: Any, resumed: bool) -> None:
        if not o["json_"]:
            print_plan(plan)
        if not resumed and not o["yes"]:
            _confirm(action)

    stop = threading.Event()

    @contextmanager
    def watch(plan: Any) -> Iterator[Any]:
        view = RolloutView(plan)
        with service.StopOnSignals(stop, warn), view:
            yield view

    request = service.Request(
        action,
        o["inventory"],
        o["hosts"],
        o["group"],
        tuple(o["where"] or ()),
        version=o["version"],
        spec=o["spec"],
        canary=o["canary"],
        batch=o["batch"],
        max_failures=o["max_failures"],
        on_failure=o["on_failure"],
        drain_wait=o["drain_wait"],
        min_ready=o["min_ready"],
        health_timeout=o["health_timeout"],
        dry_run=o["dry_run"],
        message=o["message"],
        resume=o["resume"],
        rollout_id=o["rollout_id"],
        workers=o["workers"],
        strategy=o["strategy"],
        allow_schema_rollback=o.get("allow_schema_rollback", False),
    )
    result = service.perform(request, service.Hooks(warn=warn, planned=planned, watch=watch, stop=stop))
    plan, report = result.plan, result.report
    if not plan.jobs:
        if o["json_"]:
            ui.print_json({"rollout_id": None, "outcome": "succeeded", "exit_code": 0, "hosts": []})
        else:
            print(f"nothing to do: every selected host already runs {plan.label}")
        return 0
    if result.dry_run or report is None:
        _dry_run(plan, result.diffs, o["json_"], result.replace, result.budgets)
        return 0
    if o["json_"]:
        ui.print_json(report.as_dict())
    else:
        print_summary(report)
    if report.resume_command and result.interrupted:
        warn(f"interrupted; hosts undrained, lock released. Resume with: {report.resume_command}")
    return report.exit_code


def _dry_run(
    plan: Any,
    diffs: dict[str, Any],
    json_: bool,
    replace: dict[str, Any] | None = None,
    budgets: Any = (),
) -> None:
    from fleet.view import console as ui
    from fleet.view.rollout import print_budgets, print_plan

    if json_:
        payload = plan.as_dict()
        payload["dry_run"] = True
        payload["diffs"] = {h: (d.as_dict() if d is not None else None) for h, d in diffs.items()}
        if replace is not None:
            payload["replace"] = replace
        payload["connections"] = [b.as_dict() for b in budgets]
        ui.print_json(payload)
        return
    print_plan(plan)
    if replace is not None:
        state = "exists" if replace["exists"] else "to be created"
        print(f"== MIG {replace['mig']}: template {replace['current']} -> {replace['template']} ({state})")
        for line in replace["diff"]:
            print(f"   metadata {ui.safe(line)}")
        print(f"   update policy: {replace['update_policy']}")
    for host, d in diffs.items():
        print(f"== {host}")
        print(ui.safe(d.render()) if d is not None else "   (could not read the current release)")
    print_budgets(budgets)
    print("dry run: nothing was changed")


def _confirm(action: str) -> None:
    if not sys.stdin.isatty():
        raise FleetError(
            f"refusing to {action} without confirmation", hint="pass --yes (or run it on a terminal)"
        )
    answer = input(f"Proceed with the {action}? [y/N] ").strip().lower()
    if answer not in ("y", "yes"):
        raise FleetError(f"{action} cancelled", hint="nothing was changed")
