"""The agent's executor: the same `run`/`put` the SSH runner offers (fleet.ssh.runner.HostContext), on
this machine. hoststeps and activation run through it unchanged, so the VM acts as `fab deploy` would."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field

from fleet.commands import release as rc
from fleet.commands.base import Command, abs_path
from fleet.errors import FleetError

DEFAULT_MIN_FREE_MB = 512  # as the inventory's app.min_free_mb


@dataclass(frozen=True)
class AppSettings:
    dir: str = rc.DEFAULT_ROOT
    project: str = rc.DEFAULT_PROJECT
    http_port: int = 80
    min_free_mb: int = DEFAULT_MIN_FREE_MB


@dataclass(frozen=True)
class HostSettings:
    app: AppSettings = field(default_factory=AppSettings)


@dataclass(frozen=True)
class LocalHost:
    """This VM as hoststeps sees a host (its name and app settings come from the instance metadata)."""

    name: str
    settings: HostSettings = field(default_factory=HostSettings)

    @classmethod
    def from_attributes(cls, name: str, attrs: Mapping[str, str | None]) -> LocalHost:
        """From metadata: fleet-app-dir, fleet-app-project, fleet-http-port (defaults as the inventory's)."""
        port_text = attrs.get("fleet-http-port") or "80"
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise FleetError(f"metadata fleet-http-port: not a port: {port_text!r}", where=name)
        app = AppSettings(
            dir=abs_path(attrs.get("fleet-app-dir") or rc.DEFAULT_ROOT, "fleet-app-dir"),
            project=attrs.get("fleet-app-project") or rc.DEFAULT_PROJECT,
            http_port=int(port_text),
        )
        rc.Layout(app.dir, app.project)  # validates the project name
        return cls(name, HostSettings(app))


@dataclass(frozen=True)
class Result:
    """What invoke's Result offers the steps: exit status and output."""

    exited: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exited == 0


class LocalContext:
    """Runs host-side scripts with `sh -c` here; `put` writes a file as the SFTP upload does.

    `user`: when the agent is root, scripts run as this user (runuser), so the release files belong to
    the same deploy user `fab` connects as and an operator's later deploy over SSH can replace them."""

    def __init__(self, host: LocalHost, user: str | None = None) -> None:
        self.host = host
        self.user = user if user and user != "root" and self.root else None

    @property
    def root(self) -> bool:
        return os.geteuid() == 0

    def run(
        self, script: str, *, timeout: float | None = None, stdin: str | None = None, as_root: bool = False
    ) -> Result:
        """Never raises on a non-zero exit (the caller decides); a timeout is exit 124, as timeout(1)."""
        try:
            p = subprocess.run(  # the script is built as data in fleet/commands
                ["sh", "-c", script] if as_root else self.argv(script),
                input=stdin if stdin is not None else "",
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
            return Result(124, out, f"timed out after {timeout:.0f}s")
        return Result(p.returncode, p.stdout, p.stderr)

    def argv(self, script: str) -> list[str]:
        shell = ["sh", "-c", script]
        return ["runuser", "-u", self.user, "--", *shell] if self.user else shell

    def run_privileged(self, cmd: Command, timeout: float | None = None) -> Result:
        """A command meant for sudo (bootstrap): as is when the agent is root, else through sudo -n."""
        return self.run(cmd.script if self.root else cmd.shell(), timeout=timeout, as_root=True)

    def put(self, data: bytes, remote: str) -> None:
        """Write `remote` (0600 when created; an existing file keeps its mode and owner, as over SFTP)."""
        fd = os.open(remote, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
