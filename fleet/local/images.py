"""Every image the local fleet uses, built here from the trixie base and cached by input hash.

The VM image, the registry, and the stand-ins for each stack service. An image is rebuilt only
when its inputs change (its Dockerfile, the files it copies, build args, or the base under it);
stand-ins are then pushed to the local registry and saved as one tarball for fast `docker load`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from fleet.local import dockercmd, execute, registry, rootfs
from fleet.local.config import LocalConfig
from fleet.local.progress import Progress
from fleet.release.pairing import load_manifest

LABEL = "fleet.inputs"
# 1.2.0-broken: /health 503 forever; 1.3.0-migration-fails: its `flask upgrade-db` fails on purpose
VERSIONS = ("1.0.0", "1.1.0", "1.2.0-broken", "1.3.0-migration-fails")
DATA_IMAGE = "fleet-local/data:latest"  # PostgreSQL + pgvector and Redis (fleet/local/dataservices.py)
VM_IMAGE = "fleet-local/vm:latest"
REGISTRY_IMAGE = "fleet-local/registry:latest"
TARBALL = "standins.tar"


@dataclass(frozen=True)
class ImageSpec:
    """One image: where its sources are and what makes it different from its siblings."""

    ref: str
    context: str  # directory under images/
    dockerfile: str
    inputs: tuple[str, ...]  # files in the context whose content defines the image
    build_args: tuple[tuple[str, str], ...] = ()
    standin: bool = True  # pushed to the registry, saved in the tarball
    group: str = ""  # images of one group build one after another (shared layers)

    def input_hash(self, base: str, root: Path) -> str:
        digest = hashlib.sha256()
        digest.update(f"{base}\n{self.dockerfile}\n{sorted(self.build_args)}\n".encode())
        for name in sorted(set((self.dockerfile, *self.inputs))):
            digest.update(name.encode() + b"\0" + (root / self.context / name).read_bytes() + b"\0")
        return digest.hexdigest()[:16]


def specs(config: LocalConfig) -> list[ImageSpec]:
    reg = config.registry_ref
    py = ("Dockerfile", "standin.py")
    out = [
        ImageSpec(VM_IMAGE, "vm", "Dockerfile", ("sshd.conf", "daemon.json", "fleet-init"), standin=False),
        ImageSpec(REGISTRY_IMAGE, "registry", "Dockerfile", ("config.yml",), standin=False),
        ImageSpec(DATA_IMAGE, "data", "Dockerfile", ("fleet-data-init",), standin=False),
        ImageSpec(f"{reg}/nginx:local", "standin", "nginx.Dockerfile", ("nginx.conf", "standin.py")),
        ImageSpec(f"{reg}/squid:local", "standin", "squid.Dockerfile", ("squid.conf", "standin.py")),
    ]
    manifest = load_manifest()
    for version in VERSIONS:
        broken = "1" if version.endswith("-broken") else "0"
        # the schema revision its `flask upgrade-db` applies: compose/releases.yaml's, as the rollout sees it
        schema = (manifest.revision(version) if manifest is not None else None) or ""
        migration = "fail" if version.endswith("-migration-fails") else ""
        args = [("ROLE", "api"), ("VERSION", version), ("BROKEN", broken)]
        args += [(k, v) for k, v in (("SCHEMA", schema), ("MIGRATION", migration)) if v]
        out.append(
            ImageSpec(f"{reg}/dify-api:{version}", "standin", "Dockerfile", py, tuple(args), group="py")
        )
        out.append(
            ImageSpec(
                f"{reg}/dify-web:{version}",
                "standin",
                "Dockerfile",
                py,
                (("ROLE", "web"), ("VERSION", version)),
                group="py",
            )
        )
    out.append(
        ImageSpec(
            f"{reg}/dify-sandbox:local",
            "standin",
            "Dockerfile",
            py,
            (("ROLE", "sandbox"), ("VERSION", "local")),
            group="py",
        )
    )
    out.append(
        ImageSpec(
            f"{reg}/dify-plugin-daemon:local",
            "standin",
            "Dockerfile",
            py,
            (("ROLE", "plugin_daemon"), ("VERSION", "local")),
            group="py",
        )
    )
    return out


def fleet_vm_ref(config: LocalConfig) -> str:
    """The VM image this fleet's instances run: VM_IMAGE as this fleet's last build left it.

    Checkouts sharing one Docker engine may retag VM_IMAGE to their own build while this fleet runs
    (its MIG creates VMs at any time); the fleet's own tag keeps every VM it creates on its image."""
    return f"{VM_IMAGE.rsplit(':', 1)[0]}:fleet-{config.name}"


def pin_vm_image(config: LocalConfig, *, only_if_missing: bool = False) -> str:
    """Tag VM_IMAGE as this fleet's VM image (after a build; or when the fleet has none yet)."""
    ref = fleet_vm_ref(config)
    if only_if_missing and execute.run(dockercmd.image_exists(ref), check=False).returncode == 0:
        return ref
    execute.run(dockercmd.tag(VM_IMAGE, ref))
    return ref


def standin_refs(config: LocalConfig) -> list[str]:
    return [s.ref for s in specs(config) if s.standin]


def cached(ref: str, wanted: str) -> bool:
    proc = execute.run(dockercmd.image_label(ref, LABEL), check=False)
    return proc.returncode == 0 and proc.stdout.strip() == wanted


@dataclass
class BuildReport:
    base: str = ""
    built: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    pushed: list[str] = field(default_factory=list)
    tarball: Path | None = None
    tarball_written: bool = False


