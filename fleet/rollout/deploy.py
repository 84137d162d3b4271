"""Deploy a release to every selected host at once, and read the fleet's release state.

Two phases so that bad input changes nothing: first every host is prepared (Docker present, disk,
bundle staged, compose validated, images pulled) while `current` stays where it is; only when all
hosts are ready does any host switch. A host that then fails its health check goes back to its
previous release. (The careful path, batch by batch behind the load balancer, is fleet/rollout.py.)

A deploy changes the fleet as a rollout does, so it runs under the same fleet lock (a `dp-` id; a
deploy during a rollout, or a rollout during a deploy, is refused naming the holder) and marks each
host with the rollout label while it switches, so autoheal leaves it alone. An inventory without a
Compute project (plain SSH hosts) has no lock backend: it deploys without a lock, as before.

The database schema (`dify.migrations: phase`, `SchemaPhase`): between the two phases, a deploy whose
release changes the schema revision of some host (a host without a release counts) runs the same
migration phase as `fab rollout` (fleet/rollout/restore.py run_phase: a restore point, then the
migration once on the first host, under the lock, journaled as `<dp- id>.jsonl`); a failure switches
nothing. A deploy to an older DIFY_VERSION of another revision (going back across a migration) is
refused exactly as `fab rollback` is, unless allowed (`--force-schema-rollback`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleet.commands import release as rc
from fleet.commands.base import mask
from fleet.errors import FleetError
from fleet.release import hoststeps as ht
from fleet.release import secrets
from fleet.release.activation import DeployOutcome, activate, preflight
from fleet.release.activation import check_ready as check_ready  # importable from here, as before
from fleet.release.activation import restore as restore
from fleet.ssh.runner import HostContext, HostResult, run_on

if TYPE_CHECKING:
    from nornir.core.processor import Processor

    from fleet.inventory import FleetHost, Inventory
    from fleet.release.bundle import Bundle, ReleaseMeta, Source
    from fleet.release.pairing import Manifest
    from fleet.rollout.journal import Journal
    from fleet.rollout.restore import Migration, RestorePoints


# --------------------------------------------------------------------------- rendering for many hosts


def render_all(
    inv: Inventory,
    hosts: Sequence[FleetHost],
    *,
    version: str | None = None,
    source: Source | None = None,
    meta: ReleaseMeta | None = None,
) -> dict[str, Bundle]:
    """Every host's bundle, or one FleetError listing every host that cannot be rendered."""
    from fleet.commands.base import version as check_version
    from fleet.release import bundle

    source = source or bundle.load_source()
    meta = meta or bundle.local_meta()
    overrides = {"DIFY_VERSION": check_version(version)} if version else {}
    bundles: dict[str, Bundle] = {}
    errors: list[str] = []
    for h in hosts:
        try:
            bundles[h.name] = ht.bundle_for(inv, h, source, meta, overrides)
        except FleetError as exc:
            errors.append(exc.render())
    if errors:
        raise FleetError(
            f"cannot render the release for {len(errors)} host(s):\n  " + "\n  ".join(errors),
            hint="nothing was changed on any host",
        )
    return bundles


# --------------------------------------------------------------------------- the fleet lock


@dataclass(frozen=True)
class Guard:
    """What a deploy holds while it runs: its id, how to mark a host, whether the lock is still ours."""

    rollout_id: str
    mark: Callable[[FleetHost, str | None], bool] | None = None  # rollout.Marks.set
    lost: Callable[[], str | None] | None = None  # lock.Heartbeat.problem


@contextmanager
def under_lock(
    inv: Inventory,
    hosts: Sequence[FleetHost],
    reason: str,
    warn: Callable[[str], None] | None = None,
    events: Any = None,
) -> Iterator[Guard]:
    """The fleet lock and rollout marks, taken exactly as a rollout takes them (LockHeld names the
    holder); without a Compute project (no lock backend) a bare id, as before."""
    from fleet.rollout import Marks, new_rollout_id
    from fleet.rollout import lock as lk

    rollout_id = new_rollout_id("deploy")
    if not lk.has_backend(inv, hosts):
        yield Guard(rollout_id)
        return
    store = lk.for_inventory(inv, hosts, warn=warn)

    def announce(action: str, result: str, detail: str) -> None:
        if events is not None:  # fleet.gcp.events.EventPublisher
            events.publish("lock", action, result, rollout_id=rollout_id, detail=detail)

    with lk.holding(
        store, lk.operator(), reason, rollout_id, lk.ttl_of(hosts), warn, announce=announce
    ) as heartbeat:
        yield Guard(rollout_id, Marks(store.compute).set, heartbeat.problem)


