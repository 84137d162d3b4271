"""The local fleet: "VMs" as containers (sshd + their own Docker engine), stand-in images, a registry
and a health-checking haproxy, so every deploy/rollout/healing path can run on one machine.

Names are imported lazily: `fleet.local.<module>` stays cheap to import for other modules here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fleet.local.config import LocalConfig
    from fleet.local.instances import Instance, LocalFleet

__all__ = ["Instance", "LocalConfig", "LocalFleet"]


def __getattr__(name: str) -> Any:
    if name in ("LocalFleet", "Instance"):
        from fleet.local import instances

        return getattr(instances, name)
    if name == "LocalConfig":
        from fleet.local.config import LocalConfig

        return LocalConfig
    raise AttributeError(name)
