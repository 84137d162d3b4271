"""Which roles a VM plays: the one rule shared by the operator's MIG inventory and the on-VM agent, so
both pick the same beat host (standard library only; below fleet.inventory in the layers)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

BEAT_ROLE = "beat"
BEAT_MODES = ("first", "none")


def natural_key(name: str) -> tuple[Any, ...]:
    """local-2 before local-10."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def beat_host(names: Iterable[str], mode: str | None) -> str | None:
    """`gce.beat: first`: the first member by name (stable across recreates, unlike the oldest)."""
    ordered = sorted(names, key=natural_key)
    return ordered[0] if mode == "first" and ordered else None


def variant_key(roles: Iterable[str]) -> str:
    """The store's key of a release variant: the sorted roles joined by "+" ("app", "app+beat")."""
    return "+".join(sorted(set(roles)))
