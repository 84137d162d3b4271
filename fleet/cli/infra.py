"""Infra tasks: plan and apply the Compute side of the fleet (fleet/gcp/infra.py; docs/infra.md)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fabric import task

from fleet.cli import infra_data
from fleet.cli.common import fleet_errors, task_help

if TYPE_CHECKING:
    from pathlib import Path

    from fleet.gcp.infra import InfraConfig
    from fleet.inventory.schema import Data

    Loaded = tuple[Path, dict[str, Any], Data]  # what fleet.inventory.loader.load_defaults returns

PRUNE_HELP = "also delete this fleet's resources the inventory no longer wants (never the MIG)"
ENDPOINT_HELP = "a local Compute endpoint (http://127.0.0.1:PORT); default: gce.api_endpoint or the real API"


def load_config(inventory: str | None, endpoint: str | None = None) -> InfraConfig:
    """The infra configuration from the inventory's defaults.yaml (infra is fleet-wide; the MIG need
    not exist yet, so no MIG discovery runs)."""
    from fleet.inventory.loader import load_defaults

    return _config_of(load_defaults(inventory), endpoint)


def _config_of(loaded: Loaded, endpoint: str | None) -> InfraConfig:
    """The infra configuration from `load_defaults`' answer (read once per task, then shared)."""
    from fleet import settings
    from fleet.gcp import infra

    path, defaults, data = loaded
    return infra.config_from_data(
        data,
        str(path / "defaults.yaml"),
        username=defaults.get("username"),
        endpoint=endpoint or settings.load().compute_endpoint_for(data.gce.api_endpoint),
    )


def _run(inventory: str | None, json_: bool, prune: bool, execute: bool, endpoint: str | None) -> None:
    from fleet.gcp import infra
    from fleet.inventory.loader import load_defaults
    from fleet.view import console as ui

    loaded = load_defaults(inventory)
    config = _config_of(loaded, endpoint or None)
    clients = infra.InfraClients(config)
    err = ui.console(stderr=True)

    def progress(ch: infra.InfraChange) -> None:
        if not json_:
            err.print(f"[green]{ch.action}[/green] {ch.label} {ch.name}: done", highlight=False)

    report = infra.reconcile(config, clients, execute=execute, prune=prune, progress=progress)
    data = None if execute else _data_layer(loaded)
    if json_:
        ui.print_json({**report.as_dict(), **({"data_layer": data[0]} if data is not None else {})})
        return
    verb = "apply" if execute else "plan"
    ui.table(
        f"infra {verb}: fleet {report.fleet}, project {report.project}",
        ["kind", "name", "where", "action", "changes / note"],
        [
            [
                ch.label,
                ch.name,
                ch.location or "global",
                ch.action + (" (done)" if ch.done else ""),
                "\n".join([*ch.changes, *([ch.note] if ch.note else [])]),
            ]
            for ch in report.changes
        ],
    )
    counts = report.counts()
    print(", ".join(f"{n} {action}" for action, n in sorted(counts.items())) or "nothing to do")
    if data is not None:
        print()
        data[1]()
    if not execute:
        print("\n# service accounts and IAM (not applied by infra; review and run them yourself):")
        for line in report.iam:
            print(f"# {line.why}\n{line.render()}")
        if report.conflicts:
            print(
                f"\n{len(report.conflicts)} conflict(s): infra.apply refuses to run until they are resolved"
            )
        elif report.changed:
            print("\nrun `fab infra.apply` with the same options to make these changes")


def _data_layer(loaded: Loaded) -> tuple[dict[str, Any], Callable[[], None]] | None:
    """The data layer's check for the plan, as JSON and as a printer (`fab infra.data` alone gives its
    exit code). It must not stop the Compute plan: an API it cannot read is reported as not checked."""
    from fleet.errors import FleetError
    from fleet.inventory.datalayer import resolve_defaults

    path, _, data = loaded
    layer = resolve_defaults(data, str(path / "defaults.yaml"))
    if layer is None:
        return None
    try:
        findings = infra_data.check_layer(layer)
    except FleetError as exc:
        reason = str(exc)
        return {"checked": False, "error": reason}, lambda: print(f"data layer: not checked: {reason}")
    return (
        {"checked": True, **infra_data.as_json(layer, findings)},
        lambda: infra_data.print_findings(layer, findings),
    )


@task(help=task_help("inventory", "json", prune=PRUNE_HELP, endpoint=ENDPOINT_HELP), name="plan")
@fleet_errors
def plan_(
    c: Any, inventory: str | None = None, json_: bool = False, prune: bool = False, endpoint: str = ""
) -> None:
    """List what infra.apply would create, update, replace, adopt or leave unchanged; changes nothing.

    Reads the Compute resources named by the inventory's `data.infra` (VPC, subnet, router + NAT,
    firewall rules, readiness and liveness health checks, instance template, regional MIG, backend
    service, URL map, target proxy, managed certificate, forwarding rule) and compares each with what
    the inventory asks for. Then prints the exact `gcloud` lines for the service accounts and IAM
    bindings, which infra never applies itself (docs/infra.md says why). Exit code 2 on bad input.
    """
    _run(inventory, json_, prune, execute=False, endpoint=endpoint)


@task(help=task_help("inventory", "json", prune=PRUNE_HELP, endpoint=ENDPOINT_HELP), name="apply")
@fleet_errors
def apply_(
    c: Any, inventory: str | None = None, json_: bool = False, prune: bool = False, endpoint: str = ""
) -> None:
    """Create or update the fleet's Compute resources (idempotent; a second run changes nothing).

    Refuses to change anything while the plan has a conflict (a name taken by a resource that is not
    this fleet's, an immutable field that differs, an adopted network or subnet that is missing).
    Resources are created in dependency order and each operation is waited for; a failed operation
    stops the run with its error (what was done stays; run it again). Resources of this fleet the
    inventory no longer wants are listed as orphans; --prune deletes them (never the MIG).
    """
    _run(inventory, json_, prune, execute=True, endpoint=endpoint)
