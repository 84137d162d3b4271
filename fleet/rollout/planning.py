"""Planning and decisions, pure: options, batches, the plan, what a failure leads to, which release."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from fleet.commands import release as rc
from fleet.commands.base import q
from fleet.errors import FleetError
from fleet.rollout.model import BEAT_ROLE, DONE_RESULTS, ON_FAILURE, HostJob, HostOutcome, Plan, Release
from fleet.rollout.pacing import Timings, default_timings, failure_budget, make_batches, parse_batches

if TYPE_CHECKING:
    from fleet.inventory import FleetHost, Inventory


def new_rollout_id(action: str, now: datetime | None = None, suffix: str | None = None) -> str:
    """`ro-20261126-071330-3f9a` (rb- for a rollback, dp- for a deploy): sortable, a valid GCE label value."""
    import secrets

    moment = (now or datetime.now(UTC)).astimezone(UTC)
    prefix = {"rollback": "rb", "deploy": "dp"}.get(action, "ro")
    return f"{prefix}-{moment:%Y%m%d-%H%M%S}-{suffix or secrets.token_hex(2)}"


def beat_hosts(inv: Inventory) -> list[str]:
    return [h.name for h in inv.hosts.values() if BEAT_ROLE in (h.settings.roles or [])]


def check_beat_singleton(inv: Inventory) -> str | None:
    """worker_beat runs where roles contain `beat`: at most one host of the inventory may have it."""
    found = beat_hosts(inv)
    if len(found) > 1:
        raise FleetError(
            f"worker_beat is a singleton, but roles contain `beat` on {', '.join(found)}",
            where=f"inventory {inv.name}",
            hint="give the beat role to exactly one host",
        )
    return found[0] if found else None


def resolve_options(host: FleetHost, **given: Any) -> dict[str, Any]:
    """CLI values over the inventory's `rollout` section over built-in defaults; timings derived
    from the LB health check (fleet.rollout.pacing.default_timings). `None` = not given on the command
    line."""
    section = host.settings.rollout
    out: dict[str, Any] = {}
    for key in ("canary", "batch", "max_failures", "on_failure"):
        value = given.get(key)
        out[key] = value if value is not None else getattr(section, key)
    if out["on_failure"] not in ON_FAILURE:
        raise FleetError(f"invalid --on-failure {out['on_failure']!r}", hint=" | ".join(ON_FAILURE))
    base = default_timings(host.settings.lb, section)
    out["timings"] = Timings(
        drain_wait=float(given["drain_wait"]) if given.get("drain_wait") is not None else base.drain_wait,
        min_ready=float(given["min_ready"]) if given.get("min_ready") is not None else base.min_ready,
        health_timeout=float(given["health_timeout"])
        if given.get("health_timeout") is not None
        else base.health_timeout,
    )
    t = out["timings"]
    if t.drain_wait < 0 or t.min_ready < 0 or t.health_timeout <= 0:
        raise FleetError("waits must be >= 0 and --health-timeout > 0")
    return out


def make_plan(
    *,
    rollout_id: str,
    action: str,
    inventory: str,
    label: str,
    order: Sequence[str],
    sources: Mapping[str, Release | None],
    targets: Mapping[str, Release],
    drained: Mapping[str, bool],
    canary: int,
    batch: str | int,
    max_failures: str | int,
    on_failure: str,
    timings: Timings,
    operator: str,
    message: str = "",
    beat_host: str | None = None,
    previous: Mapping[str, str | None] | None = None,
) -> Plan:
    """Hosts already on their target (and not drained) are left out; the others are batched in
    inventory order, canary first."""
    steps = parse_batches(batch)

    def settled(h: str) -> bool:
        source = sources.get(h)
        return source is not None and source.id == targets[h].id and not drained.get(h)

    todo = [h for h in order if not settled(h)]
    unchanged = {h: targets[h] for h in order if h not in todo}
    batches = cap_batches(make_batches(todo, canary, steps), len(order))
    jobs = {}
    for index, names in enumerate(batches):
        for h in names:
            jobs[h] = HostJob(h, index, sources.get(h), targets[h], (previous or {}).get(h))
    return Plan(
        rollout_id=rollout_id,
        action=action,
        inventory=inventory,
        label=label,
        jobs=jobs,
        batches=batches,
        unchanged=unchanged,
        budget=failure_budget(max_failures, len(todo)) if todo else 0,
        on_failure=on_failure,
        timings=timings,
        operator=operator,
        message=message,
        beat_host=beat_host,
    )


def cap_batches(batches: list[list[str]], fleet_size: int) -> list[list[str]]:
    """Split batches so that one host of the fleet always stays in the LB: a batch that drains every
    host is an outage, whatever the batch size asked for (a one-host fleet cannot avoid it)."""
    cap = max(1, fleet_size - 1)
    out: list[list[str]] = []
    for batch in batches:
        out += [batch[i : i + cap] for i in range(0, len(batch), cap)]
    return out


def decide(failures: int, budget: int, on_failure: str) -> str | None:
    """After a batch: None = go on; else what to do now (rollback | pause)."""
    if failures <= budget or on_failure == "continue":
        return None
    return on_failure


def final_outcome(outcomes: Sequence[HostOutcome]) -> str:
    return "succeeded" if all(o.result in DONE_RESULTS for o in outcomes) else "failed"


def resume_command(inventory_arg: str, rollout_id: str, action: str) -> str:
    task = "rollback" if action == "rollback" else "rollout"
    return f"fab {task} --inventory {q(inventory_arg)} --resume --rollout-id {rollout_id}"


_RID_RE = re.compile(r"^[0-9a-f]{4,64}$")


def pick_release(releases: Sequence[rc.ReleaseDir], spec: str, where: str) -> str:
    """The staged release `spec` names: an id or id prefix, else the newest one of that version."""
    spec = spec.strip()
    if _RID_RE.fullmatch(spec):
        hits = [r.id for r in releases if r.id.startswith(spec)]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise FleetError(f"release prefix {spec!r} is ambiguous: {', '.join(hits)}", where=where)
    by_version = [r for r in releases if r.version == spec]
    if by_version:
        return by_version[0].id  # releases are newest first
    known = ", ".join(f"{r.version or '?'} ({r.id})" for r in releases) or "none"
    raise FleetError(
        f"no staged release matches {spec!r}", where=where, hint=f"staged releases here: {known}"
    )
