"""Release tasks: bootstrap, deploy, status, history, diff."""

from __future__ import annotations

import sys
from typing import Any

from fabric import task
from invoke.exceptions import Exit

from fleet.cli.common import EXIT_FAILED, EXIT_USAGE, EXIT_WOULD_CHANGE, fleet_errors, select, task_help
from fleet.errors import FleetError

SELECTION = ("inventory", "hosts", "group", "where", "json")


def _health_timeout(hosts: list[Any], given: float) -> float:
    if given:
        return given
    from fleet.rollout.pacing import default_timings

    h = hosts[0]
    return default_timings(h.settings.lb, h.settings.rollout).health_timeout


@task(
    help=task_help(
        *SELECTION, "workers", dry_run="show what would change (facts, then a diff); change nothing"
    ),
    iterable=["where"],
)
@fleet_errors
def bootstrap(
    c: Any,
    inventory: str | None = None,
    hosts: str | None = None,
    group: str | None = None,
    where: list[str] | None = None,
    json_: bool = False,
    workers: int = 0,
    dry_run: bool = False,
) -> None:
    """Prepare hosts, idempotently: Docker + Compose v2, deploy user, layout (releases/ private), log
    rotation, sysctls.

    One root script per host through `sudo -n`; each item is checked before it is changed and
    reported as changed or unchanged, so a second run reports no changes.

    --dry-run changes nothing: it reads each host's facts (as the deploy user, no sudo), then shows
    per item ok / would change / would fail with the current and the wanted value. Exit 0: nothing
    would change; 3: something would change; 1: a host was unreachable, its probe failed or
    bootstrap would fail on it (a missing deploy user, no apt-get to install Docker).
    """
    from fleet.commands.bootstrap import bootstrap_command, parse_bootstrap
    from fleet.release import hoststeps as ht
    from fleet.ssh.runner import HostContext, HostResult, run_on
    from fleet.view import console as ui

    if dry_run:
        _bootstrap_dry_run(inventory, hosts, group, where, json_, workers)
        return

    def step(ctx: HostContext) -> HostResult:
        cmd = bootstrap_command(ht.layout_of(ctx.host), ctx.host.username)
        r = ctx.run(cmd.shell(), timeout=900)
        changed, unchanged = parse_bootstrap(r.stdout)
        return HostResult(
            ctx.host.name,
            "ok" if r.exited == 0 else "failed",
            exit_code=r.exited,
            stdout=r.stdout,
            stderr=r.stderr,
            data={"changed": changed, "unchanged": unchanged},
        )

    inv, chosen = select(inventory, hosts, group, where)
    with ui.host_progress("bootstrap", len(chosen), enabled=not json_) as progress:
        results = run_on(inv, chosen, step, workers=workers or None, processors=[progress])
    if json_:
        ui.print_json(
            {
                "hosts": [
                    {
                        "host": r.host,
                        "status": r.status,
                        "error": r.error or r.stderr.strip()[-500:],
                        **r.data,
                    }
                    for r in results
                ]
            }
        )
    else:
        ui.table(
            "bootstrap",
            ["host", "status", "changed", "unchanged"],
            [
                [
                    r.host,
                    r.status,
                    "; ".join(r.data.get("changed", [])) or "-",
                    len(r.data.get("unchanged", [])) if r.ok else (r.error or r.stderr.strip()[-300:]),
                ]
                for r in results
            ],
        )
    if not all(r.ok for r in results):
        raise Exit(code=EXIT_FAILED)


