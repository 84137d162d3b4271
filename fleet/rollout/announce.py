"""What `fab` tells the fleet's events topic: a deploy, rollout or rollback started and how it ended.

Only when the inventory configures monitoring (`data.monitoring`: the project and its events topic,
the same topic the functions publish heal/scale results to and `notify` reads). No monitoring, no
events: plain SSH fleets behave as before.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from fleet import settings as fleet_settings

if TYPE_CHECKING:
    from fleet.gcp.events import EventPublisher
    from fleet.inventory import FleetHost, Inventory

# a run's outcome -> the event's result token (functions/fleet_contract: lowercase tokens)
RESULTS = {"succeeded": "done", "failed": "failed", "rolled-back": "rolled-back", "paused": "paused"}


def publisher_for(
    inv: Inventory, hosts: Sequence[FleetHost], warn: Callable[[str], None] | None = None
) -> EventPublisher | None:
    """The events topic of the selected hosts' fleet, or None when the inventory has no monitoring."""
    from fleet.gcp.events import EventPublisher

    chosen = list(hosts) or list(inv.hosts.values())
    if not chosen:
        return None
    first = chosen[0].settings
    monitoring = first.monitoring
    project = (monitoring.project if monitoring else None) or first.gce.project
    if monitoring is None or not project:
        return None
    migs = first.gce.migs
    mig = migs[0] if migs else {}
    return EventPublisher(
        project=project,
        topic=monitoring.events_topic,
        fleet=monitoring.fleet or inv.name,
        zone=str(mig.get("zone") or mig.get("region") or first.gce.zone or ""),
        mig=str(mig.get("name") or ""),
        endpoint=fleet_settings.load().pubsub_endpoint_for(monitoring.pubsub_endpoint),
        warn=warn or (lambda _text: None),
    )


def result_of(outcome: str | None) -> str:
    return RESULTS.get(outcome or "", outcome or "unknown")
