"""The Debian trixie base every local image starts from: debootstrap minbase, imported into Docker.

No registry can be reached, so there is no `FROM debian`; this rootfs is built from the Debian
mirror this machine already uses, once, and cached under a tag derived from its inputs.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path

from fleet import hostsetup
from fleet.errors import HostSetupError
from fleet.local import dockercmd, execute
from fleet.local.config import LocalConfig
from fleet.local.progress import Progress

SUITE = "trixie"
VARIANT = "minbase"
# in the base so every image has them: stand-ins (python, healthcheck tools) and VMs alike
INCLUDE = ("python3-minimal", "libpython3-stdlib", "curl", "wget", "ca-certificates")
RECIPE = "5"  # bump when the steps below change meaning
DEFAULT_MIRROR = "http://deb.debian.org/debian"

# keep images small: no docs/man/locales from later apt installs
DPKG_EXCLUDES = """path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-include=/usr/share/locale/locale.alias
"""
APT_CONF = 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\nAcquire::Retries "3";\n'


def mirrors_from(text: str) -> list[str]:
    """Debian mirror URIs in a sources file (deb822 `URIs:` or one-line `deb URI suite`), not security."""
    found: list[str] = []
    for match in re.finditer(r"^\s*URIs:\s*(.+)$", text, re.M):
        found += match.group(1).split()
    for match in re.finditer(r"^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+\S+", text, re.M):
        found.append(match.group(1))
    return [
        u.rstrip("/")
        for u in found
        if u.startswith(("http://", "https://")) and "security" not in u and u.rstrip("/").endswith("/debian")
    ]


def configured_mirror(etc_apt: Path = Path("/etc/apt")) -> str:
    """The mirror this machine's apt uses, so debootstrap goes where the network allows."""
    env = os.environ.get("FLEET_DEBIAN_MIRROR")
    if env:
        return env.rstrip("/")
    files = sorted((etc_apt / "sources.list.d").glob("*.sources")) + sorted(
        (etc_apt / "sources.list.d").glob("*.list")
    )
    files.append(etc_apt / "sources.list")
    for path in files:
        try:
            mirrors = mirrors_from(path.read_text())
        except OSError:
            continue
        if mirrors:
            return mirrors[0]
    return DEFAULT_MIRROR


def input_hash(mirror: str) -> str:
    data = "\n".join([RECIPE, SUITE, VARIANT, ",".join(INCLUDE), mirror, DPKG_EXCLUDES, APT_CONF])
    return hashlib.sha256(data.encode()).hexdigest()[:16]


def base_tag(mirror: str | None = None) -> str:
    return f"fleet-local/base:{SUITE}-{input_hash(mirror or configured_mirror())}"


def strip_locales(target: Path) -> None:
    """The message catalogues debootstrap installed (~37 of the base's ~163 MB), as DPKG_EXCLUDES
    keeps them out of later installs: every new VM pulls the base, and its size is most of a boot."""
    locale = target / "usr/share/locale"
    for item in locale.glob("*"):
        if item.name == "locale.alias":
            continue
        if item.is_dir() and not item.is_symlink():
            shutil.rmtree(item, ignore_errors=True)
        else:
            item.unlink(missing_ok=True)


def debootstrap_argv(target: Path, mirror: str) -> list[str]:
    return [
        "debootstrap",
        f"--variant={VARIANT}",
        f"--include={','.join(INCLUDE)}",
        SUITE,
        str(target),
        mirror,
    ]


def ensure_base(config: LocalConfig, progress: Progress) -> str:
    """Build (or find cached) the base image; returns its tag, which changes with its inputs."""
    mirror = configured_mirror()
    tag = base_tag(mirror)
    if execute.run(dockercmd.image_exists(tag), check=False).returncode == 0:
        return tag
    hostsetup.ensure(("localfleet",))
    if os.geteuid() != 0:
        raise HostSetupError(
            "debootstrap needs root to build the trixie rootfs",
            where="this machine",
            hint="run the first build as root (later runs use the cached image)",
        )
    workdir = config.state_dir / "rootfs"
    workdir.mkdir(parents=True, exist_ok=True)
    for stale in workdir.iterdir():  # half-finished earlier attempts (callers hold the build lock)
        shutil.rmtree(stale, ignore_errors=True)
    target = Path(tempfile.mkdtemp(prefix=tag.split(":")[1] + ".", dir=workdir))
    os.chmod(target, 0o755)  # noqa: S103 - it becomes the image's "/"
    try:
        with progress.step(f"debootstrap {SUITE} ({VARIANT}) from {mirror}"):
            execute.stream(
                debootstrap_argv(target, mirror),
                progress.note,
                timeout=900,
                hint=f"is {mirror} reachable? set FLEET_DEBIAN_MIRROR to another Debian mirror",
            )
            (target / "etc/dpkg/dpkg.cfg.d/fleet-excludes").write_text(DPKG_EXCLUDES)
            (target / "etc/apt/apt.conf.d/90fleet").write_text(APT_CONF)
            for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
                for item in (target / junk).glob("*"):
                    if item.is_file():
                        item.unlink()
            for docs in ("usr/share/doc", "usr/share/man", "usr/share/info"):
                shutil.rmtree(target / docs, ignore_errors=True)
                (target / docs).mkdir(parents=True, exist_ok=True)
            strip_locales(target)
        with progress.step(f"import rootfs as {tag}"):
            execute.stream(
                dockercmd.import_rootfs(tag, ['CMD ["/bin/bash"]', "ENV LANG=C.UTF-8"]),
                progress.note,
                stdin_from=dockercmd.tar_dir(target),
                timeout=600,
            )
    finally:
        shutil.rmtree(target, ignore_errors=True)
    return tag
