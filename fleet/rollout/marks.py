"""The rollout label on instances under work, so that autoheal leaves them alone."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fleet.gcp.compute import Compute
    from fleet.inventory import FleetHost


class Marks:
    """The rollout label on each instance under work (functions.fleet_contract.ROLLOUT_LABEL)."""

    def __init__(self, compute: Compute | None) -> None:
        self.compute = compute

    @staticmethod
    def where(host: FleetHost) -> tuple[str, str, str] | None:
        gce = host.settings.gce
        project, zone, name = gce.project, gce.zone, gce.instance
        return (project, zone, name) if project and zone and name else None

    def set(self, host: FleetHost, rollout_id: str | None) -> bool:
        from functions.fleet_contract import ROLLOUT_LABEL

        loc = self.where(host)
        if self.compute is None or loc is None:
            return False
        self.compute.set_label(*loc, ROLLOUT_LABEL, rollout_id)
        return True
