"""The operator-side settings, in one object read from the environment in one place.

Every knob has three layers; a later layer wins over an earlier one, and an unset layer (None or "")
falls through:

    inventory file  ->  environment (FLEET_*)  ->  command-line flag

Not every knob has all three (the journal directory has no inventory field, workers no variable); the
table of variables, defaults and layers is in docs/inventory.md ("Settings"). `load()` takes one
snapshot of the environment; callers load where they need a value, so a variable set by a test or a
benchmark before the call is seen, and no module reads `os.environ` for a setting on its own.

FLEET_PROJECT_DIR is the one exception: `fleet.paths` (below this module) reads it at import, since
every path of the project hangs off it; `Settings.project_dir` reports the result.
"""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TypeVar

from fleet.paths import PROJECT_ENV, PROJECT_ROOT, STATE_DIR

INVENTORY_ENV = "FLEET_INVENTORY"
JOURNAL_ENV = "FLEET_JOURNAL_DIR"
OPERATOR_ENV = "FLEET_OPERATOR"
COMPUTE_ENDPOINT_ENV = "FLEET_COMPUTE_ENDPOINT"
MONITORING_ENDPOINT_ENV = "FLEET_MONITORING_ENDPOINT"
PUBSUB_ENDPOINT_ENV = "FLEET_PUBSUB_ENDPOINT"
SECRETMANAGER_ENDPOINT_ENV = "FLEET_SECRETMANAGER_ENDPOINT"
STORAGE_ENDPOINT_ENV = "FLEET_STORAGE_ENDPOINT"
METADATA_HOST_ENV = "GCE_METADATA_HOST"  # the on-VM agent's metadata server (Google's own variable)
INVENTORY_CACHE_ENV = "FLEET_INVENTORY_CACHE"  # the inventory memo's directory, or "off"
VARIABLES = (
    PROJECT_ENV,
    INVENTORY_ENV,
    JOURNAL_ENV,
    OPERATOR_ENV,
    COMPUTE_ENDPOINT_ENV,
    MONITORING_ENDPOINT_ENV,
    PUBSUB_ENDPOINT_ENV,
    SECRETMANAGER_ENDPOINT_ENV,
    STORAGE_ENDPOINT_ENV,
    METADATA_HOST_ENV,
    INVENTORY_CACHE_ENV,
)

DEFAULT_LOCK_TTL = 300.0  # seconds a rollout lock lives without renewal (inventory: rollout.lock_ttl)
MAX_WORKERS = 100  # parallel hosts at most when neither the flag nor run.workers says
# the on-VM agent's Google API calls (fleet/agent/http.py): tries per request, and seconds all tries of one
# request may take together (a store unreachable at boot is reported after this, never waited on forever)
AGENT_HTTP_ATTEMPTS = 6
AGENT_HTTP_BUDGET = 90.0
AGENT_HTTP_TIMEOUT = 15.0  # seconds one try may take

T = TypeVar("T")


def layered(default: T, inventory: T | None = None, env: T | None = None, flag: T | None = None) -> T:
    """The precedence rule itself: flag, else environment, else inventory file, else the default."""
    for value in (flag, env, inventory):
        if value is not None and value != "":
            return value
    return default


def _default_operator() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


