"""What the agent does: `boot` (at VM start) and `apply` (on request) converge this VM to the fleet's
desired release; `status` reads what it runs.

    metadata -> desired.json -> the variant for this VM's roles (+beat by the fleet's rule)
    -> manifest + archive -> secrets from Secret Manager -> unseal -> Docker ready (bootstrap at boot)
    -> DRAIN -> preflight + activate (fleet.release.activation, as `fab deploy`) -> UNDRAIN -> /health 200
    -> report (guest attributes, the host's history.jsonl, the store's central history)

Any failure leaves the VM drained (nginx answers /health with 503, so the load balancer keeps it out)
and is reported, masked, in the guest attributes; the exit status is non-zero. It never fights an
operator: `apply` refuses while the fleet lock is held or this instance carries the rollout label,
unless forced; `boot` takes the desired release as it is (it only moves when a rollout succeeded).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any, Protocol

from fleet.agent import apis
from fleet.agent.local import LocalContext, LocalHost
from fleet.commands import bootstrap, health, healthmetric, roles
from fleet.commands import release as rc
from fleet.commands.agent import Store, parse_store
from fleet.commands.base import mask, name
from fleet.errors import FleetError
from fleet.release import activation, sealed
from fleet.release import hoststeps as ht
from fleet.release import secrets as known_secrets
from functions.fleet_contract import LOCK_METADATA_KEY, ROLLOUT_LABEL, is_held, lock_problem, parse_lock

ACTIONS = ("boot", "apply")
# present while `boot`/`apply` runs (the heartbeat, another process, reads it): {"pid", "action"}
BUSY_FILE = "/run/fleet-agent/busy"
DEFAULT_HEALTH_TIMEOUT = 300.0
DEFAULT_KEEP_RELEASES = 5  # the inventory's app.keep_releases default: what `fab deploy` keeps
SERVING_TIMEOUT = 60.0  # seconds /health may take to answer 200 once undrained
ERROR_MAX = 500
_MIG_RE = re.compile(r"^projects/[^/\s]+/(?:zones|regions)/[^/\s]+/instanceGroupManagers/[^/\s]+$")


# --------------------------------------------------------------------------- what the flow needs


class MetadataAPI(Protocol):
    def attribute(self, key: str) -> str | None: ...
    def project_attribute(self, key: str) -> str | None: ...
    def instance_name(self) -> str: ...
    def zone(self) -> str: ...
    def project_id(self) -> str: ...
    def instance_id(self) -> str: ...
    def put_guest(self, key: str, value: str) -> None: ...


class StorageAPI(Protocol):
    def read(self, bucket: str, name: str) -> bytes: ...
    def create(self, bucket: str, name: str, data: bytes, content_type: str = ...) -> None: ...


class SecretsAPI(Protocol):
    def access(self, version: str) -> str: ...


class ComputeAPI(Protocol):
    def members(self, mig: str) -> list[str]: ...
    def labels(self, project: str, zone: str, instance: str) -> dict[str, str]: ...


class MonitoringAPI(Protocol):
    def write(self, project: str, body: Mapping[str, Any]) -> None: ...


@dataclass
class Clients:
    metadata: MetadataAPI
    storage: StorageAPI
    secrets: SecretsAPI
    compute: ComputeAPI
    monitoring: MonitoringAPI | None = None  # the health metric (metadata fleet-health-metric=true)


def google_clients(environ: Mapping[str, str] | None = None) -> Clients:
    """The real clients; endpoint overrides (local stand-ins only) come from the instance metadata."""
    from fleet.agent import apis
    from fleet.agent.http import Http

    md = apis.Metadata(environ=environ)
    http = Http()
    return Clients(
        md,
        apis.Storage(http, md.token, md.attribute("fleet-storage-endpoint")),
        apis.SecretManager(http, md.token, md.attribute("fleet-secretmanager-endpoint")),
        apis.Compute(http, md.token, md.attribute("fleet-compute-endpoint")),
        apis.Monitoring(http, md.token, md.attribute(healthmetric.ENDPOINT_KEY)),
    )


# --------------------------------------------------------------------------- output


class Log:
    """One JSON object per line: {"ts", "step", "msg", ...}; every text masked with the known secrets."""

    def __init__(self, out: IO[str] | None = None) -> None:
        self.out = out or sys.stdout
        self.lines: list[dict[str, Any]] = []

    def __call__(self, step: str, msg: str, **extra: Any) -> None:
        hidden = known_secrets.known()
        # milliseconds: the log is how a boot's steps are timed (bench/agent.py)
        ts = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        line = {"ts": ts, "step": step, "msg": mask(msg, hidden)}
        line.update({k: mask(v, hidden) if isinstance(v, str) else v for k, v in extra.items()})
        self.lines.append(line)
        print(json.dumps(line, sort_keys=True), file=self.out, flush=True)


def now_iso(at: datetime | None = None) -> str:
    return (at or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Config:
    """This VM's part in the fleet, from the instance metadata (docs/agent.md lists the keys)."""

    instance: str
    project: str
    zone: str
    fleet: str
    store: Store
    roles: tuple[str, ...]
    beat: str
    mig: str | None
    host: LocalHost
    health_timeout: float = DEFAULT_HEALTH_TIMEOUT
    deploy_user: str | None = None
    keep_releases: int = DEFAULT_KEEP_RELEASES
    # `fleet-release` in the instance template (a `--strategy replace` rollout): this VM serves that
    # release whatever desired.json says, so the MIG updater, not the store's pointer, moves the fleet
    pinned_release: str | None = None

    @property
    def actor(self) -> str:
        return f"agent@{self.instance}"


