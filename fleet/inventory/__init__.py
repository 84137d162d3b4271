"""Inventory: typed models with their defaults (schema), the YAML loader, MIG discovery (mig).

`from fleet.inventory import load, Inventory, FleetHost` is the way in; the modules are:
schema.py (pydantic sections), loader.py (files -> merged FleetHost per host, selection), mig.py
(hosts from managed instance groups).
"""

from fleet.inventory.loader import (
    ENV_VAR,
    FleetHost,
    Inventory,
    inventory_path,
    load,
    partition,
    select_hosts,
    skip_reason,
    split_csv,
)

__all__ = [
    "ENV_VAR",
    "FleetHost",
    "Inventory",
    "inventory_path",
    "load",
    "partition",
    "select_hosts",
    "skip_reason",
    "split_csv",
]
