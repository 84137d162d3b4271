"""The local MIG's instance template startup script: what a new or recreated instance runs once.

On GCE a template's startup script would install Docker and fetch the current release; here the
endpoint process does the same over SSH with the tool's own code paths, against `inventory/local`
(which LocalFleet has just rewritten with the new instance's real host key):

1. bootstrap: the script `fab bootstrap` runs (fleet/commands/bootstrap.py);
2. the fleet's current release: the version most running peers report in their `current`
   release.json, rendered for this host from the inventory (its own roles and secrets), so it is the
   same release id its peers of the same roles run (the id is a hash of the content, never of time);
3. preflight (stage, validate, pull from the registry) and activate (switch, `compose up`, wait for
   /health with that version), recorded in the host's history as action `startup`.

With no peer running a release yet, the instance is only bootstrapped (nothing to deploy).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from fleet.errors import FleetError
from fleet.local.config import LocalConfig

MAX_PEERS = 5
OPERATOR = "instance-template@local"


def fleet_version(versions: list[str]) -> str | None:
    """The version most peers run; a tie goes to the highest version string (a rollout's target)."""
    if not versions:
        return None
    counts = Counter(versions)
    return max(counts, key=lambda v: (counts[v], v))


def provision(config: LocalConfig, name: str, log: Callable[[str], None] = print) -> str:
    """Bootstrap `name` and start the fleet's current release on it; returns a one-line summary."""
    from fleet import inventory
    from fleet.commands.bootstrap import bootstrap_command
    from fleet.release import hoststeps as ht
    from fleet.rollout import deploy
    from fleet.rollout.pacing import default_timings
    from fleet.ssh.runner import HostContext, HostResult, run_on

    inv = inventory.load(str(config.inventory_dir))
    if name not in inv.hosts:
        raise FleetError(f"{name} is not in the inventory", where=str(config.inventory_dir))
    host = inv.hosts[name]

    def bootstrap(ctx: HostContext) -> HostResult:
        ht.run(ctx, bootstrap_command(ht.layout_of(ctx.host), ctx.host.username), "bootstrap", timeout=600)
        return HostResult(ctx.host.name, "ok")

    (boot,) = run_on(inv, [host], bootstrap)
    if not boot.ok:
        raise FleetError(f"bootstrap failed: {boot.error}", where=name)

    def read_state(ctx: HostContext) -> HostResult:
        return HostResult(ctx.host.name, "ok", data={"state": ht.read_state(ctx)})

    peers = [h for h in inv.hosts.values() if h.name != name][:MAX_PEERS]
    states = [r.data["state"] for r in run_on(inv, peers, read_state) if r.ok]
    version = fleet_version([s.version for s in states if s.current and s.version])
    if version is None:
        log(f"startup {name}: bootstrapped; no peer runs a release yet")
        return "bootstrapped (no release to deploy)"

    bundle = deploy.render_all(inv, [host], version=version)[name]
    timeout = default_timings(host.settings.lb, host.settings.rollout).health_timeout

    def release(ctx: HostContext) -> HostResult:
        found = deploy.preflight(ctx, bundle)
        outcome = deploy.activate(
            ctx, bundle, found["state"], operator=OPERATOR, health_timeout=timeout, action="startup"
        )
        ok = outcome.result in ("deployed", "unchanged")
        return HostResult(ctx.host.name, "ok" if ok else "failed", error=outcome.error)

    (result,) = run_on(inv, [host], release)
    if not result.ok:
        raise FleetError(f"release {version} did not start: {result.error}", where=name)
    log(f"startup {name}: running {version} (release {bundle.release_id[:12]})")
    return f"running {version}"
