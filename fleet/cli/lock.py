"""`fab lock.status` and `fab lock.release`: the fleet lock in the Compute project's metadata
(fleet/rollout/lock.py), the one every rollout takes and the Cloud Functions respect."""

from __future__ import annotations

from typing import Any

from fabric import task

from fleet.cli.common import fleet_errors, select, task_help

SELECTION = ("inventory", "json")


@task(help=task_help(*SELECTION), name="status")
@fleet_errors
def status(c: Any, inventory: str | None = None, json_: bool = False) -> None:
    """Who holds the fleet lock: owner, reason, rollout id, created, expires (exit 0 either way)."""
    from fleet.rollout import lock as lk
    from fleet.view import console as ui
    from functions.fleet_contract import format_time

    inv, hosts = select(inventory, None, None, None)
    store = lk.for_inventory(inv, hosts)
    st = store.status()
    if json_:
        lock = st.lock
        ui.print_json(
            {
                "project": st.project,
                "held": st.held,
                "problem": st.problem,
                "lock": None
                if lock is None
                else {
                    "fleet": lock.fleet,
                    "owner": lock.owner,
                    "reason": lock.reason,
                    "rollout_id": lock.rollout_id,
                    "created": format_time(lock.created),
                    "expires": format_time(lock.expires),
                    "holder": lock.holder or None,
                },
            }
        )
        return
    if st.lock is None:
        print(
            f"the fleet lock is free (project {st.project})"
            + (f"; unreadable value: {st.problem}" if st.problem else "")
        )
    else:
        print(("LOCKED: " if st.held else "free (expired lock left behind): ") + lk.describe(st.lock))


@task(
    help=task_help(*SELECTION, force="remove the lock whoever holds it (make sure that rollout is dead)"),
    name="release",
)
@fleet_errors
def release(c: Any, inventory: str | None = None, json_: bool = False, force: bool = False) -> None:
    """Release the fleet lock if you hold it (the same user@machine); --force removes anyone's."""
    from fleet.rollout import lock as lk
    from fleet.view import console as ui

    inv, hosts = select(inventory, None, None, None)
    store = lk.for_inventory(inv, hosts)
    removed = store.release(owner=lk.operator(), force=force)
    if json_:
        ui.print_json({"released": removed is not None, "lock": lk.describe(removed) if removed else None})
    elif removed is None:
        print("the fleet lock was not held: nothing to release")
    else:
        print(f"released the lock {lk.describe(removed)}")
    if removed is not None and removed.owner != lk.operator():
        ui.error(
            f"forced: the lock belonged to {removed.owner}; a rollout still running stops at its next step"
        )
