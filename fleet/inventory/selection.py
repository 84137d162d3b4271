"""Host selection (`--hosts`, `--group`, `--where KEY=VALUE`) as Nornir filters over the FleetInventory.

One way in for the CLI and the rollout service (`choose`); unknown names are errors, not no-ops, and MIG
members that are not ready are left out (named on stderr) unless asked for.
"""

from __future__ import annotations

import functools
import operator
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from nornir.core.filter import F_BASE, F
from nornir.core.inventory import Host

from fleet.errors import FleetError, InventoryError
from fleet.inventory.loader import FleetHost, Inventory, load, partition, split_csv
from fleet.inventory.nornir_plugin import FleetInventory, fleet_host

NO_MATCH_HINT = "check --hosts/--group/--where; `fab hosts --inventory NAME` lists the hosts"


class Setting(F):
    """`--where KEY=VALUE` as a Nornir filter: KEY a host attribute, `groups`, or a dotted path into the
    merged data; VALUE compared as text, or as one member of a list (`roles=beat`)."""

    def __init__(self, key: str, value: str) -> None:
        super().__init__(**{key.replace(".", "__"): value})
        self.key = key
        self.value = value

    def __call__(self, host: Host) -> bool:
        fh = fleet_host(host)
        actual: Any
        if self.key in ("name", "hostname", "port", "username"):
            actual = getattr(fh, self.key)
        elif self.key == "groups":
            actual = list(fh.groups)
        else:
            actual = fh.get(self.key)
        if isinstance(actual, list):
            return self.value in [str(a) for a in actual]
        return actual is not None and str(actual) == self.value

    def __invert__(self) -> F:
        raise NotImplementedError("a --where filter is not negated (F's NOT would compare raw values)")


def selection_filter(
    inv: Inventory, hosts: Sequence[str] | None = None, group: str | None = None, where: Iterable[str] = ()
) -> F_BASE | None:
    """The Nornir filter for a selection (None: every host); unknown hosts or group are errors."""
    parts: list[F_BASE] = []
    if hosts:
        unknown = [h for h in hosts if h not in inv.hosts]
        if unknown:
            raise InventoryError(
                f"unknown host(s): {', '.join(unknown)}",
                where=f"inventory {inv.name}",
                hint=f"known hosts: {', '.join(inv.hosts)}",
            )
        parts.append(functools.reduce(operator.or_, [F(name=h) for h in dict.fromkeys(hosts)]))
    if group:
        if group not in inv.groups:
            raise InventoryError(
                f"unknown group {group!r}",
                where=f"inventory {inv.name}",
                hint=f"known groups: {', '.join(inv.groups) or 'none'}",
            )
        parts.append(F(has_parent_group=group))
    for expr in where:
        key, sep, value = expr.partition("=")
        if not sep or not key:
            raise InventoryError(
                f"--where {expr!r} is not KEY=VALUE", hint="e.g. --where gce.zone=europe-west1-b"
            )
        parts.append(Setting(key.strip(), value.strip()))
    return functools.reduce(operator.and_, parts) if parts else None


def select_hosts(
    inv: Inventory, hosts: Sequence[str] | None = None, group: str | None = None, where: Iterable[str] = ()
) -> list[FleetHost]:
    """Hosts matching every filter given, in inventory order. Unknown names are errors, not no-ops."""
    flt = selection_filter(inv, hosts=hosts, group=group, where=where)
    ninv = FleetInventory(inv).load()
    if flt is not None:
        ninv = ninv.filter(flt)  # type: ignore[arg-type]  # nornir types F.__call__ narrower than FilterObj
    return [fleet_host(h) for h in ninv.hosts.values()]


def select(
    inv: Inventory,
    hosts: Sequence[str] | None = None,
    group: str | None = None,
    where: Sequence[str] = (),
    include_unready: bool = False,
) -> list[FleetHost]:
    """Matching hosts; MIG members not RUNNING or under a MIG action are left out (named on stderr)
    unless `include_unready`."""
    chosen = select_hosts(inv, hosts=hosts, group=group, where=where)
    if include_unready:
        return chosen
    ready, skipped = partition(chosen)
    for host, reason in skipped:
        sys.stderr.write(f"skipped {host.name}: {reason}\n")
    return ready


def choose(
    inventory: str | None,
    hosts: str | None,
    group: str | None,
    where: Sequence[str] | None,
    *,
    include_unready: bool = False,
    hint: str = NO_MATCH_HINT,
    load_with: Callable[[str | None], Inventory] = load,
) -> tuple[Inventory, list[FleetHost]]:
    """Load inventory and select from the task options (`hosts` comma-separated); no match is an error.
    `load_with`: the loader (fleet.inventory.memo's for `fab exec`)."""
    inv = load_with(inventory)
    chosen = select(
        inv,
        hosts=split_csv(hosts) or None,
        group=group or None,
        where=list(where or ()),
        include_unready=include_unready,
    )
    if not chosen:
        raise FleetError("no host matches the selection", where=f"inventory {inv.name}", hint=hint)
    return inv, chosen
