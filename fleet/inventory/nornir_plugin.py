"""The fleet inventory as a Nornir inventory plugin: one host model, Nornir's Inventory built from the loader.

`InitNornir(inventory={"plugin": PLUGIN_NAME, "options": {"inventory": inv}})` builds Nornir's hosts,
groups and defaults from an already loaded and validated `fleet.inventory.Inventory`. Each Nornir host
is a `FleetNornirHost` that carries its `FleetHost` (`fleet_host(h)`) and shares its merged data dict:
the two are views of one host, never copies that could drift apart.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from nornir.core.inventory import (
    ConnectionOptions,
    Defaults,
    Group,
    Groups,
    Host,
    Hosts,
    ParentGroups,
)
from nornir.core.inventory import Inventory as NornirInventory
from nornir.core.plugins.inventory import InventoryPluginRegister

if TYPE_CHECKING:
    from fleet.inventory.loader import FleetHost, Inventory

PLUGIN_NAME = "FleetInventory"

ConnectionOptionsFn = Callable[["FleetHost"], Mapping[str, ConnectionOptions]]


class FleetNornirHost(Host):
    """A Nornir host that is the fleet's host: `fleet` is the merged `FleetHost`, `data` its very dict."""

    __slots__ = ("fleet",)

    def __init__(self, fleet: FleetHost, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fleet = fleet


def fleet_host(host: Host) -> FleetHost:
    """The `FleetHost` behind a Nornir host built by this plugin."""
    if not isinstance(host, FleetNornirHost):
        raise TypeError(f"{host.name} is not a fleet host (built by the {PLUGIN_NAME} inventory plugin)")
    return host.fleet


class FleetInventory:
    """Nornir inventory plugin over a loaded fleet inventory.

    `hosts` are the FleetHosts it holds, in that order (default: every host of the inventory);
    `connection_options` gives each host its connection parameters (the SSH layer passes them; the
    inventory knows no SSH).
    """

    def __init__(
        self,
        inventory: Inventory,
        hosts: Sequence[FleetHost] | None = None,
        connection_options: ConnectionOptionsFn | None = None,
    ) -> None:
        self.inventory = inventory
        self.hosts = hosts
        self.connection_options = connection_options

    def load(self) -> NornirInventory:
        inv = self.inventory
        defaults = Defaults(data=dict(inv.defaults.get("data", {})))
        groups = Groups(
            {name: Group(name=name, data=spec.get("data", {})) for name, spec in inv.groups.items()}
        )
        for name, spec in inv.groups.items():  # parents after all groups exist
            groups[name].groups = ParentGroups([groups[p] for p in spec.get("groups", []) if p in groups])
            groups[name].defaults = defaults
        hosts = Hosts()
        for fh in inv.hosts.values() if self.hosts is None else self.hosts:
            options = dict(self.connection_options(fh)) if self.connection_options else {}
            hosts[fh.name] = FleetNornirHost(
                fh,
                name=fh.name,
                hostname=fh.hostname,
                port=fh.port,
                username=fh.username,
                # the whole chain, nearest first: Nornir resolves data in this order, like the loader
                groups=ParentGroups([groups[g] for g in fh.groups if g in groups]),
                data=fh.data,  # the same dict: already merged host -> groups -> defaults
                connection_options=options,
                defaults=defaults,
            )
        return NornirInventory(hosts=hosts, groups=groups, defaults=defaults)


def register() -> None:
    """Make PLUGIN_NAME known to Nornir (idempotent)."""
    if PLUGIN_NAME not in InventoryPluginRegister.available:
        InventoryPluginRegister.register(PLUGIN_NAME, FleetInventory)
