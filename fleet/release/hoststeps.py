"""Steps over ONE host, on its reused SSH connection: read state, stage, pull, switch, start, verify,
drain, record. Deploy, rollout and rollback are sequences of these; commands come from
fleet/commands/release.py, so this module only runs them and interprets the answers.

Every function raises `StepError` (a FleetError naming the host and the step) when the host says no,
so a caller can record exactly where a host stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

from fleet.commands import release as rc
from fleet.commands.base import Command, mask
from fleet.commands.health import parse_health
from fleet.errors import FleetError
from fleet.release import secrets
from fleet.release.secrets import known as known_secrets

if TYPE_CHECKING:
    from fleet.inventory import FleetHost, Inventory
    from fleet.release.bundle import Bundle, ReleaseMeta, Source


class AppSettings(Protocol):
    @property
    def dir(self) -> str: ...
    @property
    def project(self) -> str: ...
    @property
    def http_port(self) -> int: ...
    @property
    def min_free_mb(self) -> int: ...


class HostSettings(Protocol):
    @property
    def app(self) -> AppSettings: ...


class Host(Protocol):
    """What the steps need of a host: an inventory FleetHost, or the agent's own VM (fleet/agent)."""

    @property
    def name(self) -> str: ...
    @property
    def settings(self) -> HostSettings: ...


class HostContext(Protocol):
    """Where the steps run: over SSH (fleet.ssh.runner.HostContext) or on the VM itself (the agent)."""

    @property
    def host(self) -> Host: ...

    def run(self, script: str, *, timeout: float | None = None, stdin: str | None = None) -> Any: ...

    def put(self, data: bytes, remote: str) -> None: ...


class StagedRelease(Protocol):
    """What staging needs of a release: a rendered bundle or the agent's unsealed one."""

    @property
    def release_id(self) -> str: ...

    def tar_bytes(self) -> bytes: ...

    def checksums(self) -> dict[str, str]: ...


class StepError(FleetError):
    """A step failed on a host: `step` says which (stage, pull, switch, up, verify, ...)."""

    def __init__(self, host: str, step: str, what: str, hint: str | None = None) -> None:
        self.host = host
        self.step = step
        super().__init__(f"{step}: {what}", where=host, hint=hint)


def layout_of(host: Host) -> rc.Layout:
    return rc.Layout(host.settings.app.dir, host.settings.app.project)


def http_port_of(host: Host) -> int:
    """The port the host's own nginx listens on (inside the host)."""
    return host.settings.app.http_port


# --------------------------------------------------------------------------- rendering (pure)