# --------------------------------------------------------------------------- the whole deploy


@dataclass
class DeployReport:
    release_version: str
    outcomes: list[DeployOutcome]
    stopped_at: str | None = None  # "preflight" | "migration" when nothing was switched
    # the migration phase's summary (fleet.rollout.restore.PhaseResult.report); None = none ran
    migration: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.stopped_at is None and all(o.result in ("deployed", "unchanged") for o in self.outcomes)

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": self.release_version,
            "ok": self.ok,
            "stopped_at": self.stopped_at,
            "migration": self.migration,
            "problems": self.problems,
            "hosts": [o.as_dict() for o in self.outcomes],
        }


# --------------------------------------------------------------------------- the database schema


def _no_warning(_text: str) -> None: ...


@dataclass
class SchemaPhase:
    """What `fab deploy` does about the database schema with `dify.migrations: phase`: the same
    decisions and the same phase as `fab rollout` (fleet/rollout/restore.py), asked with the hosts'
    states that the deploy's preflight read."""

    manifest: Manifest
    command: tuple[str, ...]
    timeout: int
    points: RestorePoints
    journal_dir: Path
    allow_back: bool = False  # --force-schema-rollback
    warn: Callable[[str], None] = _no_warning

    @classmethod
    def for_hosts(
        cls,
        inv: Inventory,
        hosts: Sequence[FleetHost],
        *,
        allow_back: bool = False,
        warn: Callable[[str], None] | None = None,
    ) -> SchemaPhase | None:
        """None with `dify.migrations: off` (the operator migrates) or without compose/releases.yaml."""
        from fleet.release import pairing
        from fleet.rollout import journal as jr
        from fleet.rollout import restore

        if not hosts or hosts[0].settings.dify.migrations != "phase":
            return None
        manifest = pairing.load_manifest()
        if manifest is None:
            return None
        dify = hosts[0].settings.dify
        return cls(
            manifest,
            tuple(dify.migration_command),
            dify.migration_timeout,
            restore.restore_points_for(inv),
            jr.fleet_dir(inv),
            allow_back,
            warn or _no_warning,
        )

    def pending(
        self, order: Sequence[str], states: Mapping[str, rc.HostState], bundles: Mapping[str, Bundle]
    ) -> Migration | None:
        """The migration deploying `bundles` over `states` needs (run on the first host of `order`),
        or None. Going back across a schema change raises the refusal `fab rollback` gives (unless
        allowed: then it warns, and nothing migrates)."""
        from fleet.rollout import restore
        from fleet.rollout.model import Release

        if not order or len({bundles[h].version for h in order}) != 1:
            return None
        sources = [Release.from_state(states[h]) for h in order]
        target = Release.from_bundle(bundles[order[0]])
        back = restore.schema_going_back(self.manifest, sources, target)
        if back is not None:
            restore.guard_schema_rollback(
                *back, self.journal_dir, allowed=self.allow_back, warn=self.warn, what="deploy back"
            )
            return None
        return restore.pending_migration(
            self.manifest,
            sources,
            target,
            order[0],
            command=self.command,
            timeout=self.timeout,
            restore=self.points.describe(),
            warn=self.warn,
        )

    def run(self, inv: Inventory, host: FleetHost, mig: Migration, journal: Journal) -> Any:
        """The phase (restore.run_phase), the migration on `host` over SSH; a restore.PhaseResult."""
        from fleet.rollout import restore

        def migrate_step(ctx: HostContext) -> HostResult:
            output = ht.migrate(ctx, mig.release, mig.command, float(mig.timeout))
            return HostResult(ctx.host.name, "ok", data={"output": output})

        return restore.run_phase(
            mig,
            rollout_id=journal.rollout_id,
            command=mig.shell(ht.layout_of(host)),
            points=self.points,
            emit=journal.append,
            migrate=lambda: run_on(inv, [host], migrate_step)[0],
        )