def _bootstrap_dry_run(
    inventory: str | None,
    hosts: str | None,
    group: str | None,
    where: list[str] | None,
    json_: bool,
    workers: int,
) -> None:
    """Facts first, then the diff (as pyinfra does); nothing on the host changes."""
    from dataclasses import asdict

    from fleet.commands.bootstrap import bootstrap_facts_command, diff_bootstrap, parse_bootstrap_facts
    from fleet.commands.facts import facts_command, parse_facts
    from fleet.release import hoststeps as ht
    from fleet.ssh.runner import HostContext, HostResult, run_on
    from fleet.view import console as ui

    def step(ctx: HostContext) -> HostResult:
        layout = ht.layout_of(ctx.host)
        r = ctx.run(bootstrap_facts_command(layout, ctx.host.username).shell(), timeout=120)
        if r.exited != 0:
            return HostResult(ctx.host.name, "failed", exit_code=r.exited, stdout=r.stdout, stderr=r.stderr)
        system = ctx.run(facts_command(layout.root).shell(), timeout=60)
        host_facts = parse_facts(system.stdout) if system.exited == 0 else {}
        facts = {k: v for k, v in host_facts.items() if k not in ("docker", "compose")}
        facts.update(parse_bootstrap_facts(r.stdout))
        items = [asdict(c) for c in diff_bootstrap(facts, layout, ctx.host.username)]
        return HostResult(ctx.host.name, "ok", exit_code=0, data={"facts": facts, "items": items})

    inv, chosen = select(inventory, hosts, group, where)
    with ui.host_progress("bootstrap --dry-run", len(chosen), enabled=not json_) as progress:
        results = run_on(inv, chosen, step, workers=workers or None, processors=[progress])
    reports = []
    for r in results:
        items = r.data.get("items", [])
        reports.append(
            {
                "host": r.host,
                "status": r.status,
                "error": r.error or r.stderr.strip()[-500:],
                "would_change": sum(i["state"] == "would change" for i in items),
                "would_fail": sum(i["state"] == "would fail" for i in items),
                **r.data,
            }
        )
    if json_:
        ui.print_json({"dry_run": True, "hosts": reports})
    else:
        for rep in reports:
            if rep["status"] != "ok":
                ui.table(f"{rep['host']}: {rep['status']}", ["error"], [[rep["error"]]])
                continue
            facts = rep["facts"]
            ui.table(
                f"{rep['host']}: facts",
                ["fact", "value"],
                [[k, v] for k, v in facts.items() if not isinstance(v, (dict, list))],
            )
            ui.table(
                f"{rep['host']}: bootstrap would",
                ["item", "state", "current", "wanted"],
                [[i["item"], i["state"], i["current"], i["wanted"]] for i in rep["items"]],
            )
    if any(rep["status"] != "ok" or rep["would_fail"] for rep in reports):
        raise Exit(code=EXIT_FAILED)
    if any(rep["would_change"] for rep in reports):
        raise Exit(code=EXIT_WOULD_CHANGE)


