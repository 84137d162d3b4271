"""The data layer check: `fab infra.data` (fleet/gcp/datalayer.py; docs/infra-data.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fabric import task

from fleet.cli.common import fleet_errors, task_help

if TYPE_CHECKING:
    from fleet.gcp.datalayer import DataLayer, Finding

EXIT_FINDINGS = 1  # a finding of severity error: something is missing or not as required


@task(help=task_help("inventory", "json"), name="data")
@fleet_errors
def data(c: Any, inventory: str | None = None, json_: bool = False) -> None:
    """Check the managed data layer the inventory names; print what to create or fix. Changes nothing.

    Reads `data_layer` (defaults.yaml) and checks, on the real APIs (or the stand-ins its `endpoints`
    name): Cloud SQL main and pgvector instances (databaseVersion, REGIONAL, backups with point-in-time
    recovery, deletion protection, no public IP, the VPC as private network, TLS enforced), Memorystore
    for Redis (STANDARD_HA, AUTH, in-transit encryption, private services access, the VPC), the bucket
    (versioning, uniform bucket-level access, location) and private services access on the VPC (an
    allocated VPC_PEERING range, an ACTIVE servicenetworking peering). DB_HOST, PGVECTOR_HOST,
    REDIS_HOST, REDIS_PORT, REDIS_USE_SSL and GOOGLE_STORAGE_BUCKET_NAME in vars are compared with what
    exists. Each finding carries the exact gcloud command that creates or fixes it: run it yourself;
    infra never creates or changes data services. Exit code 1 when a finding is an error.
    """
    from invoke.exceptions import Exit

    from fleet import inventory as inv_mod
    from fleet.gcp import datalayer
    from fleet.inventory.datalayer import resolve
    from fleet.view import console as ui

    layer = resolve(inv_mod.load(inventory))
    findings = check_layer(layer)
    if json_:
        ui.print_json(as_json(layer, findings))
    else:
        print_findings(layer, findings)
    if datalayer.has_errors(findings):
        raise Exit(code=EXIT_FINDINGS)


def check_layer(layer: DataLayer) -> list[Finding]:
    """The findings for one resolved data layer (the APIs are read; nothing is changed)."""
    from fleet.gcp import datalayer

    return datalayer.check(layer, datalayer.DataLayerClients(layer.endpoints, layer.project))


def as_json(layer: DataLayer, findings: list[Finding]) -> dict[str, Any]:
    from fleet.gcp import datalayer

    return {
        "project": layer.project,
        "region": layer.region,
        "ok": not datalayer.has_errors(findings),
        "findings": [f.as_dict() for f in findings],
        "commands": datalayer.fix_commands(findings),
    }


def print_findings(layer: DataLayer, findings: list[Finding]) -> None:
    """The findings as a table, then the commands in the order to run them (`infra.data`, `infra.plan`)."""
    from fleet.gcp import datalayer
    from fleet.view import console as ui

    title = (
        f"data layer: project {layer.project}, region {layer.region}, network {layer.network}: "
        f"cloudsql/{layer.sql_instance}"
        + (f", cloudsql/{layer.pgvector_instance}" if layer.pgvector_instance else "")
        + f", redis/{layer.redis_instance}, bucket/{layer.bucket}"
    )
    if findings:
        ui.table(
            title,
            ["resource", "property", "expected", "actual", "severity", "command / note"],
            [
                [f.resource, f.property, f.expected, f.actual, f.severity, _how(f.command, f.note)]
                for f in findings
            ],
        )
        commands = datalayer.fix_commands(findings)
        if commands:
            print("to create or fix, in this order (then set the vars the notes name, and deploy):")
            for command in commands:
                print(f"  {command}")
    else:
        print(f"{title}\nall present as required")
    errors = sum(1 for f in findings if f.severity == "error")
    print(
        f"{errors} error(s), {len(findings) - errors} warning(s). pgvector: the `vector` extension is "
        "enabled per database (CREATE EXTENSION vector), which the Admin API cannot see: not checked."
    )


def _how(command: str, note: str) -> str:
    return "\n".join(part for part in (command, note) if part)
