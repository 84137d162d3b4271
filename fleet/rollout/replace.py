"""`--strategy replace`: each batch's instances are recreated by the MIG from the release's instance
template, judged by the same gates, through the engine's batch loop, budget and fleet rollback.

Per batch: the MIG's template becomes the target release's template (content-addressed, made from
the base template at staging), then one `applyUpdatesToInstances` recreates the batch's instances in
place (same names, so the plan, the journal and `--resume` speak of the same hosts). Each host then
passes when the MIG shows it RUNNING its new version with no action left, the agent reports the
target release in its guest attributes, and the load balancer's backend service says HEALTHY; then
min-ready (once for the batch), and it must still be HEALTHY. A host that fails is recreated from
its source release's template (`rolled-back`, counted against the budget); past the budget the
engine's fleet rollback puts every updated host back the same way, newest batch first, and the
MIG's template with them.

The policy set on the MIG (OPPORTUNISTIC, RECREATE, maxSurge 0, maxUnavailable = the batch size)
keeps the MIG from moving on its own while new VMs (autohealing, a resize) use the new template.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from fleet.errors import FleetError
from fleet.gcp import migupdate as mu
from fleet.rollout.engine import Engine, _text
from fleet.rollout.model import HostFailed, HostOutcome, Interrupted, Release, Report
from fleet.ssh.runner import HostResult

BAD_RESULTS = ("failed",)


class Replace(Engine):
    """The batch loop of `Engine`; each batch recreated by the MIG from the release's template."""

    def __init__(
        self,
        ops: Any,
        plan: Any,
        *,
        move: mu.MigMove,
        base_template: str,
        prepare: Callable[[], Sequence[str]] | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(ops, plan, **kw)
        self.move = move
        self.base_template = base_template
        # before any template is made: what the VMs will boot is in the release store (the ids uploaded)
        self.prepare = prepare
        self.view = mu.GroupView(move)
        self._templates: dict[str, str] = {}
        self._tlock = threading.Lock()
        self._policy_set = False
        self._mig_template: str | None = None  # what this run last set the MIG's template to

    # ------------------------------------------------------------------ templates

    def instance(self, name: str) -> str:
        """The GCE instance name of an inventory host."""
        gce = getattr(getattr(self.ops.host(name), "settings", None), "gce", None)
        return str(getattr(gce, "instance", None) or name)

    def template_for(self, release: Release) -> str:
        with self._tlock:
            if release.id not in self._templates:
                name, _, created = self.move.release_template(self.base_template, release.id, release.version)
                self._templates[release.id] = name
                self.emit(
                    "template", release=release.id, version=release.version, template=name, created=created
                )
            return self._templates[release.id]

    def lb_state(self, name: str) -> str:
        """HEALTHY when the load balancer sends the host's instance traffic: the backend service's
        getHealth (lb.kind gcp), else the inventory's own LB (haproxy: UP, no transition under way),
        else HEALTHY (lb.kind none: the agent's report decides alone)."""
        if self.move.backend_service:
            return self.view.lb_state(self.instance(name))
        lb = self._lb(name)
        if getattr(lb, "kind", "none") != "haproxy":
            return "HEALTHY"
        seen = lb.look(self._host(name))
        if seen is None:
            return "UNKNOWN (not a server of the LB)"
        return "HEALTHY" if seen.serving and seen.steady else f"UNHEALTHY ({seen.raw})"

    # ------------------------------------------------------------------ the MIG's own template

    def run(self, *, stage: bool = True, phase: str = "forward", revert_hosts: Sequence[str] = ()) -> Report:
        """The engine's run; then the MIG's template is the one a VM it creates should boot: the
        target's when the rollout succeeded, the source's when it was rolled back."""
        report = super().run(stage=stage, phase=phase, revert_hosts=revert_hosts)
        if report.outcome in ("succeeded", "rolled-back"):
            self._settle_template("target" if report.outcome == "succeeded" else "source")
        return report

    def fleet_release(self, side: str) -> Release | None:
        """The release the MIG's new VMs should boot on `side` (target or source) of the plan: the
        one most hosts have among the releases without worker_beat (the beat host's release runs the
        singleton, and the MIG's template is what autohealing and resizes create VMs from)."""
        releases = [r for j in self.plan.jobs.values() if (r := getattr(j, side)) is not None]
        pool = [r for r in releases if not r.runs_beat] or releases
        if not pool:
            return None
        top = Counter(r.id for r in pool).most_common(1)[0][0]
        return next(r for r in pool if r.id == top)

    def _settle_template(self, side: str) -> None:
        """A batch sets the MIG's template to its hosts' release (the beat host's own, when it is the
        last one recreated, e.g. a canary put back): put the fleet's release back on the MIG."""
        release = self.fleet_release(side)
        if release is None:
            return
        try:
            template = self.template_for(release)
            if (self._mig_template or self.move.current_template()) != template:
                self.move.set_template(template)
                self._mig_template = template
                self.emit("mig", step="settle", template=template, hosts=[])
        except FleetError as exc:
            self.problems.append(f"the MIG's template was left as it was: {_text(exc)}")

    # ------------------------------------------------------------------ stage

    def _stage(self, names: Sequence[str]) -> bool:
        if self.prepare is not None:
            try:
                uploaded = self.prepare()
            except FleetError as exc:
                for n in names:
                    self.outcomes[n].result, self.outcomes[n].error = "failed", _text(exc)
                self.emit("stage", status="failed", failed=list(names), error=_text(exc))
                self.problems.append(f"staging failed: nothing was replaced: {_text(exc)}")
                return False
            self.emit("store", uploaded=list(uploaded))
        return super()._stage(names)

    def stage_host(self, name: str) -> HostResult:
        """The target's template exists (and the source's: the way back), and the host is a member."""
        job = self.plan.jobs[name]
        out = self.outcomes[name]
        with self.step(out, "stage"):
            self.template_for(job.target)
            if job.source is not None:
                self.template_for(job.source)
            if self.view.member(self.instance(name)) is None:
                raise FleetError(
                    f"{self.instance(name)} is not a member of {self.move.mig}",
                    where=name,
                    hint="--strategy replace rolls out the instances of the inventory's MIG",
                )
        return HostResult(name, "ok")

    # ------------------------------------------------------------------ one batch

    def _recreate(self, names: Sequence[str], release_of: Any, step: str) -> dict[str, str]:
        """Set the MIG's template per release and recreate `names` from it; {host: error} for the
        hosts whose Compute calls failed."""
        if not self._policy_set:
            size = max(len(b) for b in self.plan.batches) if self.plan.batches else 1
            self.move.set_policy(mu.replace_policy(size, self.move.zones()))
            self._policy_set = True
        groups: dict[str, list[str]] = {}
        for n in names:
            groups.setdefault(self.template_for(release_of(n)), []).append(n)
        errors: dict[str, str] = {}
        for template, hosts in groups.items():
            try:
                self.move.set_template(template)
                self._mig_template = template
                self.view.refresh(force=True)
                members = [m for h in hosts if (m := self.view.member(self.instance(h))) is not None]
                self.move.apply([m for m in members if m.template != template])
                self.emit("mig", step=step, template=template, hosts=hosts)
            except FleetError as exc:
                for h in hosts:
                    errors[h] = _text(exc)
        return errors

    def forward_batch(self, names: Sequence[str]) -> list[HostResult]:
        errors = self._recreate(names, lambda n: self.plan.jobs[n].target, "forward")
        for n, error in errors.items():
            self.outcomes[n].result, self.outcomes[n].error = "failed", error
        moved = [n for n in names if n not in errors]
        self._on(moved, self.forward_host)
        self._soak_batch([n for n in moved if self.outcomes[n].result == "replaced"], "updated")
        failed = [n for n in moved if self.outcomes[n].result == "failed"]
        bounce = [n for n in failed if self.plan.jobs[n].source is not None]
        if bounce and not self.stop.is_set():
            self._bounce(bounce)
        return [HostResult(n, "ok", data={"outcome": self.outcomes[n]}) for n in names]

    def _bounce(self, names: Sequence[str]) -> None:
        """Failed hosts back to their source release's template (`rolled-back`, or still `failed`)."""
        errors = self._recreate(names, lambda n: self.plan.jobs[n].source, "bounce")

        def back(name: str) -> HostResult:
            out = self.outcomes[name]
            source = self.plan.jobs[name].source
            assert source is not None
            if name in errors:
                out.problems.append(f"could not go back: {errors[name]}")
                return HostResult(name, "ok", data={"outcome": out})
            try:
                with self.step(out, "bounce"):
                    self._await(name, self.template_for(source), source)
                out.result = "rolled-back"
            except (FleetError, Interrupted) as exc:
                out.problems.append(f"could not go back: {_text(exc)}")
            return HostResult(name, "ok", data={"outcome": out})

        self._on(names, back)

    def revert_batch(self, names: Sequence[str]) -> list[HostResult]:
        missing = [n for n in names if self.plan.jobs[n].source is None]
        for n in missing:
            self.outcomes[n].problems.append("no previous release to go back to: left on the new one")
            self.outcomes[n].result = "failed"
        todo = [n for n in names if n not in missing]
        errors = self._recreate(todo, lambda n: self.plan.jobs[n].source, "rollback")
        for n, error in errors.items():
            self.outcomes[n].result, self.outcomes[n].error = "failed", error
        moved = [n for n in todo if n not in errors]
        self._on(moved, self.revert_host)
        self._soak_batch([n for n in moved if self.outcomes[n].result == "replaced"], "reverted")
        return [HostResult(n, "ok", data={"outcome": self.outcomes[n]}) for n in names]

    # ------------------------------------------------------------------ one host

    def forward_host(self, name: str) -> HostResult:
        job = self.plan.jobs[name]
        out = self.outcomes[name]
        started = time.monotonic()
        self._gate(name, out, self.template_for(job.target), job.target)
        out.duration = time.monotonic() - started
        return HostResult(name, "ok", data={"outcome": out})

    def revert_host(self, name: str) -> HostResult:
        job = self.plan.jobs[name]
        out = self.outcomes[name]
        assert job.source is not None
        started = time.monotonic()
        probe = HostOutcome(out.host, out.batch)
        self._gate(name, probe, self.template_for(job.source), job.source)
        out.steps.update({f"revert-{k}": v for k, v in probe.steps.items()})
        out.problems += probe.problems
        out.result = probe.result
        if probe.error:
            out.error = probe.error
        out.duration += time.monotonic() - started
        return HostResult(name, "ok", data={"outcome": out})

    def _soak_batch(self, names: Sequence[str], result: str) -> None:
        """min-ready once for the batch (its hosts came up together), then each must still be HEALTHY."""
        if not names:
            return
        self.move.sleep(self.plan.timings.min_ready)
        self.view.refresh(force=True)

        def check(name: str) -> HostResult:
            out = self.outcomes[name]
            try:
                with self.step(out, "soak"):
                    state = self.lb_state(name)
                    if state != "HEALTHY":
                        raise HostFailed(name, "soak", f"the load balancer says {state} after min-ready")
                out.result = result
            except FleetError as exc:
                out.result, out.error = "failed", _text(exc)
            return HostResult(name, "ok", data={"outcome": out})

        self._on(names, check)

    def _gate(self, name: str, out: HostOutcome, template: str, release: Release) -> None:
        """Wait for the host's new VM; `replaced` (the batch's min-ready soak decides) or why not."""
        try:
            with self.step(out, "replace"):
                self._await(name, template, release)
            out.result = "replaced"
        except Interrupted:
            out.result = "interrupted"
        except FleetError as exc:
            out.result = "failed"
            out.error = _text(exc)

    def _await(self, name: str, template: str, release: Release) -> None:
        """Until the instance runs `template` with nothing left to do, the agent reports `release`,
        and the LB says HEALTHY; HostFailed when the agent reports a failure or time is up."""
        instance = self.instance(name)
        deadline = self.move.clock() + self.plan.timings.health_timeout
        reported: dict[str, str] = {}
        while True:
            if self.stop.is_set():
                raise Interrupted()
            m = self.view.member(instance)
            if m is not None and m.template == template and m.action == "NONE" and m.status == "RUNNING":
                if reported.get("release") != release.id:
                    reported = self.view.release_of(m)
                    if reported.get("result") in BAD_RESULTS and reported.get("release") != release.id:
                        error = reported.get("error", "")
                        raise HostFailed(name, "replace", f"the agent failed to boot {release.id}: {error}")
                if reported.get("release") == release.id:
                    if reported.get("health") == "failed" and reported.get("result") in BAD_RESULTS:
                        raise HostFailed(name, "replace", f"the agent reports release {release.id} unhealthy")
                    if self.lb_state(name) == "HEALTHY":
                        return
            if self.move.clock() >= deadline:
                raise HostFailed(name, "replace", self._why(name, instance, m, template, release, reported))
            self.move.sleep(self.move.poll)

    def _why(
        self,
        name: str,
        instance: str,
        m: mu.Member | None,
        template: str,
        release: Release,
        reported: dict[str, str],
    ) -> str:
        limit = f"after {self.plan.timings.health_timeout:.0f}s"
        if m is None:
            return f"{instance} is no longer a member of {self.move.mig} ({limit})"
        if m.template != template or m.action != "NONE":
            return f"{instance} still on {m.template}, {m.action} {m.status} ({limit})"
        if reported.get("release") != release.id:
            return (
                f"the agent reports release {reported.get('release') or 'none'}, not {release.id} ({limit})"
            )
        return f"the load balancer says {self.lb_state(name)}, not HEALTHY ({limit})"


def preview(move: mu.MigMove, base: str, target: Release, batch: int) -> dict[str, Any]:
    """What `--dry-run` shows for a replace rollout: the template it would use (and whether it exists),
    the metadata diff against the MIG's template now, and the update policy it would set."""
    found = move.template(base)
    if found is None:
        raise FleetError(f"base instance template {base} does not exist", where=str(move.mig))
    props = mu.release_properties(found, target.id, target.version)
    name = mu.template_name(base, props)
    current = move.current_template()
    now = move.template(current) or {}
    return {
        "mig": str(move.mig),
        "template": name,
        "exists": move.template(name) is not None,
        "current": current,
        "diff": mu.metadata_diff(now, {"properties": props}),
        "update_policy": mu.replace_policy(batch, move.zones()),
    }


def for_hosts(hosts: Sequence[Any], compute: Any) -> mu.MigMove:
    """The MIG move of a replace rollout over `hosts`: their one MIG (gce.migs), the LB's backend
    service when lb.kind is gcp (else the guest attributes are the only gate), polled at the LB's
    check interval."""
    from fleet.gcp.compute import mig_ref

    refs = {str(mig_ref(m)): mig_ref(m) for h in hosts for m in h.settings.gce.migs if isinstance(m, dict)}
    if len(refs) != 1:
        raise FleetError(
            f"--strategy replace needs the hosts of exactly one MIG; gce.migs names {len(refs)}",
            hint="set gce.migs to the MIG, or select its hosts (--group/--hosts)",
        )
    lb = hosts[0].settings.lb
    backend = lb.backend if lb.kind == "gcp" and lb.backend else ""
    return mu.MigMove(compute, next(iter(refs.values())), backend, poll=max(0.5, float(lb.check_interval)))


def engine_for(
    move: mu.MigMove,
    base_template: str | None = None,
    prepare: Callable[[], Sequence[str]] | None = None,
) -> Any:
    """What `fleet.rollout.run.Run.strategy` takes: builds a Replace engine for this MIG (`prepare`:
    see `Replace`)."""

    def build(ops: Any, plan: Any, **kw: Any) -> Replace:
        base = base_template or move.base_template()
        return Replace(ops, plan, move=move, base_template=base, prepare=prepare, **kw)

    return build
