"""Cloud Functions tasks: deploy autoheal, scale and notify (fleet/alerting/functions_deploy.py)."""

from __future__ import annotations

import sys
from typing import Any

from fabric import task
from invoke.exceptions import Exit

from fleet.cli.common import EXIT_FAILED, fleet_errors, task_help


@task(help=task_help("inventory", "json", dry_run="print exactly the commands it would run, and run nothing"))
@fleet_errors
def deploy(c: Any, inventory: str | None = None, dry_run: bool = False, json_: bool = False) -> None:
    """Deploy the autoheal, scale and notify Cloud Functions with gcloud; --dry-run prints the commands.

    Four gen2 functions (notify once per topic) with Pub/Sub triggers, retry on failure, the
    environment and secret references of data.monitoring.functions, after the IAM bindings they
    rely on. Every command is echoed before it runs; needs gcloud. Checks first that
    `fab monitoring.apply` created the topics and the notification channel.
    """
    from fleet import inventory as inv_mod
    from fleet.alerting import functions_deploy as fd
    from fleet.alerting import policies as mon
    from fleet.errors import FleetError
    from fleet.view import console as ui

    config = mon.config_from_inventory(inv_mod.load(inventory))
    plan = fd.deploy_plan(config)
    if dry_run:
        if json_:
            ui.print_json({"dry_run": True, **plan.as_dict()})
        else:
            sys.stdout.write(plan.script())
        return
    fd.require_gcloud()
    with mon.MonitoringClients(config) as clients:
        missing = fd.missing_prerequisites(mon.plan(config, clients))
    if missing:
        raise FleetError(
            f"the functions rely on objects that do not exist yet: {'; '.join(missing)}",
            where=f"project {config.project}",
            hint="run `fab monitoring.apply` first",
        )
    results = fd.run(
        plan.commands, echo=sys.stderr if json_ else sys.stdout, output=sys.stderr if json_ else None
    )
    failed = next((r for r in results if r.exit_code != 0), None)
    if json_:
        ui.print_json(
            {
                "dry_run": False,
                **plan.as_dict(),
                "results": [{"label": r.command.label, "exit_code": r.exit_code} for r in results],
            }
        )
    if failed is not None:
        done = [r.command.label for r in results if r.exit_code == 0]
        ui.error(
            f"{failed.command.label} failed with exit code {failed.exit_code}; "
            f"done before it: {', '.join(done) or 'nothing'}; not run: "
            f"{len(plan.commands) - len(results)} command(s). Fix the cause and run again "
            "(each step is idempotent)."
        )
        raise Exit(code=EXIT_FAILED)
