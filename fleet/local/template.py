"""The local MIG's instance template metadata: what a GCE template would carry for this fleet.

Every member gets the same attributes (as from one template): where the release store is, the
fleet's roles and beat rule, the layout, and the `startup-script` the VM runs at each boot, which
installs and runs the on-VM agent (fleet/agent/). Only the endpoint overrides are local: they point
the agent at the stand-ins on the fleet network's gateway instead of googleapis.com.
"""

from __future__ import annotations

from fleet.local.config import LocalConfig

APP_DIR = "/opt/fleet/dify"
APP_PROJECT = "dify"
APP_USER = "deploy"  # the SSH deploy user owns the layout; the agent acts as that user too
HEALTH_TIMEOUT = 120


def mig_path(config: LocalConfig) -> str:
    from fleet.local.compute_endpoint import mig_name

    return f"projects/{config.project}/zones/{config.zone}/instanceGroupManagers/{mig_name(config)}"


def metadata(config: LocalConfig, compute_url: str) -> dict[str, str]:
    """The template's metadata items. `compute_url` is the Compute stand-in as the VMs reach it."""
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
        "fleet-storage-endpoint": config.storage_endpoint,
        "fleet-secretmanager-endpoint": config.secretmanager_endpoint,
        "fleet-compute-endpoint": f"{compute_url}/compute/v1",
        "startup-script": startup_script(config.store_url),
    }
