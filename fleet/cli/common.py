"""What every fab task shares: host selection options, error handling and exit codes."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
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


def fleet_errors(fn: F) -> F:
    """Turn a FleetError into a clear message and exit code 2 instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
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
    inventory: str | None, hosts: str | None, group: str | None, where: Sequence[str] | None
) -> tuple[Inventory, list[FleetHost]]:
    """The task's inventory and hosts: fleet.inventory.choose, the one selection the services use too."""
    from fleet.inventory import choose

    return choose(inventory, hosts, group, where)
