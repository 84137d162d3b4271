"""Monitoring tasks: plan and apply the fleet's topics, notification channel, uptime checks and
alert policies (fleet/alerting/policies.py; docs/monitoring.md)."""

from __future__ import annotations

from typing import Any

from fabric import task

from fleet.cli.common import fleet_errors, task_help

PRUNE_HELP = "also delete this fleet's policies, checks and channel that the inventory no longer wants"


def _run(inventory: str | None, json_: bool, prune: bool, execute: bool) -> None:
    from fleet import inventory as inv_mod
    from fleet.alerting import policies as mon
    from fleet.view import console as ui

    config = mon.config_from_inventory(inv_mod.load(inventory))
    with mon.MonitoringClients(config) as clients:
        report = mon.reconcile(config, clients, execute=execute, prune=prune)
    if json_:
        ui.print_json(report.as_dict())
        return
    verb = "apply" if execute else "plan"
    ui.table(
        f"monitoring {verb}: fleet {report.fleet}, project {report.project}",
        ["kind", "object", "action", "changes / role"],
        [
            [
                c.kind.replace("_", " "),
                c.display_name,
                c.action + (" (done)" if c.done else ""),
                "\n".join(c.changes) if c.changes else c.role,
            ]
            for c in report.changes
        ],
    )
    counts = report.counts()
    print(", ".join(f"{n} {action}" for action, n in sorted(counts.items())) or "nothing to do")
    if not execute and report.changed:
        print("run `fab monitoring.apply` with the same options to make these changes")


@task(help=task_help("inventory", "json", prune=PRUNE_HELP), name="plan")
@fleet_errors
def plan_(c: Any, inventory: str | None = None, json_: bool = False, prune: bool = False) -> None:
    """List what monitoring.apply would create, update, replace or leave unchanged; changes nothing.

    Reads the existing topics, notification channels, uptime checks and alert policies of the
    inventory's `data.monitoring.project` and compares each with what the inventory asks for.
    """
    _run(inventory, json_, prune, execute=False)


@task(help=task_help("inventory", "json", prune=PRUNE_HELP), name="apply")
@fleet_errors
def apply_(c: Any, inventory: str | None = None, json_: bool = False, prune: bool = False) -> None:
    """Create or update the fleet's topics, channel, uptime checks and alert policies (idempotent).

    The alerts and events Pub/Sub topics, the pubsub notification channel, uptime checks and alert
    policies labelled for autoheal / scale, all notifying the channel. A second run changes nothing.
    Autoheal's trigger is `monitoring.instance_health.source`: per-instance uptime checks (public IPs)
    or the VMs' own health metric (`agent-metric`, the default without per_instance checks and with
    gce.migs; docs/selfheal.md).
    Objects the inventory no longer wants are listed as orphans; --prune deletes them.
    """
    _run(inventory, json_, prune, execute=True)