def _outcome_from_failure(res: HostResult, bundle: Bundle | None, result: str) -> DeployOutcome:
    """The report row of a host whose step raised. The runner turns ANY exception into `res.error`
    (not only a StepError, whose text hosttasks.run has masked), so mask it here as well."""
    return DeployOutcome(
        res.host,
        "unreachable" if res.status == "unreachable" else result,
        to_release=bundle.release_id if bundle else None,
        to_version=bundle.version if bundle else None,
        duration=res.duration,
        error=mask_known(res.error),
    )


def mask_known(text: str | None) -> str | None:
    """`text` with every secret this process has resolved, rendered or read masked (None stays None)."""
    return None if text is None else mask(text, secrets.known())


def deploy(
    inv: Inventory,
    hosts: Sequence[FleetHost],
    bundles: Mapping[str, Bundle],
    *,
    operator: str,
    health_timeout: float,
    keep: int | None = None,
    workers: int | None = None,
    processors: Sequence[Processor] = (),
    guard: Guard | None = None,
    schema: SchemaPhase | None = None,
) -> DeployReport:
    """`guard` (under_lock): no host switches once the lock is lost; each is marked while it switches.
    `schema`: after every host is prepared and before any switches, the migration phase when the
    release changes the schema revision (journaled under the guard's id), or the refusal of going
    back across one."""
    version = next(iter(bundles.values())).version if bundles else ""
    guard = guard or Guard("")
    started = time.monotonic()
    pre = run_on(
        inv,
        hosts,
        lambda ctx: _preflight_step(ctx, bundles[ctx.host.name]),
        workers=workers,
        processors=processors,
    )
    failed = [r for r in pre if not r.ok]
    if failed:
        outcomes = []
        for r in pre:
            if r.ok:
                st: rc.HostState = r.data["state"]
                outcomes.append(
                    DeployOutcome(
                        r.host,
                        "not-started",
                        st.current,
                        st.version,
                        bundles[r.host].release_id,
                        bundles[r.host].version,
                        r.data["bytes_sent"],
                        r.duration,
                    )
                )
            else:
                outcomes.append(_outcome_from_failure(r, bundles[r.host], "failed"))
        return DeployReport(version, outcomes, stopped_at="preflight")
    states = {r.host: r.data["state"] for r in pre}
    sent = {r.host: r.data["bytes_sent"] for r in pre}
    journal: Journal | None = None
    migration: dict[str, Any] | None = None
    if schema is not None:
        mig = schema.pending([h.name for h in hosts], states, bundles)
        if mig is not None:
            lost = guard.lost() if guard.lost is not None else None
            if lost:
                problem = f"fleet lock lost before the migration: {lost}; nothing was migrated or switched"
                return _stopped(version, hosts, bundles, states, sent, "migration", problem)
            journal = _deploy_journal(schema, guard, version, hosts, mig)
            try:
                phase = schema.run(inv, next(h for h in hosts if h.name == mig.host), mig, journal)
            except BaseException as exc:
                journal.append("end", outcome="failed", error=str(exc))
                journal.close()
                raise
            migration = phase.report
            if not phase.ok:
                journal.append("end", outcome="failed", error=phase.problem)
                journal.close()
                report = _stopped(version, hosts, bundles, states, sent, "migration", phase.problem or "")
                report.migration = migration
                return report
    try:
        report = _switch_all(
            inv,
            hosts,
            bundles,
            states,
            sent,
            operator,
            health_timeout,
            keep,
            workers,
            processors,
            guard,
            started,
        )
    except BaseException as exc:
        if journal is not None:
            journal.append("end", outcome="failed", error=str(exc))
            journal.close()
        raise
    report.migration = migration
    if journal is not None:
        rows = {o.host: o.result for o in report.outcomes}
        journal.append("end", outcome="succeeded" if report.ok else "failed", hosts=rows)
        journal.close()
    return report


def _deploy_journal(
    schema: SchemaPhase, guard: Guard, version: str, hosts: Sequence[FleetHost], mig: Migration
) -> Journal:
    """The deploy's journal (only when it migrates): the restore point `fab rollback` and a later
    deploy back name is found there. It has no `plan`: a deploy is not resumed (deploy again)."""
    import os

    from fleet.rollout import journal as jr
    from fleet.rollout import lock as lk
    from fleet.rollout import new_rollout_id

    journal = jr.Journal.create(schema.journal_dir, guard.rollout_id or new_rollout_id("deploy"))
    journal.append(
        "deploy",
        pid=os.getpid(),
        operator=lk.operator(),
        label=version,
        hosts=[h.name for h in hosts],
        migration=mig.as_dict(),
    )
    return journal