def read_config(md: MetadataAPI) -> Config:
    attr = md.attribute
    instance = name(md.instance_name(), "instance name")
    fleet = name(attr("fleet-name") or "", "metadata fleet-name")
    store_url = attr("fleet-store")
    if not store_url:
        raise FleetError(
            "metadata fleet-store is not set", where=instance, hint="the instance template sets it"
        )
    role_list = tuple(name(r.strip(), "role") for r in (attr("fleet-roles") or "app").split(",") if r.strip())
    beat = (attr("fleet-beat") or "none").strip()
    if beat not in roles.BEAT_MODES:
        raise FleetError(f"metadata fleet-beat: {beat!r}", where=instance, hint="first or none")
    mig = (attr("fleet-mig") or "").strip() or None
    if mig is not None and not _MIG_RE.match(mig):
        raise FleetError(
            f"metadata fleet-mig: {mig!r}", where=instance, hint="projects/P/zones/Z/instanceGroupManagers/N"
        )
    timeout_text = (attr("fleet-health-timeout") or str(int(DEFAULT_HEALTH_TIMEOUT))).strip()
    if not timeout_text.isdigit() or int(timeout_text) <= 0:
        raise FleetError(f"metadata fleet-health-timeout: {timeout_text!r}", where=instance, hint="seconds")
    keep_text = (attr("fleet-keep-releases") or str(DEFAULT_KEEP_RELEASES)).strip()
    if not keep_text.isdigit() or int(keep_text) < 2:
        raise FleetError(
            f"metadata fleet-keep-releases: {keep_text!r}",
            where=instance,
            hint="a whole number >= 2 (current and previous are always kept)",
        )
    pinned = (attr("fleet-release") or "").strip() or None
    if pinned is not None:
        try:
            pinned = rc.release_id(pinned)
        except FleetError:
            raise FleetError(
                f"metadata fleet-release: {pinned!r}",
                where=instance,
                hint="a release id (12-64 lowercase hex digits); the replace strategy's template sets it",
            ) from None
    keys = ("fleet-app-dir", "fleet-app-project", "fleet-http-port")
    user = (attr("fleet-deploy-user") or "").strip() or None
    return Config(
        instance=instance,
        project=md.project_id(),
        zone=md.zone(),
        fleet=fleet,
        store=parse_store(store_url),
        roles=role_list,
        beat=beat,
        mig=mig,
        host=LocalHost.from_attributes(instance, {k: attr(k) for k in keys}),
        health_timeout=float(timeout_text),
        deploy_user=name(user, "metadata fleet-deploy-user") if user else None,
        keep_releases=int(keep_text),
        pinned_release=pinned,
    )