@task(
    help=task_help(
        *SELECTION,
        "workers",
        version="release version (DIFY_VERSION); default: the inventory's",
        dry_run="show the per-host diff (and a pending database migration) and stop; changes nothing",
        health_timeout="seconds a host has to become healthy (default: from the inventory)",
        keep="releases to keep per host (default: app.keep_releases, else 5)",
        force_schema_rollback="deploy an older release across a database schema change anyway (the "
        "schema stays; refused without it, naming the restore point and its restore command)",
    ),
    iterable=["where"],
)
@fleet_errors
def deploy(
    c: Any,
    version: str = "",
    inventory: str | None = None,
    hosts: str | None = None,
    group: str | None = None,
    where: list[str] | None = None,
    json_: bool = False,
    dry_run: bool = False,
    health_timeout: float = 0.0,
    keep: int = 0,
    workers: int = 0,
    force_schema_rollback: bool = False,
) -> None:
    """Deploy a release to every selected host at once (no batches, no draining: see `fab rollout`).

    Every host is first prepared (Docker checked, disk, bundle uploaded only if missing, compose
    validated, images pulled) without touching what runs; if any host fails that, nothing switches
    anywhere. Then each host switches `current`, starts the stack and must become healthy with the
    new version, or goes back to its previous release. Exit 1 if any host did not end on the release.
    With a Compute project (gce.project) it holds the fleet lock and marks each host while it
    switches, as `fab rollout` does: refused (exit 2, naming the holder) while a rollout runs.

    With dify.migrations: phase (the default), a release of another database schema revision
    (compose/releases.yaml; a host without a release counts) is migrated as `fab rollout` does it:
    after every host is prepared and before any switches, a restore point, then the migration once on
    the first host, journaled; a failing migration switches nothing (exit 1, naming the restore
    point). --dry-run shows the pending migration. Deploying an OLDER release of another revision
    (back across a migration) is refused (exit 2) naming the restore point and its restore command,
    unless --force-schema-rollback.
    """
    from fleet.rollout import deploy as dp
    from fleet.view import console as ui
    from fleet.view.rollout import print_migration_result

    inv, chosen = select(inventory, hosts, group, where)
    bundles = dp.render_all(inv, chosen, version=version or None)
    if dry_run:
        schema = dp.SchemaPhase.for_hosts(inv, chosen, allow_back=force_schema_rollback, warn=_warn)
        _print_diff(inv, chosen, bundles, json_, schema=schema)
        return
    with ui.host_progress("deploy", 2 * len(chosen), enabled=not json_) as progress:
        report = dp.deploy_release(
            inv,
            chosen,
            bundles=bundles,
            health_timeout=_health_timeout(chosen, health_timeout),
            keep=keep or None,
            workers=workers or None,
            processors=[progress],
            warn=_warn,
            allow_schema_rollback=force_schema_rollback,
        )
    if json_:
        ui.print_json(report.as_dict())
    else:
        title = f"deploy {report.release_version}" + (
            " (stopped before any switch)" if report.stopped_at else ""
        )
        ui.table(
            title,
            ["host", "result", "from", "to", "uploaded", "time", "error"],
            [
                [
                    o.host,
                    o.result,
                    _rel(o.from_release, o.from_version),
                    _rel(o.to_release, o.to_version),
                    f"{o.bytes_sent} B",
                    f"{o.duration:.1f}s",
                    o.error or "; ".join(o.problems),
                ]
                for o in report.outcomes
            ],
        )
        print_migration_result(report.migration)
        for problem in report.problems:
            print(f"note: {ui.safe(problem)}")
        if report.stopped_at:
            print("nothing was switched on any host: fix the errors above and deploy again")
    if not report.ok:
        raise Exit(code=EXIT_FAILED)


def _warn(text: str) -> None:
    sys.stderr.write(f"warning: {text}\n")
    sys.stderr.flush()


def _rel(rid: str | None, version: str | None) -> str:
    return f"{version or '?'} ({rid})" if rid else "none"


def _print_diff(
    inv: Any, chosen: list[Any], bundles: dict[str, Any], json_: bool, schema: Any = None
) -> None:
    """Per host, what the release would change; with `schema` (fleet.rollout.deploy.SchemaPhase, a
    deploy's dry run) also the migration it would run, or why it would be refused."""
    from fleet.release import budget
    from fleet.rollout import deploy as dp
    from fleet.ssh.runner import run_on
    from fleet.view import console as ui
    from fleet.view.rollout import print_budgets, print_migration

    results = run_on(inv, chosen, dp.diff_step(bundles, with_state=schema is not None))
    budgets = budget.for_inventory(inv, bundles)
    migration, refusal = None, None
    if schema is not None and all(r.ok for r in results):
        states = {r.host: r.data["state"] for r in results}
        try:
            migration = schema.pending([h.name for h in chosen], states, bundles)
        except FleetError as exc:
            refusal = exc.render()
    if json_:
        ui.print_json(
            {
                "connections": [b.as_dict() for b in budgets],
                **(
                    {"migration": migration.as_dict() if migration else None, "refused": refusal}
                    if schema is not None
                    else {}
                ),
                "hosts": [
                    {
                        "host": r.host,
                        "status": r.status,
                        "error": dp.mask_known(r.error),
                        "release": bundles[r.host].release_id,
                        "version": bundles[r.host].version,
                        "env": bundles[r.host].masked_env(),
                        "diff": r.data["diff"].as_dict() if r.ok else None,
                    }
                    for r in results
                ],
            }
        )
    else:
        for r in results:
            b = bundles[r.host]
            print(f"== {r.host}: -> {b.version} ({b.release_id})")
            print(ui.safe(r.data["diff"].render() if r.ok else f"   {r.status}: {dp.mask_known(r.error)}"))
        print_budgets(budgets)
        if migration is not None:
            print_migration(migration, "after every host is prepared, before any switches")
        if refusal is not None:
            print(f"refused: {ui.safe(refusal)}")
    if not all(r.ok for r in results):
        raise Exit(code=EXIT_FAILED)
    if refusal is not None:
        raise Exit(code=EXIT_USAGE)


