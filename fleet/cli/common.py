"""What every fab task shares: host selection options, error handling and exit codes."""

from __future__ import annotations

import functools
import gc
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from invoke.exceptions import Exit

from fleet.errors import FleetError

if TYPE_CHECKING:
    from fleet.inventory import FleetHost, Inventory

F = TypeVar("F", bound=Callable[..., Any])

EXIT_FAILED = 1  # some host failed or was unreachable
EXIT_USAGE = 2  # bad input: inventory, options, host setup
EXIT_WOULD_CHANGE = 3  # a dry run found something to change (bootstrap --dry-run)

SELECT_HELP = {
    "inventory": "inventory name under inventory/ or a directory (default: $FLEET_INVENTORY)",
    "hosts": "comma-separated host names",
    "group": "only hosts in this group",
    "where": "KEY=VALUE filter on host settings (dotted path, e.g. gce.zone=europe-west1-b); repeatable",
    "json": "print machine-readable JSON on stdout",
    "workers": "parallel hosts at most (default: number of hosts, up to 100)",
}


def task_help(*names: str, **extra: str) -> dict[str, str]:
    """Help texts for the shared options a task takes, plus its own."""
    return {**{n: SELECT_HELP[n] for n in names}, **extra}


def end_startup() -> None:
    """Turn the cyclic garbage collector back on: the entry points (fabfile.py, fleet/cli/program.py) turn
    it off while they import and parse, the task itself runs with it.

    Start-up allocates a few hundred thousand objects that all stay alive (modules, classes, Fabric's
    parser, pydantic's schemas), and every collection walks them for nothing (issue 17's profile: ~80 ms
    of a `fab exec` start's CPU). They go to the permanent generation (gc.freeze), so no later collection
    walks them again."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


_loaded_once = False


@contextmanager
def startup_gc() -> Iterator[None]:
    """Loading the inventory (pydantic, its schemas, the hosts: objects that stay alive) with the
    collector off; the first time in a process what it made is then frozen (as in end_startup), so the
    first collections of the task do not walk it."""
    global _loaded_once
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if not _loaded_once:
            _loaded_once = True
            gc.freeze()
        if enabled:
            gc.enable()


def fleet_errors(fn: F) -> F:
    """Turn a FleetError into a clear message and exit code 2 instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        end_startup()
        try:
            return fn(*args, **kwargs)
        except FleetError as exc:
            from fleet.view import console as ui

            ui.error(exc.render())
            raise Exit(code=EXIT_USAGE) from None
        except KeyboardInterrupt:
            sys.stderr.write("interrupted\n")
            raise Exit(code=130) from None

    return wrapper  # type: ignore[return-value]


def select(
    inventory: str | None,
    hosts: str | None,
    group: str | None,
    where: Sequence[str] | None,
    *,
    memo: bool = False,
) -> tuple[Inventory, list[FleetHost]]:
    """The task's inventory and hosts: fleet.inventory.choose, the one selection the services use too.

    `memo`: the inventory from its memo when unchanged (fleet/inventory/memo.py), for a task that only
    connects and runs commands (its hosts' typed settings are then built only if read)."""
    with startup_gc():
        from fleet.inventory import choose

        if not memo:
            return choose(inventory, hosts, group, where)
        from fleet.inventory import memo as inventory_memo
        from fleet.ssh.connection import memo_connections

        return choose(
            inventory,
            hosts,
            group,
            where,
            load_with=functools.partial(inventory_memo.load, derive=memo_connections),
        )