def _stopped(
    version: str,
    hosts: Sequence[FleetHost],
    bundles: Mapping[str, Bundle],
    states: Mapping[str, rc.HostState],
    sent: Mapping[str, int],
    where: str,
    problem: str,
) -> DeployReport:
    """Every host prepared, none switched: the report of a deploy that stopped before the switch."""
    outcomes = []
    for h in hosts:
        st, b = states[h.name], bundles[h.name]
        out = DeployOutcome(
            h.name, "not-started", st.current, st.version, b.release_id, b.version, sent[h.name]
        )
        out.error = f"not switched: {where} failed"
        outcomes.append(out)
    return DeployReport(version, outcomes, stopped_at=where, problems=[mask_known(problem) or ""])


def _switch_all(
    inv: Inventory,
    hosts: Sequence[FleetHost],
    bundles: Mapping[str, Bundle],
    states: Mapping[str, rc.HostState],
    sent: Mapping[str, int],
    operator: str,
    health_timeout: float,
    keep: int | None,
    workers: int | None,
    processors: Sequence[Processor],
    guard: Guard,
    started: float,
) -> DeployReport:
    """The second phase: every host switches, verifies, and goes back when it does not pass."""
    version = next(iter(bundles.values())).version if bundles else ""

    def activate_step(ctx: HostContext) -> HostResult:
        lost = guard.lost() if guard.lost is not None else None
        if lost:
            bundle, state = bundles[ctx.host.name], states[ctx.host.name]
            out = DeployOutcome(
                ctx.host.name, "not-started", state.current, state.version, bundle.release_id, bundle.version
            )
            out.error = f"not switched: fleet lock lost: {lost}"
            return HostResult(ctx.host.name, "failed", error=out.error, data={"outcome": out})
        marked = guard.mark(ctx.host, guard.rollout_id) if guard.mark is not None else False
        unmark_problem = None
        try:
            outcome = activate(
                ctx,
                bundles[ctx.host.name],
                states[ctx.host.name],
                operator=operator,
                health_timeout=health_timeout,
                rollout_id=guard.rollout_id or None,
            )
        finally:
            if marked and guard.mark is not None:
                try:
                    guard.mark(ctx.host, None)
                except Exception as exc:
                    unmark_problem = f"rollout label left on the instance: {exc}"
        if unmark_problem:
            outcome.problems.append(unmark_problem)
        try:
            ht.prune(ctx, keep or ctx.host.settings.app.keep_releases)
        except FleetError as exc:  # pruning is housekeeping: report, do not fail the deploy
            outcome.problems.append(f"prune: {exc.what}")
        ok = outcome.result in ("deployed", "unchanged")
        return HostResult(
            ctx.host.name, "ok" if ok else "failed", error=outcome.error, data={"outcome": outcome}
        )

    act = run_on(inv, hosts, activate_step, workers=workers, processors=processors)
    outcomes = []
    for r in act:
        o = r.data.get("outcome") or _outcome_from_failure(r, bundles[r.host], "failed")
        o.bytes_sent = sent.get(r.host, 0)
        o.duration = time.monotonic() - started
        outcomes.append(o)
    return DeployReport(version, outcomes)


def _preflight_step(ctx: HostContext, bundle: Bundle) -> HostResult:
    found = preflight(ctx, bundle)
    return HostResult(ctx.host.name, "ok", data=found)


# --------------------------------------------------------------------------- status, history, diff


def status_step(ctx: HostContext) -> HostResult:
    state = ht.read_state(ctx)
    data: dict[str, Any] = {"state": state, "services": [], "drift": [], "health": None}
    if state.exists:
        try:
            states, data["health"] = ht.look(ctx)  # the containers and /health: one round trip
        except FleetError as exc:
            return HostResult(ctx.host.name, "failed", error=exc.render(), data=data)
        data["services"] = states
        data["drift"] = rc.drift(states, ht.config_hashes(ctx, state.current)) if state.current else []
    return HostResult(ctx.host.name, "ok", data=data)