@task(
    help=task_help(*SELECTION, "workers", version="compare against this version (default: the inventory's)"),
    iterable=["where"],
)
@fleet_errors
def diff(
    c: Any,
    version: str = "",
    inventory: str | None = None,
    hosts: str | None = None,
    group: str | None = None,
    where: list[str] | None = None,
    json_: bool = False,
    workers: int = 0,
) -> None:
    """Per host, what a deploy of VERSION would change: compose and .env diff, secrets masked.

    Compares each host's current release with the one `fab deploy --version VERSION` would install,
    then shows the database connections that release opens at the fleet's largest size against the
    inventory's dify.db_max_connections (a warning near or over it). Changes nothing.
    """
    from fleet.rollout import deploy as dp

    inv, chosen = select(inventory, hosts, group, where)
    _print_diff(inv, chosen, dp.render_all(inv, chosen, version=version or None), json_)


@task(
    help=task_help(
        *SELECTION,
        "workers",
        no_ssh="only what each VM's agent reports in its guest attributes, through the Compute API",
    ),
    iterable=["where"],
)
@fleet_errors
def status(
    c: Any,
    inventory: str | None = None,
    hosts: str | None = None,
    group: str | None = None,
    where: list[str] | None = None,
    json_: bool = False,
    workers: int = 0,
    no_ssh: bool = False,
) -> None:
    """One table for the fleet: release, services, /health, drain flag, drift, last history entry,
    and, for GCE instances, what each VM's agent reports in its guest attributes (release, version,
    health, last action and when; docs/agent.md), read through the Compute API without SSH.

    Drift is a container missing, one not in the current release, or one whose configuration differs
    from what the current release would create. `--no-ssh`: only the agents' reports (a fleet whose
    SSH path is down, or a quick look at a large MIG).
    """
    from fleet.errors import FleetError
    from fleet.inventory import reports as rp
    from fleet.rollout import deploy as dp
    from fleet.rollout.lock import compute_for
    from fleet.ssh.runner import run_on
    from fleet.view import console as ui

    inv, chosen = select(inventory, hosts, group, where)
    gce_hosts = [h for h in chosen if h.settings.gce.instance]
    agents = rp.reports(compute_for(inv, gce_hosts), gce_hosts) if gce_hosts else {}
    if no_ssh:
        if not gce_hosts:
            raise FleetError(
                "--no-ssh reads the agents' guest attributes: no host of the selection is a GCE instance",
                where=f"inventory {inv.name}",
                hint="drop --no-ssh",
            )
        if json_:
            ui.print_json({"inventory": inv.name, "agents": {h.name: agents.get(h.name) for h in chosen}})
        else:
            ui.table(
                f"agent reports of {len(gce_hosts)} instance(s)",
                ["host", "agent (guest attributes)"],
                [[h.name, rp.summary(agents.get(h.name))] for h in gce_hosts],
            )
        return
    results = run_on(inv, chosen, dp.status_step, workers=workers or None)
    rows = [dp.status_row(r) | ({"agent": agents.get(r.host)} if agents else {}) for r in results]
    if json_:
        ui.print_json({"inventory": inv.name, "hosts": rows})
    else:
        table_rows = []
        for row in rows:
            agent_cell = [rp.summary(row.get("agent"))] if agents else []
            if row["status"] != "ok":
                table_rows.append(
                    [row["host"], row["status"], "", "", "", "", "", *agent_cell, row.get("error")]
                )
                continue
            health = row["health"]
            last = row["last"] or {}
            table_rows.append(
                [
                    row["host"],
                    _rel(row["release"], row["version"]) if row["layout"] else "not bootstrapped",
                    " ".join(f"{k}={v}" for k, v in row["services"].items()) or "-",
                    f"{health['code']} {health['version'] or ''}".strip() if health else "-",
                    "DRAINED" if row["drained"] else "no",
                    "; ".join(row["drift"]) or "none",
                    f"{last.get('time', '')} {last.get('action', '')} {last.get('result', '')}".strip()
                    or "-",
                    *agent_cell,
                    "",
                ]
            )
        agent_head = ["agent (guest attributes)"] if agents else []
        ui.table(
            f"status of {len(rows)} host(s)",
            ["host", "release", "services", "/health", "drained", "drift", "last", *agent_head, "error"],
            table_rows,
        )
    if not all(r.ok for r in results):
        raise Exit(code=EXIT_FAILED)