def bundle_for(
    inv: Inventory,
    host: FleetHost,
    source: Source,
    meta: ReleaseMeta,
    overrides: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Bundle:
    """One host's release: inventory vars (defaults -> groups -> host) + overrides + per-host layout
    variables + resolved secrets. Raises before anything touches a host when something is missing."""
    from fleet.release import bundle, pairing, passthrough

    layout = layout_of(host)
    variables: dict[str, Any] = dict(host.settings.vars)
    variables.update(overrides or {})
    # inside the host, nginx publishes on app.http_port (the inventory's view of that host's HTTP port
    # may differ: the local fleet maps it to a loopback port on the machine running the tool)
    variables.update(bundle.host_variables(layout.root, host.settings.roles or [], None))
    secret_refs = host.get("secrets", {}) or {}
    gce = host.settings.gce
    values = secrets.resolve(
        secret_refs,
        base_dir=inv.path,
        environ=environ,
        where=host.name,
        project=gce.project,
        endpoint=gce.secretmanager_endpoint,
    )
    dify = host.settings.dify
    if source.manifest is not None:
        variables.update(
            pairing.resolve(source.manifest, variables, allow=dify.allow_unpaired_images, where=host.name)
        )
    schema_secrets = {k: v for k, v in values.items() if k in source.variables}
    extra_secrets = {k: v for k, v in values.items() if k not in source.variables}
    extra = None
    if dify.env_extra or extra_secrets:
        if source.catalog is None:
            raise FleetError(
                f"{passthrough.CATALOG_FILE} is missing next to the compose file",
                where=host.name,
                hint="pass-through variables (dify.env_extra, secrets outside the schema) are checked "
                "against it",
            )
        extra = passthrough.build(
            source.catalog,
            source.compose,
            source.variables,
            dify.env_extra,
            extra_secrets,
            where=host.name,
        )
    return bundle.render(source, variables, schema_secrets, meta, where=host.name, extra=extra)


# --------------------------------------------------------------------------- running


def run(
    ctx: HostContext, cmd: Command, step: str, *, timeout: float | None = None, hint: str | None = None
) -> Any:
    """Run one command; a non-zero exit becomes a StepError with the (masked) stderr tail."""
    r = ctx.run(cmd.shell(), timeout=timeout)
    if r.exited != 0:
        run_failed(ctx, cmd, step, r, hint)
    return r


def run_failed(ctx: HostContext, cmd: Command, step: str, r: Any, hint: str | None = None) -> NoReturn:
    """The StepError of `cmd` having exited non-zero with result `r`."""
    # any secret this process has seen, not only the command's own: compose and the host's tools
    # echo .env values (and URLs derived from them) in their errors. Masked before it is cut to
    # its tail, so the cut cannot leave part of a secret that no longer matches.
    detail = mask(r.stderr.strip() or r.stdout.strip(), (*cmd.secrets, *secrets.known()))[-600:]
    raise StepError(ctx.host.name, step, f"{cmd.purpose} failed (exit {r.exited}): {detail}", hint)


def migrate(ctx: HostContext, rid: str, command: Sequence[str], timeout: float) -> str:
    """Run the database migration once, as a one-off container of staged release `rid` (the
    rollout's and the deploy's migration phase, fleet/rollout/restore.py); its masked output tail."""
    cmd = rc.compose_migrate(layout_of(ctx.host), rid, command)
    r = run(
        ctx,
        cmd,
        "migrate",
        timeout=timeout,
        hint="nothing was switched; the error above is the migration's own output",
    )
    return mask(r.stdout or "", secrets.known())[-2000:]


def read_state(ctx: HostContext) -> rc.HostState:
    r = run(ctx, rc.host_state(layout_of(ctx.host)), "state")
    try:
        return rc.parse_host_state(r.stdout)
    except FleetError as exc:
        raise StepError(ctx.host.name, "state", exc.what) from None


def stage(ctx: HostContext, bundle: StagedRelease) -> int:
    """Upload the bundle unless the host already has it; returns the bundle bytes sent (0 = skipped).
    The archive holds the .env: it is written into a 0600 file in a 0700 directory under the 0750
    releases/ (see `rc.upload_slot`) and removed by the stage script on every exit."""
    layout = layout_of(ctx.host)
    rid = bundle.release_id
    # is it there already, else a private slot for the upload: one round trip
    r = run(
        ctx,
        rc.present_or_slot(layout, rid),
        "stage",
        hint="does the deploy user own the app dir? `fab bootstrap`",
    )
    if rc.parse_present(r.stdout):
        return 0
    data = bundle.tar_bytes()
    remote = rc.upload_path(layout, rid)
    try:
        ctx.put(data, remote)
    except OSError as exc:
        ctx.run(rc.discard_upload(layout, rid).shell(), timeout=60)
        raise StepError(
            ctx.host.name,
            "stage",
            f"upload to {remote} failed: {exc}",
            hint="does the deploy user own the app dir? `fab bootstrap` prepares it",
        ) from None
    run(ctx, rc.stage(layout, rid, bundle.checksums(), archive=remote), "stage")
    return len(data)


def check_and_pull(ctx: HostContext, bundle: StagedRelease, timeout: float | None = None) -> None:
    """Validate the staged release with the host's Compose and pull its images (nothing switches)."""
    layout = layout_of(ctx.host)
    run(
        ctx,
        rc.compose_check(layout, bundle.release_id),
        "validate",
        hint="the rendered compose file is invalid",
    )
    run(
        ctx,
        rc.compose_pull(layout, bundle.release_id),
        "pull",
        timeout=timeout,
        hint="is the version right, and can the host reach the registry?",
    )


def switch(ctx: HostContext, rid: str) -> None:
    run(ctx, rc.switch(layout_of(ctx.host), rid), "switch")


def up(ctx: HostContext, rid: str, disabled: Sequence[str] = (), timeout: float | None = None) -> None:
    run(ctx, rc.compose_up(layout_of(ctx.host), rid, disabled=disabled), "up", timeout=timeout)


def drain(ctx: HostContext) -> None:
    run(ctx, rc.drain(layout_of(ctx.host)), "drain")


def undrain(ctx: HostContext) -> None:
    run(ctx, rc.undrain(layout_of(ctx.host)), "undrain")


def record(ctx: HostContext, entry: Mapping[str, Any], secrets: Sequence[str] = ()) -> None:
    """Append to the host's history, the text fields (`detail` quotes host output) masked with `secrets`
    and every secret this process has seen, so an audit line is never refused or leaky."""
    hidden = (*secrets, *known_secrets())
    masked = {k: mask(v, hidden) if isinstance(v, str) else v for k, v in entry.items()}
    run(ctx, rc.history_append(layout_of(ctx.host), masked, secrets), "history")


def history(ctx: HostContext, limit: int | None = None) -> list[dict[str, Any]]:
    r = run(ctx, rc.history_read(layout_of(ctx.host), limit), "history")
    return rc.parse_history(r.stdout)


def current_files(ctx: HostContext, rid: str | None = None) -> dict[str, bytes]:
    """The files of the host's current (or given) release. They hold secrets: only for bundle.diff."""
    r = run(ctx, rc.archive_release(layout_of(ctx.host), rid), "read release")
    return rc.decode_archive(r.stdout, where=ctx.host.name)


def prune(ctx: HostContext, keep: int) -> list[str]:
    """Delete releases beyond the newest `keep` (never current/previous) and images only they used."""
    layout = layout_of(ctx.host)
    state = read_state(ctx)
    rels = rc.parse_releases(run(ctx, rc.list_releases(layout), "prune").stdout)
    doomed = rc.prune_plan(rels, keep, state.current, state.previous)
    if not doomed:
        run(ctx, rc.sweep(layout), "prune")
        return []
    images = rc.parse_release_images(
        run(ctx, rc.release_images(layout, [r.id for r in rels]), "prune").stdout
    )
    unused = rc.unused_images(images, doomed)
    run(
        ctx,
        rc.prune(layout, doomed, unused, protect=[r for r in (state.current, state.previous) if r]),
        "prune",
    )
    return doomed


# --------------------------------------------------------------------------- verification


@dataclass
class Verdict:
    """Is the host serving the expected release? `problems` says why not."""

    ok: bool
    problems: list[str] = field(default_factory=list)
    health_code: int = 0
    version: str | None = None
    services: list[rc.ServiceState] = field(default_factory=list)


def config_hashes(ctx: HostContext, rid: str) -> dict[str, str]:
    """Service -> the config hash Compose stamps on containers of release `rid` (enabled services only)."""
    r = run(ctx, rc.compose_hashes(layout_of(ctx.host), rid), "status")
    return rc.parse_hashes(r.stdout)


def look(ctx: HostContext) -> tuple[list[rc.ServiceState], tuple[int, str | None]]:
    """The project's containers and /health through nginx, in one round trip (`rc.look`): every
    verify poll and `fab status` read both."""
    layout = layout_of(ctx.host)
    cmd = rc.look(layout, http_port_of(ctx.host))
    r = ctx.run(cmd.shell())
    if r.exited != 0:
        run_failed(ctx, cmd, "status", r)
    try:
        ps_out, probe_out = rc.split_look(r.stdout)
    except FleetError as exc:
        raise StepError(ctx.host.name, "status", exc.what) from None
    return rc.parse_ps(ps_out, layout, where=ctx.host.name), parse_health(probe_out)


def check(
    ctx: HostContext,
    version: str,
    rid: str,
    *,
    expect_drained: bool = False,
    hashes: Mapping[str, str] | None = None,
) -> Verdict:
    """One look: every enabled service of release `rid` running with that release's config (healthy
    where it has a healthcheck), and /health through nginx answering 200 with `version` (503 while
    drained)."""
    if hashes is None:
        hashes = config_hashes(ctx, rid)
    states, (code, seen) = look(ctx)
    problems = rc.drift(states, hashes)
    problems += [
        f"{s.service}: {s.health}" for s in states if s.state == "running" and s.health not in ("", "healthy")
    ]
    if expect_drained:
        if code != 503:
            problems.append(f"/health answered {code or 'nothing'} while drained (want 503)")
    elif code != 200:
        problems.append(f"/health answered {code or 'nothing'}")
    elif seen != version:
        problems.append(f"/health reports version {seen!r}, want {version!r}")
    return Verdict(ok=not problems, problems=problems, health_code=code, version=seen, services=states)


def wait_healthy(
    ctx: HostContext,
    version: str,
    rid: str,
    *,
    timeout: float,
    poll: float = 0.5,  # as the rollout engine's verify: a new container turns healthy within ~0.5 s
    expect_drained: bool = False,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Verdict:
    """Poll `check` until it passes or `timeout` runs out; the last verdict explains a failure."""
    deadline = clock() + timeout
    hashes = config_hashes(ctx, rid)
    while True:
        verdict = check(ctx, version, rid, expect_drained=expect_drained, hashes=hashes)
        if verdict.ok or clock() >= deadline:
            return verdict
        sleep(poll)


def disabled_services(record: Mapping[str, Any] | None, bundle: Bundle | None = None) -> list[str]:
    if bundle is not None:
        return list(bundle.disabled_services)
    disabled = (record or {}).get("disabled_services")
    return [str(s) for s in disabled] if isinstance(disabled, list) else []
