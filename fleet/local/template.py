"""The local MIG's instance template metadata: what a GCE template would carry for this fleet.

Every member gets the same attributes (as from one template): where the release store is, the
fleet's roles and beat rule, the layout, and the `startup-script` the VM runs at each boot, which
installs and runs the on-VM agent (fleet/agent/). Only the endpoint overrides are local: they point
the agent at the stand-ins on the fleet network's gateway instead of googleapis.com.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from typing import Protocol

from fleet.errors import FleetError
from fleet.local.config import LocalConfig


class Console(Protocol):
    """What runs a command inside an instance (fleet.local.instances.LocalFleet.exec: docker exec)."""

    def exec(
        self,
        name: str,
        argv: Sequence[str],
        *,
        user: str | None = None,
        check: bool = True,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]: ...


APP_DIR = "/opt/fleet/dify"
APP_PROJECT = "dify"
APP_USER = "deploy"  # the SSH deploy user owns the layout; the agent acts as that user too
HEALTH_TIMEOUT = 120
REPORT_INTERVAL = 3  # seconds between the agents' heartbeats (GCE default 30; short: tests look soon)


def mig_path(config: LocalConfig) -> str:
    from fleet.local.compute_endpoint import mig_name

    return f"projects/{config.project}/zones/{config.zone}/instanceGroupManagers/{mig_name(config)}"


def labels(config: LocalConfig) -> dict[str, str]:
    """The template's instance labels: every member carries its MIG's name, the label the CPU scale
    policies (and the local monitor) select members by."""
    from fleet.local.compute_endpoint import mig_name
    from functions import fleet_contract as contract

    return {contract.INSTANCE_MIG_LABEL: contract.validate_label_value(mig_name(config))}


def endpoint_overrides(config: LocalConfig, compute_url: str) -> dict[str, str]:
    """Where the local VMs reach Google's APIs: the stand-ins on the fleet network's gateway. Laid over
    the metadata of the instance template `infra.apply` made (the one thing a GCE VM does not need)."""
    return {
        "fleet-storage-endpoint": config.storage_endpoint,
        "fleet-secretmanager-endpoint": config.secretmanager_endpoint,
        "fleet-compute-endpoint": f"{compute_url}/compute/v1",
        "fleet-monitoring-endpoint": config.monitoring_endpoint,
    }


def infra_metadata() -> dict[str, str]:
    """Template metadata the local inventory adds through `infra.metadata` (the agent's local pace)."""
    return {
        "fleet-health-timeout": str(HEALTH_TIMEOUT),
        "fleet-report-interval": str(REPORT_INTERVAL),
        # the heartbeat writes custom.googleapis.com/fleet/app_health (docs/selfheal.md)
        "fleet-health-metric": "true",
    }


def metadata(config: LocalConfig, compute_url: str) -> dict[str, str]:
    """The built-in template's metadata items (used until infra.apply made the fleet's template).
    `compute_url` is the Compute stand-in as the VMs reach it."""
    from fleet.commands.agent import startup_script

    return {
        "enable-guest-attributes": "TRUE",
        "fleet-name": config.name,
        "fleet-store": config.store_url,
        "fleet-roles": "app",
        "fleet-beat": "first",
        "fleet-mig": mig_path(config),
        "fleet-app-dir": APP_DIR,
        "fleet-app-project": APP_PROJECT,
        "fleet-deploy-user": APP_USER,
        "fleet-http-port": "80",
        "fleet-health-timeout": str(HEALTH_TIMEOUT),
        "fleet-report-interval": str(REPORT_INTERVAL),
        "fleet-storage-endpoint": config.storage_endpoint,
        "fleet-secretmanager-endpoint": config.secretmanager_endpoint,
        "fleet-compute-endpoint": f"{compute_url}/compute/v1",
        # the heartbeat writes custom.googleapis.com/fleet/app_health (docs/selfheal.md)
        "fleet-health-metric": "true",
        "fleet-monitoring-endpoint": config.monitoring_endpoint,
        "startup-script": startup_script(config.store_url),
    }


STARTUP_TIMEOUT = 900.0
# what GCE's guest environment does at boot: fetch the `startup-script` metadata value and run it
RUN_STARTUP_SCRIPT = (
    "set -e; curl -sSf --retry 5 --retry-connrefused -H 'Metadata-Flavor: Google' "
    "-o /run/startup-script "
    "http://metadata.google.internal/computeMetadata/v1/instance/attributes/startup-script; "
    "exec bash /run/startup-script"
)


def run_startup_script(fleet: Console, name: str, log: Callable[[str], None]) -> None:
    """Run the template's startup script inside the instance, as root, as GCE does at boot."""
    proc = fleet.exec(name, ["sh", "-c", RUN_STARTUP_SCRIPT], check=False, timeout=STARTUP_TIMEOUT)
    for line in (proc.stdout + proc.stderr).splitlines()[-40:]:
        log(f"startup {name}: {line}")
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-3:]
        raise FleetError(
            f"startup script exited {proc.returncode}: {' | '.join(tail)[:400]}",
            where=name,
            hint="the agent's guest attributes (namespace fleet) say what it did",
        )