@task(
    help=task_help(
        *SELECTION,
        "workers",
        limit="entries (per host with --on-hosts; default 20)",
        on_hosts="read each host's history.jsonl over SSH even when the inventory has a release store",
    ),
    iterable=["where"],
)
@fleet_errors
def history(
    c: Any,
    inventory: str | None = None,
    hosts: str | None = None,
    group: str | None = None,
    where: list[str] | None = None,
    json_: bool = False,
    limit: int = 20,
    workers: int = 0,
    on_hosts: bool = False,
) -> None:
    """The fleet's audit trail, newest first: the release store's central history when the inventory
    has one (it outlives recreated VMs and includes what the VMs' agents did), else each host's
    history.jsonl over SSH, merged.

    With a store, --hosts keeps the events of those instances; --on-hosts reads the hosts instead.
    """
    from fleet.errors import FleetError
    from fleet.inventory import load, split_csv
    from fleet.inventory import select as select_in
    from fleet.inventory.selection import NO_MATCH_HINT
    from fleet.rollout import deploy as dp
    from fleet.ssh.runner import run_on
    from fleet.store import location
    from fleet.view import console as ui

    inv = load(inventory)
    store = location.from_inventory(inv)
    if store is not None and not on_hosts:
        _central_history(store, set(split_csv(hosts)), limit, json_)
        return
    chosen = select_in(inv, hosts=split_csv(hosts) or None, group=group or None, where=list(where or ()))
    if not chosen:
        raise FleetError("no host matches the selection", where=f"inventory {inv.name}", hint=NO_MATCH_HINT)
    results = run_on(inv, chosen, dp.history_step(limit), workers=workers or None)
    entries = [{"host": r.host, **e} for r in results if r.ok for e in r.data["entries"]]
    entries.sort(key=lambda e: str(e.get("time", "")), reverse=True)
    if json_:
        ui.print_json({"entries": entries, "errors": {r.host: r.error for r in results if not r.ok}})
    else:
        ui.table(
            "history (newest first)",
            ["time", "host", "action", "result", "version", "release", "rollout", "operator", "detail"],
            [
                [
                    e.get("time"),
                    e["host"],
                    e.get("action"),
                    e.get("result"),
                    e.get("version"),
                    e.get("release"),
                    e.get("rollout"),
                    e.get("operator"),
                    e.get("detail") or e.get("unparsed"),
                ]
                for e in entries
            ],
        )
        for r in results:
            if not r.ok:
                ui.error(f"{r.host}: {r.error}")
    if not all(r.ok for r in results):
        raise Exit(code=EXIT_FAILED)


def _central_history(store: Any, instances: set[str], limit: int, json_: bool) -> None:
    """The store's history, newest first; `instances` non-empty keeps only their events."""
    from fleet.store import history as central
    from fleet.view import console as ui

    events = central.read(store, limit=None if instances else limit)
    if instances:
        events = [e for e in events if e.get("instance") in instances][-limit:] if limit > 0 else []
    events.reverse()
    if json_:
        ui.print_json({"store": store.url, "entries": events})
        return
    ui.table(
        f"history of {store.url} (newest first)",
        ["time", "instance", "action", "result", "version", "release", "rollout", "actor", "detail"],
        [
            [
                e.get("at"),
                e.get("instance") or "-",
                e.get("action"),
                e.get("result"),
                e.get("version"),
                e.get("release"),
                e.get("rollout_id"),
                e.get("actor"),
                e.get("detail") or e.get("unparsed"),
            ]
            for e in events
        ],
    )