# --------------------------------------------------------------------------- the release as the VM has it


@dataclass(frozen=True)
class Unsealed:
    """A stored release with its secrets filled in: what activation needs (as a rendered Bundle offers)."""

    release_id: str
    version: str
    disabled_services: tuple[str, ...]
    files: Mapping[str, tuple[bytes, int]] = field(repr=False)
    values: tuple[str, ...] = field(repr=False, default=())

    def secret_values(self) -> tuple[str, ...]:
        return self.values

    def tar_bytes(self) -> bytes:
        return sealed.pack(self.files)

    def checksums(self) -> dict[str, str]:
        return {path: sealed.sha256(data) for path, (data, _) in sorted(self.files.items())}


class Refused(FleetError):
    """`apply` would fight an operator (fleet lock held, rollout label on this instance)."""


# --------------------------------------------------------------------------- the agent


ContextFactory = Callable[[Config], Any]


def local_context(cfg: Config) -> LocalContext:
    return LocalContext(cfg.host, user=cfg.deploy_user)


class Agent:
    def __init__(
        self,
        clients: Clients,
        *,
        log: Log | None = None,
        context: ContextFactory = local_context,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        busy_file: str | None = None,
    ) -> None:
        self.c = clients
        self.busy_file = busy_file  # None: no marker (tests); the program uses BUSY_FILE
        self.log = log or Log()
        self.context = context
        self.clock = clock
        self.values: list[str] = []
        self._metric_at: datetime | None = None  # the last health metric point written
        self._instance_id: str | None = None

    # ---- reporting

    def _masked(self, text: str) -> str:
        return mask(text, (*self.values, *known_secrets.known()))

    def report(self, **attrs: str) -> None:
        """Guest attributes fleet/<key>, with `at` = now (the action's time); never fatal."""
        attrs.setdefault("at", now_iso(self.clock()))
        self.write_guest(attrs)

    def write_guest(self, attrs: Mapping[str, str]) -> None:
        """Guest attributes fleet/<key>; a failed write is logged, never fatal."""
        for key, value in attrs.items():
            try:
                self.c.metadata.put_guest(key, self._masked(value)[:ERROR_MAX] if key == "error" else value)
            except FleetError as exc:  # the rest would wait out the same retries: stop here
                self.log("report", f"guest attributes not written ({key}): {exc.render()}")
                return

    def central(
        self, cfg: Config, action: str, result: str, rid: str | None, version: str | None, detail: str | None
    ) -> None:
        """One event object in the store's history/ (append-only); a failure is logged, not fatal."""
        at = self.clock().astimezone(UTC)
        event = {
            "format": 1,
            "at": now_iso(at),
            "fleet": cfg.fleet,
            "action": f"agent-{action}",
            "result": result,
            "actor": cfg.actor,
            "instance": cfg.instance,
            "release": rid,
            "version": version,
            "rollout_id": None,
            "detail": self._masked(detail)[:ERROR_MAX] if detail else None,
        }
        key = cfg.store.key("history", f"{at:%Y%m%dT%H%M%S%f}Z-{os.urandom(4).hex()}.json")
        try:
            self.c.storage.create(cfg.store.bucket, key, json.dumps(event, sort_keys=True).encode())
            self.log("history", f"central history: {key}")
        except FleetError as exc:
            self.log("history", f"central history not written: {exc.render()}")

    def record(
        self,
        ctx: Any,
        cfg: Config,
        action: str,
        result: str,
        rid: str | None,
        version: str | None,
        detail: str | None,
    ) -> None:
        """The host's history.jsonl (as every fab action records it); logged when the layout is not there."""
        try:
            entry = rc.history_entry(
                f"agent-{action}",
                result,
                operator=cfg.actor,
                release=rid,
                version=version,
                detail=self._masked(detail)[:ERROR_MAX] if detail else None,
            )
            ht.record(ctx, entry, self.values)
        except FleetError as exc:
            self.log("history", f"host history not written: {exc.render()}")

    # ---- steps

    def refuse_if_busy(self, cfg: Config) -> None:
        """The rule for `apply`: the project's fleet lock (common metadata) must not be held, and this
        instance must not carry the rollout label. A garbled lock counts as held (it cannot be judged)."""
        text = self.c.metadata.project_attribute(LOCK_METADATA_KEY)
        lock, problem = parse_lock(text), lock_problem(text)
        if lock is not None and is_held(lock, self.clock()):
            raise Refused(
                f"the fleet lock is held by {lock.owner} ({lock.reason}, rollout {lock.rollout_id}) "
                f"until {now_iso(lock.expires)}",
                where=cfg.instance,
                hint="wait for it to finish, or `apply --force` if you know better",
            )
        if problem:
            raise Refused(
                f"the fleet lock cannot be read: {problem}", where=cfg.instance, hint="`fab lock.status`"
            )
        label = self.c.compute.labels(cfg.project, cfg.zone, cfg.instance).get(ROLLOUT_LABEL)
        if label:
            raise Refused(
                f"this instance carries the rollout label ({ROLLOUT_LABEL}={label})",
                where=cfg.instance,
                hint="a rollout is working on it; `apply --force` overrides",
            )

    def my_roles(self, cfg: Config) -> tuple[str, ...]:
        """The metadata's roles, plus beat when the fleet's rule picks this VM (first member by name).
        If the MIG cannot be read, no beat: a second beat would run jobs twice, a missing one only late."""
        mine = set(cfg.roles)
        if cfg.beat == "first" and cfg.mig:
            try:
                members = self.c.compute.members(cfg.mig)
            except FleetError as exc:
                self.log("roles", f"MIG members not read, running without beat: {exc.render()}")
                return tuple(sorted(mine))
            if roles.beat_host(members, cfg.beat) == cfg.instance:
                mine.add(roles.BEAT_ROLE)
        return tuple(sorted(mine))

    def desired(self, cfg: Config) -> tuple[str, dict[str, Any] | None]:
        """The store's desired.json; None when the fleet has none yet (nothing was ever published)."""
        key = cfg.store.key("desired.json")
        try:
            raw = self.c.storage.read(cfg.store.bucket, key)
        except apis.NotFound:
            return key, None
        except FleetError as exc:
            raise FleetError(
                f"desired release not read: {exc.what}",
                where=f"gs://{cfg.store.bucket}/{key}",
                hint=exc.hint or "has a release been published for this fleet (fab deploy/rollout)?",
            ) from None
        try:
            data = json.loads(raw)
        except ValueError:
            raise FleetError("desired.json is not JSON", where=f"gs://{cfg.store.bucket}/{key}") from None
        if (
            not isinstance(data, dict)
            or data.get("format") != 1
            or not isinstance(data.get("variants"), dict)
        ):
            raise FleetError(
                "desired.json: not format 1 with variants", where=f"gs://{cfg.store.bucket}/{key}"
            )
        return key, data

    def fetch(self, cfg: Config, rid: str) -> Unsealed:
        b = cfg.store.bucket
        where = f"gs://{b}/{cfg.store.key('releases', rid)}"
        try:
            manifest = sealed.check_manifest(
                json.loads(self.c.storage.read(b, cfg.store.key("releases", rid, "manifest.json"))), where
            )
        except ValueError:
            raise FleetError("manifest.json is not JSON", where=where) from None
        if manifest["release_id"] != rid:
            raise FleetError(f"the manifest is of release {manifest['release_id']}", where=where)
        archive = self.c.storage.read(b, cfg.store.key("releases", rid, "files.tar"))
        values: dict[str, str] = {}
        for key, ref in sorted(sealed.secret_refs(manifest).items()):
            try:
                values[key] = self.c.secrets.access(ref)
            except FleetError as exc:
                raise FleetError(
                    f"secret {key} ({ref}): {exc.what}", where=cfg.instance, hint=exc.hint
                ) from None
        self.values = sorted({v for v in values.values() if v})
        known_secrets.remember(self.values)
        files = sealed.unseal(manifest, archive, values, where=cfg.instance)
        return Unsealed(
            rid,
            str(manifest["version"]),
            tuple(str(s) for s in manifest.get("disabled_services") or ()),
            files,
            tuple(self.values),
        )

    def docker_ready(self, ctx: Any, action: str) -> None:
        """Docker + Compose usable; at boot a VM without them runs the `fab bootstrap` command first."""
        probe = ctx.run(health.DOCKER_PROBE.shell(), timeout=60)
        if probe.exited == 0:
            if action == "boot" and not ht.read_state(ctx).exists:
                self._bootstrap(ctx)
            return
        if action != "boot":
            raise ht.StepError(
                ctx.host.name,
                "docker",
                (probe.stderr or probe.stdout).strip(),
                hint="`python3 -m fleet.agent boot` bootstraps",
            )
        self._bootstrap(ctx)

    def _bootstrap(self, ctx: Any) -> None:
        user = getattr(ctx, "user", None) or "root"
        cmd = bootstrap.bootstrap_command(ht.layout_of(ctx.host), user)
        self.log("bootstrap", f"bootstrapping Docker and the layout for {user}")
        run = getattr(ctx, "run_privileged", None)
        r = run(cmd, timeout=1200) if run else ctx.run(cmd.shell(), timeout=1200)
        if r.exited != 0:
            raise ht.StepError(ctx.host.name, "bootstrap", (r.stderr or r.stdout).strip()[-600:])
        changed, _ = bootstrap.parse_bootstrap(r.stdout)
        self.log("bootstrap", f"bootstrap done ({len(changed)} changed)", changed=changed)

    # ---- the whole thing

    def run(self, action: str, *, force: bool = False) -> int:
        """boot | apply. 0 = serving the desired release; 1 = failed, reported, VM drained."""
        if action not in ACTIONS:
            raise FleetError(f"unknown action {action!r}", hint=" or ".join(ACTIONS))
        mark_busy(self.busy_file, action)
        try:
            return self._run(action, force=force)
        finally:
            clear_busy(self.busy_file)

    def _run(self, action: str, *, force: bool = False) -> int:
        # an apply leaves a serving VM's health alone until it drains it
        self.report(
            action=action, result="running", error="", **({"health": "starting"} if action == "boot" else {})
        )
        cfg: Config | None = None
        ctx: Any = None
        rid: str | None = None
        version: str | None = None
        touched = False
        try:
            cfg = read_config(self.c.metadata)
            self.log("config", f"fleet {cfg.fleet}, store gs://{cfg.store.bucket}/{cfg.store.prefix}")
            ctx = self.context(cfg)
            if action == "apply" and not force:
                self.refuse_if_busy(cfg)
            key, desired = (None, None) if cfg.pinned_release else self.desired(cfg)
            if cfg.pinned_release:
                rid = cfg.pinned_release
                self.log("desired", f"release {rid}: pinned by the instance template (fleet-release)")
            elif desired is None:
                # a new fleet: get the VM ready, the first deploy or rollout will publish a release
                self.docker_ready(ctx, action)
                self.log("desired", "no desired release yet (nothing published): bootstrapped only")
                self.report(action=action, result="ok", health="none", error="", release="", version="")
                self.central(cfg, action, "ok", None, None, "no desired release yet: bootstrapped only")
                return 0
            else:
                mine = self.my_roles(cfg)
                variant = roles.variant_key(mine)
                rid = desired["variants"].get(variant)
                if not isinstance(rid, str):
                    raise FleetError(
                        f"desired.json has no release for roles {variant!r} "
                        f"(it has: {', '.join(sorted(desired['variants']))})",
                        where=f"gs://{cfg.store.bucket}/{key}",
                        hint="publish a release for this role set (fab deploy/rollout on an inventory "
                        "with it)",
                    )
                self.log("desired", f"release {rid} ({variant}), version {desired.get('version')}")
            release = self.fetch(cfg, rid)
            version = release.version
            self.log(
                "fetch", f"release {rid} unsealed ({len(release.files)} files, {len(release.values)} secrets)"
            )
            self.docker_ready(ctx, action)
            touched = True
            if action != "boot":
                self.report(health="starting")
            ht.drain(ctx)
            self.log("drain", "drained: /health answers 503 until the release is healthy")
            found = activation.preflight(ctx, release)
            self.log("preflight", f"staged ({found['bytes_sent']} bytes sent), validated, images pulled")
            outcome = activation.activate(
                ctx,
                release,
                found["state"],
                operator=cfg.actor,
                health_timeout=cfg.health_timeout,
                action=f"agent-{action}",
            )
            if outcome.result not in ("deployed", "unchanged"):
                raise FleetError(outcome.error or f"activation: {outcome.result}", where=cfg.instance)
            self.log("activate", f"{outcome.result}: release {rid} healthy while drained")
            ht.undrain(ctx)
            verdict = ht.wait_healthy(ctx, release.version, rid, timeout=SERVING_TIMEOUT)
            if not verdict.ok:
                ht.drain(ctx)
                raise FleetError("after undrain: " + "; ".join(verdict.problems), where=cfg.instance)
            self.log("serve", f"undrained: /health 200 with version {release.version}")
            self.prune(ctx, cfg)
        except Exception as exc:  # every failure is reported: the VM must never look fine when it is not
            text = self._masked(
                exc.render() if isinstance(exc, FleetError) else f"{type(exc).__name__}: {exc}"
            )
            self.log("failed", text)
            # at boot the VM must not serve half-configured; an apply that failed before it touched the
            # host (refused, store unreachable) leaves the VM serving what it served
            if ctx is not None and (action == "boot" or touched):
                self._stay_drained(ctx)
            self.report(
                action=action,
                result="failed",
                **({"health": "failed"} if action == "boot" or touched else {}),
                error=text[:ERROR_MAX],
                **({"release": rid} if rid else {}),
                **({"version": version} if version else {}),
            )
            if cfg is not None:
                if ctx is not None and not isinstance(exc, Refused):
                    self.record(ctx, cfg, action, "failed", rid, version, text)
                self.central(
                    cfg, action, "refused" if isinstance(exc, Refused) else "failed", rid, version, text
                )
            self.log("done", "not serving this release: reported in the guest attributes")
            return 1
        self.record(ctx, cfg, action, "ok", rid, version, None)
        self.report(action=action, result="ok", health="ok", error="", release=rid, version=release.version)
        self.central(cfg, action, "ok", rid, release.version, None)
        self.log("done", f"serving release {rid} (version {release.version})")
        return 0

    def prune(self, ctx: Any, cfg: Config) -> None:
        """Old releases and the images only they used go, as after `fab deploy`: a VM the agent keeps
        current for months must not fill its disk. Housekeeping: a failure is logged, never fatal."""
        try:
            gone = ht.prune(ctx, cfg.keep_releases)
        except FleetError as exc:
            self.log("prune", self._masked(f"not pruned: {exc.what}"))
            return
        if gone:
            self.log("prune", f"removed {len(gone)} old release(s): {', '.join(gone)}")

    def observe(self) -> int:
        """What this VM runs NOW (whoever deployed it: this agent or an operator over SSH) into the
        guest attributes release, version, health and observed; the last action's fields stay. So
        `fab status --no-ssh` is right after an operator's deploy or rollout too."""
        try:
            cfg = read_config(self.c.metadata)
            found = status(self.context(cfg))
        except FleetError as exc:
            self.log("observe", exc.render())
            return 1
        found["agent"] = busy_action(self.busy_file)
        state = health_state(found)
        self.write_guest(
            {
                "release": found["release"] or "",
                "version": found["version"] or "",
                "health": state,
                "observed": now_iso(self.clock()),
            }
        )
        self.write_metric(cfg, state)
        return 0

    def write_metric(self, cfg: Config, state: str) -> bool:
        """The health metric's point for this heartbeat (docs/selfheal.md), when the metadata
        `fleet-health-metric` is true; at most one point every MIN_WRITE_INTERVAL seconds, as
        Monitoring allows. A failed write is logged, never fatal (the absence policy notices)."""
        if self.c.monitoring is None or not healthmetric.enabled(
            self.c.metadata.attribute(healthmetric.ENABLE_KEY)
        ):
            return False
        now = self.clock()
        if (
            self._metric_at is not None
            and (now - self._metric_at).total_seconds() < healthmetric.MIN_WRITE_INTERVAL
        ):
            return False
        try:
            if self._instance_id is None:
                self._instance_id = self.c.metadata.instance_id()
            body = healthmetric.time_series_body(
                project=cfg.project,
                zone=cfg.zone,
                instance_id=self._instance_id,
                fleet=cfg.fleet,
                value=healthmetric.value_of(state),
                end_time=now.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            )
            self.c.monitoring.write(cfg.project, body)
        except (FleetError, ValueError) as exc:
            text = exc.render() if isinstance(exc, FleetError) else str(exc)
            self.log("metric", f"health metric not written: {text}")
            return False
        self._metric_at = now
        return True

    def watch(
        self, every: float, rounds: int | None = None, sleep: Callable[[float], None] = time.sleep
    ) -> int:
        """`observe` every `every` seconds (the VM's heartbeat, as a kubelet's node status)."""
        done = 0
        while rounds is None or done < rounds:
            self.observe()
            done += 1
            if rounds is None or done < rounds:
                sleep(every)
        return 0

    def _stay_drained(self, ctx: Any) -> None:
        try:
            if ht.read_state(ctx).exists:
                ht.drain(ctx)
                self.log("drain", "left drained: the load balancer keeps this VM out")
        except FleetError as exc:
            self.log("drain", f"could not drain: {exc.render()}")


