"""Record the fleet's release in the release store once it has become the fleet's release.

After a deploy, rollout or rollback that succeeded on every host of the inventory, the rendered
bundles are sealed (fleet/release/sealed.py: secret values stay in Secret Manager, pinned to the
versions just read) and `desired` moves to them (fleet/store/), so a VM the MIG creates on its own
boots into exactly this release. A partial run (some hosts, a canary, a failure) leaves `desired`
where it was: new VMs keep getting the release the whole fleet runs. Without a `store:` section in
the inventory nothing happens.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from fleet.errors import FleetError

if TYPE_CHECKING:
    from fleet.inventory import FleetHost, Inventory
    from fleet.release.bundle import Bundle
    from fleet.store.desired import Desired


def _variants(hosts: Sequence[FleetHost]) -> dict[str, FleetHost]:
    """One host per role set (the first by name): every host of a variant renders the same release."""
    from fleet.store.desired import variant_key

    out: dict[str, FleetHost] = {}
    for host in sorted(hosts, key=lambda h: h.name):
        out.setdefault(variant_key(host.settings.roles or ["app"]), host)
    return out


def covers_fleet(inv: Inventory, hosts: Sequence[str]) -> bool:
    return set(inv.hosts) <= set(hosts)


def publish_release(
    inv: Inventory,
    bundles: Mapping[str, Bundle],
    *,
    action: str,
    actor: str,
    rollout_id: str | None,
    warn: Callable[[str], None],
) -> Desired | None:
    """Seal one bundle per variant and move `desired` to them (returns it; None without a store).
    Refuses, with the reason, when the run did not cover the whole fleet."""
    from fleet.store import desired as ds
    from fleet.store.location import from_inventory

    store = from_inventory(inv)
    if store is None:
        return None
    if not covers_fleet(inv, list(bundles)):
        missing = sorted(set(inv.hosts) - set(bundles))
        warn(
            f"the release store's desired release was not moved: this {action} covered "
            f"{len(bundles)} of {len(inv.hosts)} hosts (not {', '.join(missing[:5])}); new VMs keep "
            "getting the previous release"
        )
        return None
    hosts = [inv.hosts[name] for name in bundles]
    sealed = {key: _seal(inv, host, bundles[host.name]) for key, host in _variants(hosts).items()}
    version = next(iter(bundles.values())).version
    new = ds.publish_fleet(store, sealed, version=version, action=action, actor=actor, rollout_id=rollout_id)
    record(inv, action, "ok", actor, version=version, rollout_id=rollout_id, warn=warn)
    return new


def _seal(inv: Inventory, host: FleetHost, bundle: Bundle) -> Any:
    """The store's form of `host`'s bundle (fleet.release.sealed.Sealed), its secrets pinned to the
    versions read now; checked: what a VM rebuilds from them must be this very release."""
    from fleet.release import sealed as sealing
    from fleet.release import secrets
    from fleet.store.releases import seal_bundle

    values, pinned = secrets.resolve_pinned(
        host.get("secrets", {}) or {},
        base_dir=inv.path,
        where=host.name,
        project=host.settings.gce.project,
        endpoint=host.settings.gce.secretmanager_endpoint,
    )
    one = seal_bundle(bundle, pinned, host.settings.roles or ["app"])
    sealing.unseal(one.manifest, one.archive, {k: values[k] for k in pinned}, where=host.name)
    return one


def upload_releases(
    inv: Inventory,
    bundles: Mapping[str, Bundle] | None,
    targets: Mapping[str, str],
    sources: Mapping[str, str],
    warn: Callable[[str], None],
) -> list[str]:
    """Before the VMs of a `--strategy replace` rollout boot (their template pins the release, their
    agent reads it from the store): every target release (host -> id in `targets`) sealed from its
    rendered bundle and uploaded, `desired` left where it is (it moves when the rollout succeeded).
    A release rolled out by id (no bundle) must be in the store already. A source release missing
    there is warned about: a host that fails could not boot its way back. The ids uploaded now;
    nothing without a store."""
    from fleet.store import releases
    from fleet.store.location import from_inventory

    store = from_inventory(inv)
    if store is None:
        return []
    uploaded: list[str] = []
    ready: set[str] = set()
    for name, bundle in (bundles or {}).items():
        rid = bundle.release_id
        if name not in targets or rid != targets[name] or rid in ready:
            continue
        # the id hashes the release's content: one already stored is this release (a render made at
        # another time differs only in release.json's time and operator, so it is not sealed again)
        if releases.read_manifest(store, rid) is None and releases.publish(
            store, _seal(inv, inv.hosts[name], bundle)
        ):
            uploaded.append(rid)
        ready.add(rid)
    missing = sorted(
        {rid for rid in targets.values() if rid not in ready and releases.read_manifest(store, rid) is None}
    )
    if missing:
        raise FleetError(
            f"not in the release store: {', '.join(missing)}: a VM the MIG recreates could not boot it",
            where=store.url,
            hint="roll out by --version (the release is sealed and uploaded first); nothing was changed",
        )
    gone = sorted({rid for rid in sources.values() if rid and releases.read_manifest(store, rid) is None})
    if gone:
        warn(
            f"the hosts' current release is not in the release store ({', '.join(gone)}): a host whose "
            "new VM fails cannot boot its way back"
        )
    return uploaded


def restore_previous(
    inv: Inventory,
    hosts: Sequence[str],
    releases: Mapping[str, str],
    *,
    actor: str,
    rollout_id: str | None,
    warn: Callable[[str], None],
) -> Desired | None:
    """After a whole-fleet rollback: `desired` goes back to its `previous` when that is what the hosts
    now run (host -> release id in `releases`); anything else is warned about, never guessed."""
    from fleet.store import desired as ds
    from fleet.store.location import from_inventory

    store = from_inventory(inv)
    if store is None:
        return None
    current, generation = ds.read(store)
    if not covers_fleet(inv, hosts):
        warn(
            f"the release store's desired release was not moved: the rollback covered {len(hosts)} of "
            f"{len(inv.hosts)} hosts"
        )
        return None
    if current is None or not current.previous:
        warn("the release store has no previous release to go back to; desired is unchanged")
        return None
    previous = current.previous
    wanted = set(previous.get("variants", {}).values())
    running = set(releases.values())
    if not running <= wanted:
        warn(
            "the release store's desired release was not moved: the hosts now run "
            f"{', '.join(sorted(running))}, the store's previous release is {', '.join(sorted(wanted))}; "
            "deploy or roll out a version to set it"
        )
        return None
    new = ds.Desired(
        version=str(previous["version"]),
        variants=dict(previous["variants"]),
        published_by=actor,
        published_at=ds.now_iso(),
        action="rollback",
        rollout_id=rollout_id,
        previous={"version": current.version, "variants": dict(current.variants)},
    )
    ds.move(store, new, generation)
    record(inv, "rollback", "ok", actor, version=new.version, rollout_id=rollout_id, warn=warn)
    return new


def record(
    inv: Inventory, action: str, result: str, actor: str, *, warn: Callable[[str], None], **facts: Any
) -> None:
    """Append to the store's central history; a failure is a warning (the host histories have it)."""
    from fleet.store import history
    from fleet.store.location import from_inventory

    try:
        store = from_inventory(inv)
        if store is not None:
            history.append(store, history.Event(action=action, result=result, actor=actor, **facts))
    except FleetError as exc:
        warn(f"central history not written: {exc.what}")


