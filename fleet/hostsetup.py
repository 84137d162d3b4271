"""Make sure the machine running the tool has the Debian packages a task needs.

Used by nox sessions and the local fleet so that the README's commands work on a fresh machine:
a missing package is installed with apt when we are root, otherwise we say exactly what to install.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterable

from fleet.errors import HostSetupError

# command that must exist -> Debian package that provides it
PACKAGES: dict[str, dict[str, str]] = {
    "ssh": {"/usr/sbin/sshd": "openssh-server", "ssh": "openssh-client", "ssh-keygen": "openssh-client"},
    "localfleet": {
        "/usr/sbin/dockerd": "docker.io",
        "/usr/sbin/debootstrap": "debootstrap",
        "/usr/sbin/haproxy": "haproxy",
        "/usr/sbin/sshd": "openssh-server",
        "ssh-keygen": "openssh-client",
    },
    # the stand-ins' data-layer tests (tests/integration/test_standin_data.py): a PostgreSQL server
    # (Debian's default version) and redis-server, run as plain processes
    "data": {"/usr/bin/pg_ctlcluster": "postgresql", "/usr/bin/redis-server": "redis-server"},
}
PROFILES: dict[str, tuple[str, ...]] = {
    "tests": ("ssh", "localfleet", "data"),
    "bench": ("ssh", "localfleet"),
    "demo": ("ssh", "localfleet"),
    "ssh": ("ssh",),
    "localfleet": ("localfleet",),
}


def _present(command: str) -> bool:
    if command.startswith("/"):
        return os.access(command, os.X_OK)
    return shutil.which(command) is not None


def missing_packages(groups: Iterable[str]) -> list[str]:
    """Debian packages to install so every command of `groups` exists (pure apart from PATH lookups)."""
    wanted: list[str] = []
    for group in groups:
        for command, package in PACKAGES[group].items():
            if not _present(command) and package not in wanted:
                wanted.append(package)
    return wanted


def ensure(groups: Iterable[str]) -> list[str]:
    """Install what is missing; returns the packages installed. Raises HostSetupError if we cannot."""
    wanted = missing_packages(groups)
    if not wanted:
        return []
    if os.geteuid() != 0:
        raise HostSetupError(
            f"missing packages: {' '.join(wanted)}",
            where="this machine",
            hint=f"run as root, or install them first: sudo apt-get install -y {' '.join(wanted)}",
        )
    if shutil.which("apt-get") is None:
        raise HostSetupError(
            f"missing packages: {' '.join(wanted)} and no apt-get to install them",
            where="this machine",
            hint="install the equivalent packages with your system's package manager",
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    print(f"hostsetup: installing {' '.join(wanted)} with apt-get", file=sys.stderr, flush=True)
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *wanted],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    still = missing_packages(groups)
    if still:
        raise HostSetupError(f"apt-get finished but {' '.join(still)} still missing", where="this machine")
    return wanted


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    profile = args[0] if args else "tests"
    try:
        ensure(PROFILES[profile])
    except HostSetupError as exc:
        print(exc.render(), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
