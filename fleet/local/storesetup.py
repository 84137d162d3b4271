"""The local fleet's release store and secrets, set up the way an operator sets up a real fleet's.

`fab local.up` generates random local secret values (one git-ignored file each, fleet/local/
inventory_writer.py); here they are pushed to the fleet's Secret Manager stand-in (a new version
only when the value changed, as `fab secrets.push` does) so the inventory refers to them as
`{secret_manager: NAME}`, and the on-VM agent is uploaded to the store, where every instance's
startup script fetches it. Both stand-ins run in the Compute endpoint process (fleet/local/vmservices.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from fleet.errors import FleetError
from fleet.local.config import LocalConfig


def secret_name(config: LocalConfig, key: str) -> str:
    """Secret Manager ids: letters, digits, '-', '_' (up to 255)."""
    return f"{config.name}-{key.lower().replace('_', '-')}"


def push_secrets(config: LocalConfig, files: Mapping[str, Path]) -> dict[str, dict[str, str]]:
    """KEY -> {secret_manager: NAME} after making the stand-in's latest version hold the file's value."""
    from fleet.gcp.secretmanager import SecretManager, SecretManagerError

    client = SecretManager(config.secretmanager_endpoint)
    refs: dict[str, dict[str, str]] = {}
    for key, path in sorted(files.items()):
        value = path.read_text().removesuffix("\n")
        secret = f"projects/{config.project}/secrets/{secret_name(config, key)}"
        try:
            current, _ = client.access(f"{secret}/versions/latest")
        except SecretManagerError as exc:
            if exc.status == "FAILED_PRECONDITION":  # its latest version was disabled on purpose:
                refs[key] = {"secret_manager": secret_name(config, key)}  # an operator's act, left alone
                continue
            if exc.status != "NOT_FOUND":
                raise
            current = None
        if current != value:
            client.add_version(secret, value)
        refs[key] = {"secret_manager": secret_name(config, key)}
    return refs


def publish_agent(config: LocalConfig) -> str:
    """Build the agent zipapp from this checkout and upload it (content-addressed); its object name."""
    from fleet.agent.build import build_bytes
    from fleet.store.agent import upload_agent
    from fleet.store.location import parse

    store = parse(config.store_url, config.storage_endpoint, config.project, where="local fleet")
    try:
        return upload_agent(store, build_bytes())
    except FleetError as exc:
        raise FleetError(
            f"cannot upload the agent: {exc.what}", where=config.store_url, hint=exc.hint
        ) from None