def check_publishable(inv: Inventory, hosts: Sequence[FleetHost]) -> None:
    """Before anything changes: with a release store, every secret must come from Secret Manager (a VM
    reads it there; an operator's env var or file never reaches a VM the MIG creates)."""
    from fleet.release import secrets
    from fleet.store.location import from_inventory

    if from_inventory(inv) is None:
        return
    problems: dict[str, list[str]] = {}
    for host in hosts:
        refs = host.get("secrets", {}) or {}
        managed = secrets.secret_manager_refs(refs, project=host.settings.gce.project, where=host.name)
        for key in sorted(set(refs) - set(managed)):
            problems.setdefault(key, []).append(host.name)
    if problems:
        listed = "; ".join(f"{k} (on {', '.join(v[:3])})" for k, v in sorted(problems.items()))
        raise FleetError(
            f"the fleet has a release store, but secrets come from the operator's machine: {listed}",
            where=f"inventory {inv.name}",
            hint="`fab secrets.push` them and refer to them as {secret_manager: NAME} under data.secrets, "
            "so VMs the MIG creates can read them (docs/secrets.md); nothing was changed",
        )


def record_run(
    inv: Inventory,
    action: str,
    outcome: str,
    bundles: Mapping[str, Bundle] | None,
    releases: Mapping[str, str],
    *,
    actor: str,
    rollout_id: str,
    warn: Callable[[str], None],
) -> Desired | None:
    """The store's side of a finished rollout or rollback: desired moves on success of the whole fleet,
    and the central history gets the outcome either way. Never raises: the hosts are done; a store that
    cannot be updated is a loud warning that says what new VMs will get."""
    from fleet.store.location import from_inventory

    try:
        if from_inventory(inv) is None:
            return None
        if outcome != "succeeded":
            record(inv, action, outcome, actor, rollout_id=rollout_id, warn=warn)
            return None
        if action == "rollback":
            return restore_previous(
                inv, list(releases), releases, actor=actor, rollout_id=rollout_id, warn=warn
            )
        if not bundles:
            warn("a staged release was rolled out by id: the release store's desired release was not moved")
            return None
        return publish_release(inv, bundles, action=action, actor=actor, rollout_id=rollout_id, warn=warn)
    except FleetError as exc:
        warn(
            f"the release store was NOT updated, so VMs created from now on get its previous release: "
            f"{exc.render()}"
        )
        return None


def joined_meanwhile(inv: Inventory, covered: Sequence[str]) -> list[str]:
    """MIG members that exist now but were not in the run (created during it): they booted the store's
    desired release as it was while the run went on, i.e. the previous one. Empty for static fleets."""
    from fleet.inventory import load

    gce = (inv.defaults.get("data") or {}).get("gce") or {}
    if not gce.get("migs"):
        return []
    try:
        now = load(str(inv.path))
    except FleetError:
        return []
    return sorted(set(now.hosts) - set(covered))
