"""Updating hosts in place over their own connection: the per-host state machine of fleet.rollout.

drain -> LB out -> switch -> up -> verify while drained -> undrain -> serve -> LB in -> soak -> record,
and back to the source release (`bounce`) when a gate fails after the switch. Everything it does to a
host goes through HostOps. A strategy that replaces instances through the MIG instead subclasses
`Engine` the same way; the batch loop does not change.
"""

from __future__ import annotations

import time
from contextlib import suppress

from fleet.commands import release as rc
from fleet.errors import FleetError
from fleet.release import hoststeps as ht
from fleet.rollout.engine import POLL, SERVE_TIMEOUT, Engine, _text
from fleet.rollout.model import HostFailed, HostOutcome, Interrupted, Release
from fleet.ssh.runner import HostResult
from fleet.waits import polling


class InPlace(Engine):
    """The batch loop of `Engine`, each host updated in place: switch `current`, `compose up`."""

    # ------------------------------------------------------------------ stage one host

    def stage_host(self, name: str) -> HostResult:
        """Read the state under the lock, make sure the target is staged and valid, pull its images."""
        job = self.plan.jobs[name]
        bundle = self.bundles.get(name)
        out = self.outcomes[name]
        layout = self.ops.layout(name)
        with self.step(out, "stage"):
            state = self.ops.read_state(name)  # under the lock: what the host really runs now
            if not state.exists:
                raise ht.StepError(
                    name,
                    "layout",
                    f"{layout.root} does not exist",
                    hint="run `fab bootstrap` on this host first",
                )
            self._staged_state[name] = state
            self._unchanged_since_plan(name)
            if bundle is not None and bundle.release_id == job.target.id:
                self.ops.stage(name, bundle)  # uploads only when the host lacks the release
            else:
                present = self.ops.release_present(name, job.target.id)
                if not present:
                    raise ht.StepError(
                        name,
                        "stage",
                        f"release {job.target.id} is not staged here any more",
                        hint="start a new rollout with --version (it re-renders and uploads)",
                    )
            self.ops.compose_check(name, job.target.id)
        with self.step(out, "pull"):  # timed on its own: Docker's time, not the engine's
            self.ops.pull(name, job.target.id)
        return HostResult(name, "ok")

    def _unchanged_since_plan(self, host: str) -> None:
        """A first run plans from states read before the lock: if a host changed meanwhile (another
        rollout finished in between), its planned way back is wrong. Stop before anything switches."""
        if self.resumed:
            return
        state = self._staged_state.get(host)
        source = self.plan.jobs[host].source
        if state is not None and state.current != (source.id if source else None):
            raise FleetError(
                f"now runs {state.current or 'nothing'}, planned from {source.id if source else 'nothing'}",
                where=host,
                hint="the fleet changed between plan and lock (another rollout?): run the command again",
            )

    # ------------------------------------------------------------------ one host forward

    def forward_host(self, name: str) -> HostResult:
        job = self.plan.jobs[name]
        out = self.outcomes[name]
        started = time.monotonic()
        self._move(
            name, out, job.target, job.source, action=self.plan.action, bounce=True, previous=job.previous
        )
        out.duration = time.monotonic() - started
        return HostResult(name, "ok", data={"outcome": out})

    def revert_host(self, name: str) -> HostResult:
        job = self.plan.jobs[name]
        out = self.outcomes[name]
        started = time.monotonic()
        if job.source is None:
            out.problems.append("no previous release to go back to: left on the new one")
            out.result = "failed"
        else:
            probe = HostOutcome(out.host, out.batch)
            self._move(name, probe, job.source, None, action="rollback", bounce=False)
            out.steps.update({f"revert-{k}": v for k, v in probe.steps.items()})
            out.problems += probe.problems
            out.drained = probe.drained
            if probe.result in ("updated", "unchanged"):
                out.result = "reverted"
                self._restore_previous(name, out, job.previous)
            else:
                out.result = probe.result
                out.error = probe.error
        out.duration += time.monotonic() - started
        return HostResult(name, "ok", data={"outcome": out})

    def _move(
        self,
        name: str,
        out: HostOutcome,
        target: Release,
        source: Release | None,
        *,
        action: str,
        bounce: bool,
        previous: str | None = None,
    ) -> None:
        """Take one host to `target` through every gate; on failure back to `source` when `bounce`
        (and its `previous` link back to `previous`)."""
        host = self.ops.host(name)
        drained = False
        switched = False
        marked = False
        premark = self._premarks.pop(host.name, None)
        try:
            with self.step(out, "state"):
                # read while staging moments ago (under our lock nothing else changes it), else now
                state = self._staged_state.pop(host.name, None) or self.ops.read_state(name)
            drained = state.drained
            if state.current == target.id and not state.drained:
                verdict = self.ops.check(name, target.version, target.id)
                if verdict.ok:
                    if out.host in self.touched:  # a killed or interrupted run of this rollout got it there
                        self._reconcile_record(name, state, target, action)
                        out.result = "updated"
                    else:
                        out.result = "unchanged"
                    return
            if self.stopping():
                raise Interrupted
            with self.step(out, "mark"):
                # usually set while the previous batch ran: only waited for here
                marked = (
                    premark.result() if premark is not None else self.marks.set(host, self.plan.rollout_id)
                )
                premark = None
            with self.step(out, "drain"):
                self.ops.drain(name)
                drained = True
            with self.step(out, "lb-out"):
                self.lb_for(host).wait_out(host, self.plan.timings.drain_wait)
            if self.stopping():
                raise Interrupted
            with self.step(out, "switch"):
                self.ops.switch_when_idle(name, target.id)
                # from here a failure means going back (also when a killed run had switched already)
                switched = source is not None and source.id != target.id
            with self.step(out, "up"):
                self.ops.up(name, target.id, target.disabled, timeout=self.plan.timings.health_timeout + 120)
            with self.step(out, "verify"):
                self._verified(name, target, drained=True)
            with self.step(out, "undrain"):
                first = self._undrain_and_probe(name, target)
                drained = False
            try:
                with self.step(out, "serve"):
                    if first is not None:
                        self._serving(name, target)
                with self.step(out, "lb-in"):
                    self.lb_for(host).wait_in(host, self.plan.timings.health_timeout)
                with self.step(out, "soak"):
                    self._soak(name, target)
            except FleetError as exc:
                # traffic may have reached it: take it out again before going back
                self.ops.drain(name)
                drained = True
                try:
                    self.lb_for(host).wait_out(host, self.plan.timings.drain_wait)
                except FleetError as lb_exc:
                    out.problems.append(f"re-drained after {exc.what}, but {lb_exc.what}")
                raise
            with self.step(out, "record"):
                self.ops.record(
                    name,
                    rc.history_entry(
                        action,
                        "ok",
                        operator=self.plan.operator,
                        release=target.id,
                        version=target.version or None,
                        rollout=self.plan.rollout_id,
                    ),
                )
            out.result = "updated"
        except Interrupted:
            out.result = "interrupted"
            drained = self._let_go(name, out, drained, healthy=True)
        except Exception as exc:
            out.error = _text(exc)
            if self.ops.unreachable(exc):
                out.result = "unreachable"
                out.drained = None if drained or switched else False
                out.problems.append(
                    "unreachable mid-step: its drain flag is unknown; when it is back, "
                    + (self._resume_hint() or "run `fab status`")
                )
                marked = False  # leave the label: autoheal must keep away from a host in this state
                return
            if switched and bounce and source is not None:
                drained = self._bounce(name, out, source, target, drained, exc)
                if out.result == "rolled-back":
                    self._restore_previous(name, out, previous)
            else:
                out.result = "failed"
                drained = self._let_go(name, out, drained)
                self._record_failure(name, out, target, action, exc)
        finally:
            if out.result != "unreachable":
                out.drained = drained
            if premark is not None:  # marked ahead, but it never got to its mark step
                with suppress(Exception):
                    marked = premark.result()
            if marked:
                # off the critical path: the next batch need not wait for Compute (run() waits for it)
                self._unmarks.append(self._pool.submit(self._unmark, host, out))

    def _verified(self, name: str, rel: Release, *, drained: bool, timeout: float | None = None) -> None:
        """Poll until every service of `rel` runs with its config (healthy where checked) and /health
        through nginx says 503 (drained) or 200 with the version. An `unhealthy` verdict from Docker
        is final: no need to wait out the timeout."""
        limit = timeout if timeout is not None else self.plan.timings.health_timeout
        hashes = self.ops.config_hashes(name, rel.id)
        fatal: list[str] = []
        for _ in polling(limit, POLL):
            verdict = self.ops.check(name, rel.version, rel.id, expect_drained=drained, hashes=hashes)
            if verdict.ok:
                return
            fatal = [
                s.service
                for s in verdict.services
                if s.health == "unhealthy" and s.config_hash == hashes.get(s.service)
            ]
            if fatal:
                break
        why = "; ".join(verdict.problems)
        if fatal:
            why = f"unhealthy: {', '.join(fatal)}; {why}"
        raise HostFailed(name, "verify", f"{rel.version} not healthy after {limit:.0f}s: {why}")

    def _probe(self, name: str, rel: Release) -> str | None:
        """/health through the host's nginx: None when it answers 200 with `rel`'s version, else why not."""
        code, seen = self.ops.probe(name)
        if code != 200:
            return f"/health answered {code or 'nothing'}"
        if seen != rel.version:
            return f"/health reports version {seen!r}, want {rel.version!r}"
        return None

    def _serving(self, name: str, rel: Release) -> None:
        """Just undrained: the stack was verified while drained, so only the path through nginx is left
        to prove (it must answer at once; a short grace covers nginx re-resolving the new api)."""
        why = None
        for _ in polling(SERVE_TIMEOUT, 0.2):
            why = self._probe(name, rel)
            if why is None:
                return
        raise HostFailed(name, "serve", why or "")

    def _undrain_and_probe(self, name: str, rel: Release) -> str | None:
        """Remove the drain flag and probe /health through nginx in one round trip: None when it
        already answers 200 with the version (else why not: `serve` keeps probing)."""
        code, seen = self.ops.undrain_and_probe(name)
        if code != 200:
            return f"/health answered {code or 'nothing'}"
        return None if seen == rel.version else f"/health reports version {seen!r}, want {rel.version!r}"

    def _soak(self, name: str, rel: Release) -> None:
        """Stay in service for min-ready seconds, then check the LB still sends it traffic: its health
        check has kept probing /health through nginx meanwhile. Without an LB to ask, probe it here."""
        if self.plan.timings.min_ready:
            time.sleep(self.plan.timings.min_ready)
        seen = self._lb(name).look(self.ops.host(name))
        if seen is None:
            why = self._probe(name, rel)
            if why is not None:
                raise HostFailed(name, "soak", why)
        elif not seen.serving:
            raise HostFailed(name, "soak", f"the load balancer dropped it again ({seen.raw})")

    def _bounce(
        self,
        name: str,
        out: HostOutcome,
        source: Release,
        target: Release,
        drained: bool,
        exc: BaseException,
    ) -> bool:
        """The host failed after switching: put it back on `source` and verify that, still drained."""
        self._record_failure(name, out, target, self.plan.action, exc)
        try:
            if not drained:
                with self.step(out, "revert-drain"):
                    self.ops.drain(name)
                    drained = True
                    self._lb(name).wait_out(self.ops.host(name), self.plan.timings.drain_wait)
            with self.step(out, "revert-switch"):
                self.ops.switch(name, source.id)
            with self.step(out, "revert-up"):
                self.ops.up(name, source.id, source.disabled, timeout=self.plan.timings.health_timeout + 120)
            with self.step(out, "revert-verify"):
                self._verified(name, source, drained=True)
            with self.step(out, "revert-undrain"):
                self.ops.undrain(name)
                drained = False
            with self.step(out, "revert-serve"):
                self._serving(name, source)
            with self.step(out, "revert-lb-in"):
                self._lb(name).wait_in(self.ops.host(name), self.plan.timings.health_timeout)
            self.ops.record(
                name,
                rc.history_entry(
                    "rollback",
                    "ok",
                    operator=self.plan.operator,
                    release=source.id,
                    version=source.version or None,
                    rollout=self.plan.rollout_id,
                    detail=f"back from {target.version} ({target.id}): {_text(exc)[:300]}",
                ),
            )
            out.result = "rolled-back"
        except Exception as again:
            out.result = "unreachable" if self.ops.unreachable(again) else "failed"
            out.problems.append(f"going back to {source.label()} failed too: {_text(again)}")
            if out.result != "unreachable":
                drained = self._let_go(name, out, drained)
        return drained

    def _restore_previous(self, name: str, out: HostOutcome, previous: str | None) -> None:
        try:
            self.ops.set_previous(name, previous)
        except Exception as exc:
            out.problems.append(f"`previous` link not restored: {_text(exc)}")

    def _let_go(self, name: str, out: HostOutcome, drained: bool, *, healthy: bool = False) -> bool:
        """Undrain before letting go of a host: the LB's own health check keeps a broken one out. A
        `healthy` one (interrupted before it switched) is waited for until the LB sends it traffic."""
        if not drained:
            return False
        try:
            with self.step(out, "undrain"):
                self.ops.undrain(name)
            try:
                lb = self._lb(name)
                if healthy:
                    with self.step(out, "lb-in"):
                        lb.wait_in(self.ops.host(name), self.plan.timings.health_timeout)
                elif (seen := lb.look(self.ops.host(name))) is not None and not seen.serving:
                    out.problems.append(f"undrained; the LB keeps it out while it fails ({seen.raw})")
            except FleetError as exc:
                out.problems.append(f"undrained, but the LB does not send it traffic: {exc.what}")
            return False
        except Exception as exc:
            out.problems.append(
                f"COULD NOT UNDRAIN: {_text(exc)}; run `fab rollout --resume` or remove the drain flag"
            )
            return True

    def _record_failure(
        self, name: str, out: HostOutcome, target: Release, action: str, exc: BaseException
    ) -> None:
        try:
            self.ops.record(
                name,
                rc.history_entry(
                    action,
                    "failed",
                    operator=self.plan.operator,
                    release=target.id,
                    version=target.version or None,
                    rollout=self.plan.rollout_id,
                    detail=_text(exc)[:500],
                ),
            )
        except Exception as again:
            out.problems.append(f"history not written: {_text(again)}")

    def _reconcile_record(self, name: str, state: rc.HostState, target: Release, action: str) -> None:
        """A resumed host already on its target: write the history line a killed run never wrote."""
        last = state.last_history or {}
        if (
            last.get("rollout") == self.plan.rollout_id
            and last.get("release") == target.id
            and last.get("result") == "ok"
        ):
            return
        self.ops.record(
            name,
            rc.history_entry(
                action,
                "ok",
                operator=self.plan.operator,
                release=target.id,
                version=target.version or None,
                rollout=self.plan.rollout_id,
                detail="reconciled on resume",
            ),
        )
