"""Release tasks: bootstrap, deploy, status, history, diff."""

from __future__ import annotations

import sys
from typing import Any

from fabric import task
from invoke.exceptions import Exit

from fleet.cli.common import EXIT_FAILED, fleet_errors, select, task_help

SELECTION = ("inventory", "hosts", "group", "where", "json")


def _health_timeout(hosts: list[Any], given: float) -> float:
    if given:
        return given
    from fleet.rollout.plan import default_timings

    h = hosts[0]
    return default_timings(h.get("lb"), h.get("rollout")).health_timeout


@task(help=task_help(*SELECTION, "workers"), iterable=["where"])
@fleet_errors
def bootstrap(
    c: Any,
    inventory: str | None = None,
    hosts: str | None = None,
    group: str | None = None,
    where: list[str] | None = None,
    json_: bool = False,
    workers: int = 0,
) -> None:
    """Prepare hosts, idempotently: Docker + Compose v2, deploy user, layout (releases/ private), log
    rotation, sysctls.

    One root script per host through `sudo -n`; each item is checked before it is changed and
    reported as changed or unchanged, so a second run reports no changes.
    """
    from fleet.commands.bootstrap import bootstrap_command, parse_bootstrap
    from fleet.release import hoststeps as ht
    from fleet.ssh.runner import HostContext, HostResult, run_on
    from fleet.view import console as ui

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
    with ui.host_progress("bootstrap", len(chosen), enabled=not json_) as advance:
        results = run_on(inv, chosen, step, workers=workers or None, on_done=advance)
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


@task(
    help=task_help(
        *SELECTION,
        "workers",
        version="release version (DIFY_VERSION); default: the inventory's",
        dry_run="show the per-host diff and stop; changes nothing",
        health_timeout="seconds a host has to become healthy (default: from the inventory)",
        keep="releases to keep per host (default: app.keep_releases, else 5)",
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
) -> None:
    """Deploy a release to every selected host at once (no batches, no draining: see `fab rollout`).

    Every host is first prepared (Docker checked, disk, bundle uploaded only if missing, compose
    validated, images pulled) without touching what runs; if any host fails that, nothing switches
    anywhere. Then each host switches `current`, starts the stack and must become healthy with the
    new version, or goes back to its previous release. Exit 1 if any host did not end on the release.
    With a Compute project (gce.project) it holds the fleet lock and marks each host while it
    switches, as `fab rollout` does: refused (exit 2, naming the holder) while a rollout runs.
    """
    from fleet.rollout import deploy as dp
    from fleet.view import console as ui

    inv, chosen = select(inventory, hosts, group, where)
    bundles = dp.render_all(inv, chosen, version=version or None)
    if dry_run:
        _print_diff(inv, chosen, bundles, json_)
        return
    with ui.host_progress("deploy", 2 * len(chosen), enabled=not json_) as advance:
        report = dp.deploy_release(
            inv,
            chosen,
            bundles=bundles,
            health_timeout=_health_timeout(chosen, health_timeout),
            keep=keep or None,
            workers=workers or None,
            on_done=advance,
            warn=_warn,
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
        if report.stopped_at:
            print("nothing was switched on any host: fix the errors above and deploy again")
    if not report.ok:
        raise Exit(code=EXIT_FAILED)


def _warn(text: str) -> None:
    sys.stderr.write(f"warning: {text}\n")
    sys.stderr.flush()


def _rel(rid: str | None, version: str | None) -> str:
    return f"{version or '?'} ({rid})" if rid else "none"


def _print_diff(inv: Any, chosen: list[Any], bundles: dict[str, Any], json_: bool) -> None:
    from fleet.rollout import deploy as dp
    from fleet.ssh.runner import run_on
    from fleet.view import console as ui

    results = run_on(inv, chosen, dp.diff_step(bundles))
    if json_:
        ui.print_json(
            {
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
                ]
            }
        )
    else:
        for r in results:
            b = bundles[r.host]
            print(f"== {r.host}: -> {b.version} ({b.release_id})")
            print(ui.safe(r.data["diff"].render() if r.ok else f"   {r.status}: {dp.mask_known(r.error)}"))
    if not all(r.ok for r in results):
        raise Exit(code=EXIT_FAILED)


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

    Compares each host's current release with the one `fab deploy --version VERSION` would install.
    Changes nothing.
    """
    from fleet.rollout import deploy as dp

    inv, chosen = select(inventory, hosts, group, where)
    _print_diff(inv, chosen, dp.render_all(inv, chosen, version=version or None), json_)


@task(help=task_help(*SELECTION, "workers"), iterable=["where"])
@fleet_errors
def status(
    c: Any,
    inventory: str | None = None,
    hosts: str | None = None,
    group: str | None = None,
    where: list[str] | None = None,
    json_: bool = False,
    workers: int = 0,
) -> None:
    """One table for the fleet: release, services, /health, drain flag, drift, last history entry.

    Drift is a container missing, one not in the current release, or one whose configuration differs
    from what the current release would create.
    """
    from fleet.rollout import deploy as dp
    from fleet.ssh.runner import run_on
    from fleet.view import console as ui

    inv, chosen = select(inventory, hosts, group, where)
    results = run_on(inv, chosen, dp.status_step, workers=workers or None)
    rows = [dp.status_row(r) for r in results]
    if json_:
        ui.print_json({"inventory": inv.name, "hosts": rows})
    else:
        table_rows = []
        for row in rows:
            if row["status"] != "ok":
                table_rows.append([row["host"], row["status"], "", "", "", "", "", row.get("error")])
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
                    "",
                ]
            )
        ui.table(
            f"status of {len(rows)} host(s)",
            ["host", "release", "services", "/health", "drained", "drift", "last", "error"],
            table_rows,
        )
    if not all(r.ok for r in results):
        raise Exit(code=EXIT_FAILED)


@task(help=task_help(*SELECTION, "workers", limit="entries per host (default 20)"), iterable=["where"])
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
) -> None:
    """The audit trail of each host's history.jsonl, merged fleet-wide, newest first."""
    from fleet.rollout import deploy as dp
    from fleet.ssh.runner import run_on
    from fleet.view import console as ui

    inv, chosen = select(inventory, hosts, group, where)
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