def _build(spec: ImageSpec, base: str, digest: str, root: Path, note: Callable[[str], None]) -> None:
    context = root / spec.context
    execute.stream(
        dockercmd.build(
            context,
            spec.ref,
            dockerfile=context / spec.dockerfile,
            build_args={"BASE": base, **dict(spec.build_args)},
            labels={LABEL: digest, "fleet.local": "1"},
        ),
        note,
        timeout=900,
        hint="the Debian mirror must be reachable for apt inside the build",
    )


def build_images(config: LocalConfig, progress: Progress, *, parallel: int = 3) -> BuildReport:
    """Build what is missing or stale (apt-heavy images in parallel); no registry involved."""
    report = BuildReport()
    report.base = rootfs.ensure_base(config, progress)
    todo: dict[str, list[tuple[ImageSpec, str]]] = {}
    for spec in specs(config):
        digest = spec.input_hash(report.base, config.images_src)
        if cached(spec.ref, digest):
            report.cached.append(spec.ref)
        else:
            todo.setdefault(spec.group or spec.ref, []).append((spec, digest))
    if not todo:
        return report
    names = [s.ref.rsplit("/", 1)[-1] for group in todo.values() for s, _ in group]
    lock = threading.Lock()

    def run_group(group: list[tuple[ImageSpec, str]]) -> None:
        for spec, digest in group:
            short = spec.ref.rsplit("/", 1)[-1]

            def note(line: str, short: str = short) -> None:
                progress.note(f"[{short}] {line}")

            _build(spec, report.base, digest, config.images_src, note)
            with lock:
                report.built.append(spec.ref)

    # the longest (apt-heavy) groups first, so the pool stays busy
    ordered = sorted(todo.values(), key=lambda g: (g[0][0].group == "py", g[0][0].ref != VM_IMAGE))
    with (
        progress.step(f"build {len(names)} image(s): {', '.join(names)}"),
        ThreadPoolExecutor(parallel) as pool,
    ):
        for future in [pool.submit(run_group, group) for group in ordered]:
            future.result()
    return report


def publish(config: LocalConfig, progress: Progress, report: BuildReport) -> None:
    """Push stand-ins the registry lacks, and refresh the tarball when any stand-in changed."""
    registry.ensure_running(config, REGISTRY_IMAGE)
    refs = standin_refs(config)
    stale = [r for r in refs if not registry.is_pushed(config, r)]
    if stale:
        with progress.step(f"push {len(stale)} stand-in image(s) to {config.registry_ref}"):
            for ref in stale:
                progress.note(ref)
                registry.push(config, ref)
                report.pushed.append(ref)
    config.tarball_dir.mkdir(parents=True, exist_ok=True)
    tarball = config.tarball_dir / TARBALL
    stamp = tarball.with_suffix(".inputs")
    ids = {r: execute.run(dockercmd.image_exists(r)).stdout.strip() for r in refs}
    wanted = json.dumps(ids, sort_keys=True)
    report.tarball = tarball
    if not tarball.exists() or not stamp.exists() or stamp.read_text() != wanted:
        with progress.step(f"save stand-ins to {tarball}"):
            partial = tarball.with_suffix(".tmp")
            execute.run(dockercmd.save(refs, partial), timeout=600)
            partial.replace(tarball)
            stamp.write_text(wanted)
            report.tarball_written = True


def prune_superseded() -> None:
    """Drop our images that a rebuild left untagged, so repeated edits don't fill the disk."""
    ids = execute.run(dockercmd.image_ids(label="fleet.local", dangling=True), check=False).stdout.split()
    if ids:
        execute.run(dockercmd.rmi_ids(ids), check=False, timeout=300)


@contextlib.contextmanager
def build_lock(config: LocalConfig) -> Iterator[None]:
    """One builder at a time across processes, whichever fleet they build for (the images, the
    engine and the stand-in tarball are shared): a second one then finds everything cached."""
    config.fleet_dir.mkdir(parents=True, exist_ok=True)
    with open(config.fleet_dir / "build.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def build_all(config: LocalConfig | None = None, progress: Progress | None = None) -> BuildReport:
    """Everything the fleet needs, cached: base, VM, registry, stand-ins (pushed and saved)."""
    from fleet.local.engine import ensure_engine

    cfg = config or LocalConfig.from_env()
    prog = progress or Progress()
    ensure_engine(cfg)
    with build_lock(cfg):
        report = build_images(cfg, prog)
        pin_vm_image(cfg)
        publish(cfg, prog, report)
        if report.built:
            prune_superseded()
    return report


def clean(config: LocalConfig | None = None, progress: Progress | None = None) -> list[str]:
    """Remove every image built here (and the registry data, tarball): the next build starts cold."""
    cfg = config or LocalConfig.from_env()
    prog = progress or Progress()
    with build_lock(cfg):
        return _clean(cfg, prog)


def _clean(cfg: LocalConfig, prog: Progress) -> list[str]:
    registry.remove(cfg, data=True)
    ids: list[str] = []
    sources = (dockercmd.image_ids(label="fleet.local"), dockercmd.image_ids(repository="fleet-local/base"))
    for argv in sources:
        ids += [i for i in execute.run(argv).stdout.split() if i and i not in ids]
    if ids:
        with prog.step(f"remove {len(ids)} image(s)"):
            execute.run(dockercmd.rmi_ids(ids), check=False, timeout=300)
    for path in (cfg.tarball_dir / TARBALL, (cfg.tarball_dir / TARBALL).with_suffix(".inputs")):
        path.unlink(missing_ok=True)
    return ids
