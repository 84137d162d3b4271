"""A Docker engine on this machine: install it (Debian docker.io) and start dockerd when none runs.

A fresh machine has no engine; the local fleet must not depend on someone having started one.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

from fleet import hostsetup
from fleet.errors import HostSetupError
from fleet.local import dockercmd, execute
from fleet.local.config import LocalConfig
from fleet.waits import polling

SOCKET = "unix:///var/run/docker.sock"


def engine_version() -> str | None:
    """The daemon's version, or None when no daemon answers.

    A daemon we may not talk to is not "missing": starting a second one would fail obscurely.
    """
    if shutil.which("docker") is None:
        return None
    proc = execute.run(dockercmd.server_version(), check=False, timeout=15)
    version = proc.stdout.strip()
    if proc.returncode == 0 and version:
        return version
    if "permission denied" in proc.stderr.lower():
        raise HostSetupError(
            "a Docker daemon runs but this user may not use its socket (/var/run/docker.sock)",
            where="this machine",
            hint="run as root, or add this user to the `docker` group and log in again",
        )
    return None


def dockerd_argv(log_level: str = "warn") -> list[str]:
    return ["dockerd", "--host", SOCKET, "--log-level", log_level]


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def ensure_engine(config: LocalConfig | None = None, *, wait: float = 60.0) -> str:
    """Make sure a Docker daemon answers; install docker.io and start dockerd as needed.

    Returns the daemon version. Serialised with a lock file so parallel callers start one daemon.
    """
    cfg = config or LocalConfig()
    version = engine_version()
    if version:
        return version
    hostsetup.ensure(("localfleet",))
    if shutil.which("docker") is None:
        raise HostSetupError(
            "no docker client on PATH",
            where="this machine",
            hint="install the Debian package docker.io (it ships the docker command)",
        )
    cfg.fleet_dir.mkdir(parents=True, exist_ok=True)
    log_path = cfg.fleet_dir / "dockerd.log"
    with open(cfg.fleet_dir / "dockerd.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        version = engine_version()
        if version:
            return version
        if os.geteuid() != 0:
            raise HostSetupError(
                "no Docker daemon is running and only root can start one",
                where="this machine",
                hint="start it as root (sudo dockerd &), or run the tool as root",
            )
        pid = execute.spawn_detached(dockerd_argv(), str(log_path))
        for _ in polling(wait, 0.3):
            version = engine_version()
            if version:
                return version
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
        raise HostSetupError(
            f"dockerd did not come up (pid {pid})\n{_log_tail(log_path)}",
            where=str(log_path),
            hint="read the log above; a stale /var/run/docker.pid or another dockerd are common causes",
        )