def health_state(found: Mapping[str, Any]) -> str:
    """The heartbeat's health from `status()`: none, drained, ok or failed.

    `drained` is an operator's drain (a deploy or rollout switching the VM). A VM the agent itself
    drained — while its boot or apply runs (`found["agent"]`, the busy marker), or left drained after
    one failed — is `failed`: that drain keeps a VM that does not serve out of the load balancer, as
    a failing readiness check would, and autohealing must still see it (a VM the MIG just created is
    left alone by autoheal's initial delay, as by the MIG's own)."""
    seen = found.get("health") or {}
    last = found.get("last") or {}
    if not found.get("layout") or not found.get("release"):
        return "none"
    if found.get("drained"):
        agent_failed = str(last.get("action", "")).startswith("agent-") and last.get("result") == "failed"
        return "failed" if agent_failed or found.get("agent") else "drained"
    if seen.get("code") == 200 and seen.get("version") == found.get("version"):
        return "ok"
    return "failed"


def mark_busy(path: str | None, action: str) -> None:
    """The marker the heartbeat reads while `boot`/`apply` runs; best effort (never fails the run)."""
    if path is None:
        return
    with contextlib.suppress(OSError):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as fh:
            json.dump({"pid": os.getpid(), "action": action}, fh)


def clear_busy(path: str | None) -> None:
    if path is None:
        return
    with contextlib.suppress(OSError):
        os.unlink(path)


def busy_action(path: str | None) -> str | None:
    """The action `boot`/`apply` is running now, None when none is (no marker, or its process died)."""
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        pid, action = int(data["pid"]), str(data["action"])
        os.kill(pid, 0)  # signal 0: is the process there?
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return action


def status(ctx: Any) -> dict[str, Any]:
    """What this VM runs (release, version, drained, /health), read locally, no API call."""
    state = ht.read_state(ctx)
    out: dict[str, Any] = {
        "layout": state.exists,
        "release": state.current,
        "version": state.version,
        "previous": state.previous,
        "drained": state.drained,
        "last": state.last_history,
    }
    if state.exists:
        r = ctx.run(health.health_command(ht.http_port_of(ctx.host)).shell(), timeout=10)
        code, seen = health.parse_health(r.stdout)
        out["health"] = {"code": code, "version": seen}
    return out
