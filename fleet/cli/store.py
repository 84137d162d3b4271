"""Release store tasks: what the fleet's desired release is (docs/release-store.md)."""

from __future__ import annotations

from typing import Any

from fabric import task

from fleet.cli.common import fleet_errors, task_help


def open_store(inventory: str | None) -> tuple[Any, Any]:
    """The inventory and its store; an inventory without `store:` is an error here."""
    from fleet.errors import FleetError
    from fleet.inventory import load
    from fleet.store import location

    inv = load(inventory)
    store = location.from_inventory(inv)
    if store is None:
        raise FleetError(
            "the inventory has no release store",
            where=f"inventory {inv.name}",
            hint="add `store: {url: gs://BUCKET/fleets/<fleet>}` under data in defaults.yaml; "
            "see docs/release-store.md",
        )
    return inv, store


@task(help=task_help("inventory", "json"))
@fleet_errors
def show(c: Any, inventory: str | None = None, json_: bool = False) -> None:
    """The fleet's desired release in the store: what every new VM boots into.

    Version, release id per role variant, who published it, when and by which action, and the release
    it replaced. It moves only when a deploy, rollout or rollback has succeeded.
    """
    from fleet.store import desired
    from fleet.view import console as ui

    _, store = open_store(inventory)
    now, generation = desired.read(store)
    if json_:
        ui.print_json(
            {"store": store.url, "generation": generation, "desired": now.to_json() if now else None}
        )
        return
    if now is None:
        print(f"{store.url}: no desired release yet (the first deploy or rollout publishes one)")
        return
    previous = now.previous or {}
    rows = [
        ["store", store.url],
        ["version", now.version],
        *[[f"release {key}", rid] for key, rid in sorted(now.variants.items())],
        ["published by", now.published_by],
        ["published at", now.published_at],
        ["action", now.action + (f" ({now.rollout_id})" if now.rollout_id else "")],
        ["previous", previous.get("version") or "-"],
        *[[f"previous {k}", v] for k, v in sorted((previous.get("variants") or {}).items())],
    ]
    ui.table("desired release", ["field", "value"], rows)
