"""A Compose v2 CLI on THIS machine, for tests that run `docker compose config` (no daemon needed).

Debian bookworm ships only Compose v1, which lacks what the stack uses (profiles, `start_interval`,
`required`...). When `docker compose version` is not v2 we fetch Debian trixie's `docker-compose`
package with a private apt configuration (the system's apt sources, lists and cache stay untouched),
unpack it and install its CLI plugin. Everything downloaded is cached under `.fleet/hostcompose/`.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

from fleet.errors import HostSetupError
from fleet.local.rootfs import configured_mirror
from fleet.paths import STATE_DIR

CACHE_DIR = STATE_DIR / "hostcompose"
PLUGIN_DIR = Path("/usr/local/lib/docker/cli-plugins")
SUITE = "trixie"
PACKAGE = "docker-compose"
PLUGIN_IN_DEB = "usr/libexec/docker/cli-plugins/docker-compose"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
_VERSION_RE = re.compile(r"(?:^|[\sv])(\d+)\.(\d+)\.(\d+)")


def parse_version(text: str) -> tuple[int, int, int] | None:
    """The first x.y.z in `docker compose version` output ('Docker Compose version v2.26.1', '2.26.1')."""
    match = _VERSION_RE.search(text)
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def sources_text(mirror: str, suite: str = SUITE, keyring: str = KEYRING) -> str:
    """A deb822 sources file with only the trixie suite of the mirror this machine already uses."""
    return f"Types: deb\nURIs: {mirror}\nSuites: {suite}\nComponents: main\nSigned-By: {keyring}\n"


def apt_options(workdir: Path) -> list[str]:
    """apt options that point every piece of state into `workdir`, away from the system's apt."""
    return [
        "-o",
        f"Dir::Etc::SourceList={workdir / 'trixie.sources'}",
        "-o",
        "Dir::Etc::SourceParts=/dev/null",
        "-o",
        f"Dir::State::Lists={workdir / 'lists'}",
        "-o",
        f"Dir::Cache={workdir / 'cache'}",
        "-o",
        "APT::Sandbox::User=root",
    ]


def update_argv(workdir: Path) -> list[str]:
    return ["apt-get", "-q", *apt_options(workdir), "update"]


def download_argv(workdir: Path, package: str = PACKAGE) -> list[str]:
    return ["apt-get", "-q", *apt_options(workdir), "download", package]


def extract_argv(deb: Path, dest: Path) -> list[str]:
    return ["dpkg-deb", "-x", str(deb), str(dest)]


def _run(
    argv: Sequence[str], *, cwd: Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """The one place this module runs a command."""
    return subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


def _is_v2(prefix: Sequence[str]) -> bool:
    try:
        proc = _run([*prefix, "version", "--short"], timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    found = parse_version(proc.stdout) if proc.returncode == 0 else None
    return found is not None and found[0] >= 2


@contextlib.contextmanager
def _locked(cache: Path) -> Iterator[None]:
    """Parallel test workers (or engineers) must not download and install at the same time."""
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / "lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _fail(what: str, proc: subprocess.CompletedProcess[str]) -> HostSetupError:
    tail = "\n".join((proc.stderr + proc.stdout).strip().splitlines()[-8:])
    return HostSetupError(
        f"{what} failed (exit {proc.returncode})\n{tail}",
        where="this machine",
        hint=f"install a Compose v2 CLI plugin in {PLUGIN_DIR} by hand, or set FLEET_DEBIAN_MIRROR",
    )


def fetch_plugin(cache: Path = CACHE_DIR) -> Path:
    """Download and unpack trixie's docker-compose; returns the cached plugin binary."""
    plugin = cache / "docker-compose"
    if plugin.is_file() and os.access(plugin, os.X_OK):
        return plugin
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise HostSetupError(
                f"no Compose v2 CLI and no {tool} to fetch one",
                where="this machine",
                hint=f"install the Compose v2 plugin as {PLUGIN_DIR / 'docker-compose'}",
            )
    work = cache / "apt"
    for sub in ("lists/partial", "cache/archives/partial"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    (work / "trixie.sources").write_text(sources_text(configured_mirror()))
    proc = _run(update_argv(work))
    if proc.returncode != 0:
        raise _fail(f"apt-get update ({SUITE})", proc)
    debs = work / "debs"
    shutil.rmtree(debs, ignore_errors=True)
    debs.mkdir()
    proc = _run(download_argv(work), cwd=debs)
    found = sorted(debs.glob(f"{PACKAGE}_*.deb"))
    if proc.returncode != 0 or not found:
        raise _fail(f"apt-get download {PACKAGE}", proc)
    unpacked = work / "unpacked"
    shutil.rmtree(unpacked, ignore_errors=True)
    proc = _run(extract_argv(found[-1], unpacked))
    if proc.returncode != 0:
        raise _fail("dpkg-deb -x", proc)
    tmp = cache / "docker-compose.tmp"
    shutil.copyfile(unpacked / PLUGIN_IN_DEB, tmp)
    tmp.chmod(0o755)
    os.replace(tmp, plugin)
    shutil.rmtree(work, ignore_errors=True)  # lists and .deb: ~25 MB we no longer need
    return plugin


def install_plugin(plugin: Path, plugin_dir: Path = PLUGIN_DIR) -> Path:
    """Install as a Docker CLI plugin, atomically so a concurrent `docker` never sees half a file."""
    plugin_dir.mkdir(parents=True, exist_ok=True)
    target = plugin_dir / "docker-compose"
    tmp = plugin_dir / f".docker-compose.{os.getpid()}"
    shutil.copyfile(plugin, tmp)
    tmp.chmod(0o755)
    os.replace(tmp, target)
    return target


def compose_cli(cache: Path = CACHE_DIR) -> list[str]:
    """argv prefix of a Compose v2 CLI: `docker compose` if possible, else the standalone plugin binary."""
    return list(_compose_cli(cache))


@functools.cache
def _compose_cli(cache: Path) -> tuple[str, ...]:
    if _is_v2(("docker", "compose")):
        return ("docker", "compose")
    with _locked(cache):
        if _is_v2(("docker", "compose")):  # another process installed it meanwhile
            return ("docker", "compose")
        plugin = fetch_plugin(cache)
        if shutil.which("docker"):
            with contextlib.suppress(OSError):  # not root: the standalone binary below does the same job
                install_plugin(plugin)
            if _is_v2(("docker", "compose")):
                return ("docker", "compose")
        if _is_v2((str(plugin),)):  # a v2 plugin also runs standalone
            return (str(plugin),)
    raise HostSetupError(
        f"{plugin} does not report Compose v2",
        where="this machine",
        hint=f"delete {cache} and retry, or install a Compose v2 CLI plugin by hand",
    )


def main() -> int:
    """`python -m fleet.local.hostcompose`: make sure the CLI exists and print its argv prefix."""
    try:
        print(" ".join(compose_cli()))
    except HostSetupError as exc:
        print(exc.render())
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
