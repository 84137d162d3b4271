"""Inventory: typed models with their defaults (schema), the YAML loader, MIG discovery (mig).

`from fleet.inventory import load, Inventory, FleetHost` is the way in; the modules are:
schema.py (pydantic sections), loader.py (files -> merged FleetHost per host), mig.py (hosts from
managed instance groups), nornir_plugin.py (the same hosts as a Nornir inventory plugin), selection.py
(--hosts/--group/--where as Nornir filters).
"""

from fleet.inventory.loader import (
    ENV_VAR,
    FleetHost,
    Inventory,
    inventory_path,
    load,
    partition,
    skip_reason,
    split_csv,
)
from fleet.inventory.selection import choose, select, select_hosts

__all__ = [
    "ENV_VAR",
    "FleetHost",
    "Inventory",
    "choose",
    "inventory_path",
    "load",
    "partition",
    "select",
    "select_hosts",
    "skip_reason",
    "split_csv",
]
