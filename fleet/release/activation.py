"""Preflight and activation of ONE release on ONE host: the steps a deploy runs on every host over SSH
and the on-VM agent (fleet/agent) runs on its own VM through a local executor, so both act the same.

Standard library only (the agent imports it): a host is anything meeting `hoststeps.HostContext`, a
release anything meeting `Activatable` (a rendered `bundle.Bundle` or the agent's unsealed release).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from fleet.commands import health
from fleet.commands import release as rc
from fleet.errors import FleetError
from fleet.release import hoststeps as ht
from fleet.release.hoststeps import HostContext


class Activatable(ht.StagedRelease, Protocol):
    """What preflight and activation need of a release."""

    @property
    def version(self) -> str: ...
    @property
    def disabled_services(self) -> Sequence[str]: ...

    def secret_values(self) -> tuple[str, ...]: ...


# --------------------------------------------------------------------------- preflight


def check_ready(ctx: HostContext) -> rc.HostState:
    """Read-only: Docker and Compose v2 usable, the layout exists, enough free disk. The host's state.
    One round trip (rc.ready_state): every host of a rollout or deploy runs it before the lock."""
    layout = ht.layout_of(ctx.host)
    need = ctx.host.settings.app.min_free_mb
    r = ctx.run(rc.ready_state(layout, need).shell())
    if r.exited in health.DOCKER_FAILED:
        ht.run_failed(
            ctx,
            health.DOCKER_PROBE,
            "docker",
            r,
            hint="run `fab bootstrap` to install and start Docker with Compose v2",
        )
    if r.exited == rc.DISK_SHORT:
        ht.run_failed(
            ctx,
            rc.require_free(layout, need),
            "disk",
            r,
            hint="free space on the host (old images: `docker image prune`), or lower the requirement",
        )
    if r.exited != 0:
        ht.run_failed(ctx, rc.host_state(layout), "state", r)
    try:
        state = rc.parse_host_state(r.stdout)
    except FleetError as exc:
        raise ht.StepError(ctx.host.name, "state", exc.what) from None
    if not state.exists:
        raise ht.StepError(
            ctx.host.name,
            "layout",
            f"{layout.root} does not exist",
            hint="run `fab bootstrap` on this host first",
        )
    return state


def preflight(ctx: HostContext, bundle: Activatable, pull_timeout: float | None = None) -> dict[str, Any]:
    """Make the host ready to switch to `bundle` without changing what runs. Returns what it found."""
    state = check_ready(ctx)
    sent = ht.stage(ctx, bundle)
    ht.check_and_pull(ctx, bundle, timeout=pull_timeout)
    return {"state": state, "bytes_sent": sent}


# --------------------------------------------------------------------------- activation


@dataclass
class DeployOutcome:
    host: str
    result: str  # deployed | unchanged | rolled-back | failed | not-started | unreachable
    from_release: str | None = None
    from_version: str | None = None
    to_release: str | None = None
    to_version: str | None = None
    bytes_sent: int = 0
    duration: float = 0.0
    error: str | None = None
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def activate(
    ctx: HostContext,
    bundle: Activatable,
    state: rc.HostState,
    *,
    operator: str,
    health_timeout: float,
    rollout_id: str | None = None,
    action: str = "deploy",
) -> DeployOutcome:
    """Switch and start `bundle`, verify, and go back to the previous release if it does not pass."""
    out = DeployOutcome(
        ctx.host.name, "deployed", state.current, state.version, bundle.release_id, bundle.version
    )
    secrets = bundle.secret_values()
    if state.current == bundle.release_id:
        verdict = ht.check(ctx, bundle.version, bundle.release_id, expect_drained=state.drained)
        if verdict.ok:
            out.result = "unchanged"
            return out
    ht.switch(ctx, bundle.release_id)
    ht.up(ctx, bundle.release_id, bundle.disabled_services, timeout=health_timeout + 60)
    verdict = ht.wait_healthy(
        ctx, bundle.version, bundle.release_id, timeout=health_timeout, expect_drained=state.drained
    )
    if verdict.ok:
        ht.record(
            ctx,
            rc.history_entry(
                action,
                "ok",
                operator=operator,
                release=bundle.release_id,
                version=bundle.version,
                rollout=rollout_id,
            ),
            secrets,
        )
        return out
    out.problems = verdict.problems
    ht.record(
        ctx,
        rc.history_entry(
            action,
            "failed",
            operator=operator,
            release=bundle.release_id,
            version=bundle.version,
            rollout=rollout_id,
            detail="; ".join(verdict.problems)[:500],
        ),
        secrets,
    )
    if state.current and state.current != bundle.release_id:
        restore(ctx, state, operator=operator, health_timeout=health_timeout, rollout_id=rollout_id)
        out.result = "rolled-back"
    else:
        out.result = "failed"
    out.error = "unhealthy after switch: " + "; ".join(verdict.problems)
    return out


def restore(
    ctx: HostContext,
    state: rc.HostState,
    *,
    operator: str,
    health_timeout: float,
    rollout_id: str | None = None,
) -> ht.Verdict:
    """Put the host back on `state.current` (the release it ran before) and verify it."""
    if state.current is None:
        raise FleetError("no previous release to go back to", where=ctx.host.name)
    record = state.record or {}
    ht.switch(ctx, state.current)
    ht.up(ctx, state.current, ht.disabled_services(record), timeout=health_timeout + 60)
    version = state.version or ""
    verdict = ht.wait_healthy(
        ctx,
        version,
        state.current,
        timeout=health_timeout,
        expect_drained=state.drained,
    )
    ht.record(
        ctx,
        rc.history_entry(
            "rollback",
            "ok" if verdict.ok else "failed",
            operator=operator,
            release=state.current,
            version=version or None,
            rollout=rollout_id,
            detail=None if verdict.ok else "; ".join(verdict.problems)[:500],
        ),
    )
    if not verdict.ok:
        raise ht.StepError(
            ctx.host.name,
            "rollback",
            f"previous release {state.current} is not healthy either: {'; '.join(verdict.problems)}",
            hint="inspect the host (`fab status`, `fab exec --cmd 'docker compose -p dify logs'`)",
        )
    return verdict