@dataclass(frozen=True)
class Settings:
    """One snapshot of the operator's settings; the `*_for` methods apply the layers to a knob."""

    project_dir: Path = PROJECT_ROOT
    inventory: str | None = None
    journal_dir: Path = STATE_DIR / "journal"
    operator: str = ""
    compute_endpoint: str | None = None
    monitoring_endpoint: str | None = None
    pubsub_endpoint: str | None = None
    secretmanager_endpoint: str | None = None
    storage_endpoint: str | None = None
    metadata_host: str | None = None  # GCE_METADATA_HOST; unset = metadata.google.internal
    inventory_cache: str | None = None  # FLEET_INVENTORY_CACHE: a directory, or "off"
    # the whole environment, for `env:` secret references in the inventory (values, not settings)
    environ: Mapping[str, str] = field(default_factory=dict, repr=False)

    def inventory_for(self, flag: str | None = None) -> str | None:
        """--inventory, else FLEET_INVENTORY (there is no inventory-file layer, and no default)."""
        return layered(None, env=self.inventory, flag=flag)

    def operator_for(self, flag: str | None = None) -> str:
        """Who acts (locks, release metadata): the caller's value, else FLEET_OPERATOR, else user@host."""
        return layered(_default_operator(), env=self.operator, flag=flag)

    def compute_endpoint_for(self, inventory: str | None = None) -> str | None:
        """FLEET_COMPUTE_ENDPOINT, else gce.api_endpoint; unset = compute.googleapis.com."""
        return layered(None, inventory=inventory, env=self.compute_endpoint)

    def monitoring_endpoint_for(self, inventory: str | None = None) -> str | None:
        return layered(None, inventory=inventory, env=self.monitoring_endpoint)

    def pubsub_endpoint_for(self, inventory: str | None = None) -> str | None:
        return layered(None, inventory=inventory, env=self.pubsub_endpoint)

    def secretmanager_endpoint_for(self, inventory: str | None = None) -> str | None:
        """FLEET_SECRETMANAGER_ENDPOINT, else gce.secretmanager_endpoint; unset = the real API."""
        return layered(None, inventory=inventory, env=self.secretmanager_endpoint)

    def storage_endpoint_for(self, inventory: str | None = None) -> str | None:
        """FLEET_STORAGE_ENDPOINT, else store.endpoint; unset = storage.googleapis.com."""
        return layered(None, inventory=inventory, env=self.storage_endpoint)

    def inventory_cache_dir(self) -> Path | None:
        """Where the inventory memo lives (fleet/inventory/memo.py): FLEET_INVENTORY_CACHE, else
        $XDG_CACHE_HOME/compose-fleet/inventory, else ~/.cache/compose-fleet/inventory; None when the
        variable is `off`. A per-user cache, outside the project (never in git)."""
        if self.inventory_cache == "off":
            return None
        if self.inventory_cache:
            return Path(self.inventory_cache).expanduser()
        xdg = self.environ.get("XDG_CACHE_HOME", "")
        home = self.environ.get("HOME")
        # a relative XDG_CACHE_HOME is ignored (the XDG base directory rule)
        base = Path(xdg) if os.path.isabs(xdg) else (Path(home) if home else Path.home()) / ".cache"
        return base / "compose-fleet" / "inventory"

    def workers_for(self, hosts: int, inventory: int | None = None, flag: int | None = None) -> int:
        """--workers, else run.workers, else one per host up to MAX_WORKERS."""
        return layered(max(1, min(hosts, MAX_WORKERS)), inventory=inventory, flag=flag or None)

    def lock_ttl_for(self, inventory: float | None = None) -> float:
        """rollout.lock_ttl, else DEFAULT_LOCK_TTL."""
        return float(layered(DEFAULT_LOCK_TTL, inventory=inventory or None))


def load(environ: Mapping[str, str] | None = None) -> Settings:
    """Read the environment (or `environ`) once into a Settings."""
    env = MappingProxyType(dict(os.environ if environ is None else environ))
    journal = env.get(JOURNAL_ENV)
    return Settings(
        project_dir=PROJECT_ROOT,
        inventory=env.get(INVENTORY_ENV) or None,
        journal_dir=Path(journal) if journal else STATE_DIR / "journal",
        operator=env.get(OPERATOR_ENV) or "",
        compute_endpoint=env.get(COMPUTE_ENDPOINT_ENV) or None,
        monitoring_endpoint=env.get(MONITORING_ENDPOINT_ENV) or None,
        pubsub_endpoint=env.get(PUBSUB_ENDPOINT_ENV) or None,
        secretmanager_endpoint=env.get(SECRETMANAGER_ENDPOINT_ENV) or None,
        storage_endpoint=env.get(STORAGE_ENDPOINT_ENV) or None,
        metadata_host=env.get(METADATA_HOST_ENV) or None,
        inventory_cache=env.get(INVENTORY_CACHE_ENV) or None,
        environ=env,
    )
