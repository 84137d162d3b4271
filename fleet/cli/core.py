"""Fleet-wide read and run tasks: hosts, exec, facts."""

from __future__ import annotations

from typing import Any

from fabric import task
from invoke.exceptions import Exit

from fleet.cli.common import EXIT_FAILED, fleet_errors, select, task_help

SELECTION = ("inventory", "hosts", "group", "where", "json")


@task(help=task_help(*SELECTION), iterable=["where"])
@fleet_errors
def hosts(
    c: Any,
    inventory: str | None = None,
    hosts: str | None = None,
    group: str | None = None,
    where: list[str] | None = None,
    json_: bool = False,
) -> None:
    """List the inventory's hosts (after filters) with how each is reached. Connects to no host.

    With `gce.migs` the hosts are the MIGs' members, read from Compute, with their status and MIG
    action; those not RUNNING or with an action in progress are listed with why tasks skip them."""
    from fleet import inventory as inv_mod
    from fleet.inventory import skip_reason
    from fleet.ssh.connection import host_keys_mode, ssh_params
    from fleet.view import console as ui

    inv, chosen = inv_mod.choose(
        inventory, hosts, group, where, include_unready=True, hint="check --hosts/--group/--where"
    )
    rows = []
    for h in chosen:
        p = ssh_params(h, inv)
        proxy = h.settings.ssh.proxy
        rows.append(
            {
                "host": h.name,
                "address": f"{h.username}@{h.hostname}:{h.port}",
                "groups": list(h.groups),
                "roles": h.settings.roles or [],
                "proxy": proxy if isinstance(proxy, str) else next(iter(type(proxy).model_fields)),
                "host_key_name": p.known_hosts_name,
                "host_keys": host_keys_mode(h),
                "gce_instance": h.settings.gce.instance,
                "instance_id": h.settings.gce.instance_id,
                "zone": h.settings.gce.zone,
                "mig": h.get("gce.mig"),
                "status": h.get("gce.status"),
                "current_action": h.get("gce.current_action"),
                "skip_reason": skip_reason(h),
            }
        )
    if json_:
        ui.print_json({"inventory": inv.name, "hosts": rows})
        return
    dynamic = any(r["mig"] for r in rows)
    columns = ["host", "address", "groups", "roles", "proxy", "host key", "zone"]
    if dynamic:
        columns += ["status", "action", "skipped by tasks"]
    ui.table(
        f"inventory {inv.name}: {len(rows)} host(s)",
        columns,
        [
            [
                r["host"],
                r["address"],
                ",".join(r["groups"]),
                ",".join(r["roles"]),
                r["proxy"],
                r["host_key_name"] + (" (guest attributes)" if r["host_keys"] == "guest_attributes" else ""),
                r["zone"],
                *(
                    [r["status"] or "-", r["current_action"] or "-", r["skip_reason"] or ""]
                    if dynamic
                    else []
                ),
            ]
            for r in rows
        ],
    )


@task(
    name="exec",
    help=task_help(
        *SELECTION, "workers", cmd="shell command to run on every selected host", timeout="seconds per host"
    ),
    iterable=["where"],
)
@fleet_errors
def exec_(
    c: Any,
    cmd: str,
    inventory: str | None = None,
    hosts: str | None = None,
    group: str | None = None,
    where: list[str] | None = None,
    json_: bool = False,
    workers: int | None = None,
    timeout: float | None = None,
) -> None:
    """Run a shell command on the selected hosts in parallel; exits 1 if any host failed or was unreachable.

    The command is run as given by the remote user's shell (it is the operator's own command); every
    other value is validated and quoted. Output: a summary table (control characters in host output
    shown as \\xNN, never interpreted by your terminal), or --json with each host's exit code,
    stdout/stderr tail (raw, JSON-escaped) and duration.

    A validated inventory is memoized and reused while its files, the environment and the tool are
    unchanged (FLEET_INVENTORY_CACHE: a directory, or off; docs/inventory.md "The inventory memo").
    """
    from fleet.ssh.runner import command_step, run_on
    from fleet.view import console as ui

    inv, chosen = select(inventory, hosts, group, where, memo=True)
    with ui.host_progress("exec", len(chosen), enabled=not json_) as progress:
        results = run_on(
            inv, chosen, command_step(cmd, timeout=timeout), workers=workers, processors=[progress]
        )
    if json_:
        ui.print_json({"inventory": inv.name, "command": cmd, "results": [r.as_dict() for r in results]})
    else:
        ui.results_table(f"exec on {len(results)} host(s)", results)
        print(ui.summary_line(results))
    if not all(r.ok for r in results):
        raise Exit(code=EXIT_FAILED)


@task(help=task_help(*SELECTION, "workers"), iterable=["where"])
@fleet_errors
def facts(
    c: Any,
    inventory: str | None = None,
    hosts: str | None = None,
    group: str | None = None,
    where: list[str] | None = None,
    json_: bool = False,
    workers: int | None = None,
) -> None:
    """Read each host's OS, kernel, Docker and Compose versions, free disk and memory, current release."""
    from fleet.commands.facts import facts_command, parse_facts
    from fleet.ssh.runner import HostContext, HostResult, run_on
    from fleet.view import console as ui

    def read_facts(ctx: HostContext) -> HostResult:
        cmd = facts_command(ctx.host.settings.app.dir)
        r = ctx.run(cmd.shell())
        return HostResult(
            host=ctx.host.name,
            status="ok" if r.exited == 0 else "failed",
            exit_code=r.exited,
            stdout=r.stdout,
            stderr=r.stderr,
            data=parse_facts(r.stdout) if r.exited == 0 else {},
        )

    inv, chosen = select(inventory, hosts, group, where)
    with ui.host_progress("facts", len(chosen), enabled=not json_) as progress:
        results = run_on(inv, chosen, read_facts, workers=workers, processors=[progress])
    if json_:
        ui.print_json(
            {
                "inventory": inv.name,
                "hosts": [
                    {"host": r.host, "status": r.status, "error": r.error, "facts": r.data} for r in results
                ],
            }
        )
    else:
        cols = ["host", "status", "os", "kernel", "docker", "compose", "disk free", "mem avail", "release"]
        rows = []
        for r in results:
            f = r.data
            if not r.ok:
                rows.append([r.host, r.status, r.error or r.stderr.strip()[-200:], "", "", "", "", "", ""])
                continue
            release = f["release"] and f"{f['release'][:12]} ({f['release_version'] or '?'})"
            rows.append(
                [
                    r.host,
                    r.status,
                    f["os"],
                    f["kernel"],
                    f["docker"] or "missing",
                    f["compose"] or "missing",
                    f"{f['disk_free_mb']} MB",
                    f"{f['mem_available_mb']} MB",
                    release or "none",
                ]
            )
        ui.table(f"facts of {len(results)} host(s)", cols, rows)
    if not all(r.ok for r in results):
        raise Exit(code=EXIT_FAILED)