def status_row(r: HostResult) -> dict[str, Any]:
    if not r.ok:
        return {"host": r.host, "status": r.status, "error": r.error}
    st: rc.HostState = r.data["state"]
    svcs: list[rc.ServiceState] = r.data["services"]
    health = r.data["health"]
    return {
        "host": r.host,
        "status": r.status,
        "release": st.current,
        "version": st.version,
        "previous": st.previous,
        "drained": st.drained,
        "health": {"code": health[0], "version": health[1]} if health else None,
        "services": {s.service: (s.state if not s.health else f"{s.state}/{s.health}") for s in svcs},
        "drift": r.data["drift"],
        "last": st.last_history,
        "layout": st.exists,
    }


def history_step(limit: int | None) -> Callable[[HostContext], HostResult]:
    def read(ctx: HostContext) -> HostResult:
        return HostResult(ctx.host.name, "ok", data={"entries": ht.history(ctx, limit)})

    return read


def diff_step(
    bundles: Mapping[str, Bundle], *, with_state: bool = False
) -> Callable[[HostContext], HostResult]:
    """What `bundles` would change on each host; `with_state`: its release state too (data["state"])."""

    def compare(ctx: HostContext) -> HostResult:
        from fleet.release import bundle as bundle_mod

        files = ht.current_files(ctx)
        d = bundle_mod.diff(files or None, bundles[ctx.host.name])
        data: dict[str, Any] = {"diff": d}
        if with_state:
            data["state"] = ht.read_state(ctx)
        return HostResult(ctx.host.name, "ok", data=data)

    return compare


def deploy_release(
    inv: Inventory | str | None,
    hosts: Sequence[FleetHost] | None = None,
    *,
    version: str | None = None,
    bundles: Mapping[str, Bundle] | None = None,
    health_timeout: float | None = None,
    keep: int | None = None,
    workers: int | None = None,
    processors: Sequence[Processor] = (),
    warn: Callable[[str], None] | None = None,
    allow_schema_rollback: bool = False,
) -> DeployReport:
    """`fab deploy` as a library call: render `version` (default: the inventory's; or pass the
    `bundles` already rendered) for `hosts` (default: every host of the inventory) and deploy it,
    under the fleet lock with the rollout marks (`under_lock`). Health timeout: the inventory's
    rollout timings. With `dify.migrations: phase` the schema is migrated (or going back across a
    migration refused unless `allow_schema_rollback`) as `fab rollout` does (`SchemaPhase`)."""
    from fleet import inventory as inv_mod
    from fleet.release.bundle import local_meta
    from fleet.rollout.pacing import default_timings

    inventory = inv if isinstance(inv, inv_mod.Inventory) else inv_mod.load(inv)
    chosen = list(hosts) if hosts is not None else list(inventory.hosts.values())
    if bundles is None:
        bundles = render_all(inventory, chosen, version=version)
    if not health_timeout:
        first = chosen[0]
        health_timeout = default_timings(first.settings.lb, first.settings.rollout).health_timeout
    label = next(iter(bundles.values())).version if bundles else ""
    from fleet.rollout import announce, publish

    publish.check_publishable(inventory, chosen)

    _warn = warn or (lambda _text: None)
    schema = SchemaPhase.for_hosts(inventory, chosen, allow_back=allow_schema_rollback, warn=_warn)
    events = announce.publisher_for(inventory, chosen, warn)
    with under_lock(inventory, chosen, f"deploy {label}", warn=warn, events=events) as guard:
        what = f"deploy {label} on {len(chosen)} host(s)"
        if events is not None:
            events.publish("rollout", "deploy", "started", rollout_id=guard.rollout_id, detail=what)
        report = deploy(
            inventory,
            chosen,
            bundles,
            operator=local_meta().operator,
            health_timeout=health_timeout,
            keep=keep,
            workers=workers,
            processors=processors,
            guard=guard,
            schema=schema,
        )
        actor = local_meta().operator
        if report.ok:
            try:
                publish.publish_release(
                    inventory, bundles, action="deploy", actor=actor, rollout_id=guard.rollout_id, warn=_warn
                )
            except FleetError as exc:
                _warn(
                    "the release store was NOT updated, so VMs created from now on get its previous "
                    f"release: {exc.render()}"
                )
        else:
            publish.record(inventory, "deploy", "failed", actor, rollout_id=guard.rollout_id, warn=_warn)
        if events is not None:
            failed = [o.host for o in report.outcomes if o.result not in ("deployed", "unchanged")]
            detail = what + (f": failed on {', '.join(failed)}" if failed else ": done")
            result = "done" if report.ok else "failed"
            events.publish("rollout", "deploy", result, rollout_id=guard.rollout_id, detail=detail)
        return report
