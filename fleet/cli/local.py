"""`fab local.*`: the local fleet (instances as containers, registry, haproxy LB on 127.0.0.1).

Heavy modules are imported inside each task so `fab --list` stays fast.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

from fabric import task

from fleet.cli.common import fleet_errors

if TYPE_CHECKING:
    from fleet.local.instances import Instance, LocalFleet


def _fleet() -> LocalFleet:
    from fleet.local.instances import LocalFleet
    from fleet.local.progress import Progress

    return LocalFleet(progress=Progress())


def _print_instances(records: list[Instance], lb: dict[str, str] | None = None) -> None:
    rows = [
        (
            r.name,
            r.container,
            r.state,
            f"127.0.0.1:{r.ssh_port}",
            f"127.0.0.1:{r.http_port}",
            ",".join(r.roles),
            (lb or {}).get(r.name, "-"),
            r.host_key.split()[1][-12:] if r.host_key else "-",
        )
        for r in records
    ]
    header = ("host", "container", "state", "ssh", "http", "roles", "lb", "host key (tail)")
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(*header)
        for row in rows:
            table.add_row(*row)
        Console().print(table)
    else:
        for row in [header, *rows]:
            print("  ".join(f"{cell:<16}" for cell in row).rstrip())


def _lb_view(fleet: LocalFleet) -> dict[str, str]:
    return {name: s.raw for name, s in fleet.lb.servers().items()} if fleet.lb.running() else {}


@task(help={"instances": "number of instances (default 3)"})
@fleet_errors
def up(c: Any, instances: int = 3) -> None:
    """Bring up the local fleet: N "VMs" (sshd + Docker + Compose), registry, haproxy on 127.0.0.1:8080,
    and its Compute API on 127.0.0.1:8089 (MIG local-mig; docs/gce.md).

    Builds the images first when their inputs changed (cached otherwise), then writes
    inventory/local/ (hosts, known_hosts with each instance's real host key) for `--inventory local`,
    and inventory/local/mig/ (the same fleet as MIG members) for `--inventory local/mig`.

    The fleet's Compute side is made by `infra.apply` of inventory/local/infra/ against that API
    (instance template, health checks, regional MIG, backend service...; a second run changes
    nothing), and the fleet runs from it: new instances from the template, the LB from the backend
    service, autohealing from the MIG's policy (docs/infra.md "Locally").

    FLEET_LOCAL_SESSION_AFFINITY=CLIENT_IP|GENERATED_COOKIE|NONE (default NONE) sets the backend
    service's affinity. FLEET_LOCAL_AUTOHEALING=1, once the fleet serves, gives the MIG its
    autohealing policy on nginx's /nginx-health; without it, the next `local.up` clears it again
    (docs/local-fleet.md "MIG autohealing").
    """

    fleet = _fleet()
    records = fleet.up(int(instances))
    _print_instances(records, _lb_view(fleet))
    print(f"inventory: {fleet.inventory_dir}   LB: {fleet.lb.frontend}")
    _print_compute(fleet)


def _print_compute(fleet: LocalFleet) -> None:
    info = fleet.compute_status()
    state = "running" if info["running"] else "not running"
    print(
        f"Compute API: {info['url'] or '-'} ({state}; MIG {info['mig']}; "
        f"the MIG's view: --inventory {fleet.inventory_dir / 'mig'})"
    )


@task
@fleet_errors
def down(c: Any) -> None:
    """Remove every instance, the LB, the Compute API and the registry container (images stay cached)."""

    _fleet().down()
    print("local fleet removed")


@task(help={"json": "print JSON instead of a table"})
@fleet_errors
def status(c: Any, json_: bool = False) -> None:
    """Instances, their state and the LB's view of each (UP/DOWN/MAINT/DRAIN)."""

    fleet = _fleet()
    if json_:
        print(json.dumps(fleet.status(), indent=2))
        return
    records = fleet.instances()
    lb = _lb_view(fleet)
    if not records:
        print("no local instances (fab local.up)")
        return
    _print_instances(records, lb)
    print(f"LB: {fleet.lb.frontend} ({'running' if fleet.lb.running() else 'stopped'})")
    _print_compute(fleet)


def _one(action: str, name: str) -> None:

    fleet = _fleet()
    result = getattr(fleet, f"{action}_instance")(name)
    if result is not None:
        _print_instances([result], _lb_view(fleet))


@task
@fleet_errors
def add(c: Any) -> None:
    """Add one instance (lowest free number); the others are not touched."""

    fleet = _fleet()
    record = fleet.add_instance()
    _print_instances([record], _lb_view(fleet))


@task(help={"name": "instance, e.g. local-2"})
@fleet_errors
def remove(c: Any, name: str) -> None:
    """Remove one instance (out of the LB first, then its container and disk)."""
    _one("remove", name)
    print(f"{name} removed")


@task(help={"name": "instance, e.g. local-2"})
@fleet_errors
def recreate(c: Any, name: str) -> None:
    """Replace one instance with a fresh one of the same name (new disk, new host key)."""
    _one("recreate", name)


@task(help={"name": "instance, e.g. local-2"})
@fleet_errors
def restart(c: Any, name: str) -> None:
    """Reboot one instance (`docker restart`): same disk and host key, compose project comes back."""
    _one("restart", name)


@task(help={"name": "instance, e.g. local-2"})
@fleet_errors
def stop(c: Any, name: str) -> None:
    """Power one instance off (it stays in the inventory and the LB, which marks it DOWN)."""
    _one("stop", name)


@task(help={"name": "instance, e.g. local-2"})
@fleet_errors
def start(c: Any, name: str) -> None:
    """Power a stopped instance on again."""
    _one("start", name)


@task
@fleet_errors
def build(c: Any) -> None:
    """Build (or confirm cached) every local image and push the stand-ins to the local registry."""
    from fleet.local.images import build_all
    from fleet.local.progress import Progress

    report = build_all(progress=Progress())
    print(f"built {len(report.built)}, cached {len(report.cached)}, pushed {len(report.pushed)}")


@task
@fleet_errors
def clean(c: Any) -> None:
    """Remove the fleet AND every image built for it (the next `local.up` builds from nothing)."""
    from fleet.local.images import clean as clean_images

    fleet = _fleet()
    fleet.down()
    removed = clean_images(fleet.config, fleet.progress)
    print(f"removed {len(removed)} image(s)")


@task(
    help={
        "load_high": "scale out above N requests/s per serving instance (default: no scale-out condition)",
        "load_low": "scale in below N requests/s per serving instance (default: no scale-in condition)",
        "cpu_high": "scale out above this mean CPU utilization of the MIG's members, 0..1 (their cgroups)",
        "cpu_low": "scale in below this mean CPU utilization of the MIG's members, 0..1",
        "health": "probe (each member's /health, like a per-instance uptime check) or metric (the agents' "
        "app_health series, as a fleet without public IPs); default probe",
    }
)
@fleet_errors
def alerts(
    c: Any,
    load_high: str = "",
    load_low: str = "",
    cpu_high: str = "",
    cpu_low: str = "",
    health: str = "probe",
) -> None:
    """Run the local alert path in the foreground until Ctrl-C: monitor, Pub/Sub, autoheal/scale/notify
    (functions-framework) and the webhook sink, printing incidents, decisions and notifications.

    Break an instance meanwhile (e.g. stop its api container) and watch it heal; see docs/selfheal.md.
    With --cpu-high/--cpu-low the monitor scales on the members' CPU (the instances labelled
    fleet-mig=<mig>, read from their cgroups), as the CPU policies of `monitoring.apply` do.
    `--health metric` judges instances from the health metric the VMs' agents write (no probe reaches in).
    """
    from invoke.exceptions import Exit

    from fleet.scenarios import alertpath

    args = ["--health", health]
    for flag, value in (
        ("--load-high", load_high),
        ("--load-low", load_low),
        ("--cpu-high", cpu_high),
        ("--cpu-low", cpu_low),
    ):
        if value:
            args += [flag, value]
    code = alertpath.main(args)
    if code:
        raise Exit(code=code)


@task(help={"name": "instance, e.g. local-3"})
@fleet_errors
def break_api(c: Any, name: str) -> None:
    """Break one instance's api so that a reboot does not cure it: a fault on the VM's disk, and the
    api container stopped (a heal rehearsal: with `fab local.alerts` running, autoheal resets it,
    which does not help, then recreates it: a new disk, and the agent boots the fleet's release)."""
    from fleet.scenarios.selfheal import break_api as do_break

    fleet = _fleet()
    fleet.instance(name)  # a clear error for an unknown instance
    do_break(fleet, name)
    print(f"{name}: api stopped and a fault left on its disk; its /health now fails until a recreate")
