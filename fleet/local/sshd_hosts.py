"""Plain OpenSSH servers on 127.0.0.1 ports, with a generated inventory: hosts for fast tests and
fan-out benchmarks (no containers). Each server has its own host key; known_hosts pins them all."""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from fleet.errors import HostSetupError
from fleet.waits import Deadline, polling

SSHD = "/usr/sbin/sshd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def keygen(path: Path, comment: str) -> str:
    """Create an ed25519 key pair at `path`; returns the public key line."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return (
        path.with_suffix(".pub").read_text().strip()
        if path.suffix
        else Path(f"{path}.pub").read_text().strip()
    )


def _set_env(env: Mapping[str, str]) -> list[str]:
    """sshd_config `SetEnv` line for `env` (none when empty)."""
    bad = [k for k, v in env.items() if not k.isidentifier() or any(c in v for c in " \t\n\"'")]
    if bad:
        raise HostSetupError(f"session variables need plain names and values without blanks: {bad}")
    return [" ".join(["SetEnv", *(f"{k}={v}" for k, v in env.items())])] if env else []


def _session_vars(
    name: str,
    hdir: Path,
    session_env: Callable[[str, Path], Mapping[str, str]] | None,
    plain_home: bool,
) -> dict[str, str]:
    env = dict(session_env(name, hdir)) if session_env else {}
    if plain_home and "HOME" not in env:
        (hdir / "home").mkdir(exist_ok=True)
        env["HOME"] = str(hdir / "home")
    return env


@dataclass
class SshdHost:
    name: str
    port: int
    host_key_pub: str
    process: subprocess.Popen[bytes] | None = None

    @property
    def known_hosts_line(self) -> str:
        kind, b64 = self.host_key_pub.split()[:2]
        return f"[127.0.0.1]:{self.port} {kind} {b64}"


@dataclass
class SshdFleet:
    """N sshd processes plus an inventory directory describing them (`inventory_dir`)."""

    root: Path
    hosts: list[SshdHost] = field(default_factory=list)
    user: str = field(default_factory=getpass.getuser)

    @property
    def inventory_dir(self) -> Path:
        return self.root / "inventory"

    @property
    def key_file(self) -> Path:
        return self.inventory_dir / "id_ed25519"

    def create(
        self,
        count: int,
        *,
        prefix: str = "h",
        extra_down: int = 0,
        session_env: Callable[[str, Path], Mapping[str, str]] | None = None,
        sftp: bool = False,
        plain_home: bool = True,
    ) -> SshdFleet:
        """Generate keys and configs for `count` servers (and `extra_down` inventory hosts with no server).

        `session_env(name, host_dir)`: variables sshd sets in every session of that server (sshd_config
        `SetEnv`, applied after sshd's own HOME/PATH, so it can replace them); values must not contain
        whitespace or quotes. `sftp`: serve the sftp subsystem (sshd's internal-sftp), for uploads.
        `plain_home`: every session's HOME is an empty directory of its server's (unless `session_env`
        sets one), as on a fresh host's deploy user: these servers log in as this machine's user, whose
        ~/.bashrc bash sources for every SSH command (here: `pyenv init`, ~0.1 s of CPU a command)."""
        if not os.access(SSHD, os.X_OK):
            raise HostSetupError(
                f"{SSHD} not found", hint="apt-get install openssh-server (nox does it for you)"
            )
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self.inventory_dir.mkdir(parents=True, exist_ok=True)
        client_pub = keygen(self.key_file, "compose-fleet-test-client")
        (self.root / "authorized_keys").write_text(client_pub + "\n")
        width = max(2, len(str(count + extra_down)))
        taken = {h.port for h in self.hosts}
        for i in range(1, count + extra_down + 1):
            name = f"{prefix}{i:0{width}d}"
            hdir = self.root / name
            hdir.mkdir()
            pub = keygen(hdir / "ssh_host_ed25519_key", name)
            port = free_port()
            while port in taken:  # the kernel may hand the same free port out twice
                port = free_port()
            taken.add(port)
            (hdir / "sshd_config").write_text(
                "\n".join(
                    [
                        f"Port {port}",
                        "ListenAddress 127.0.0.1",
                        f"HostKey {hdir / 'ssh_host_ed25519_key'}",
                        f"PidFile {hdir / 'sshd.pid'}",
                        f"AuthorizedKeysFile {self.root / 'authorized_keys'}",
                        "UsePAM no",
                        "StrictModes no",
                        "PasswordAuthentication no",
                        "KbdInteractiveAuthentication no",
                        "PermitRootLogin prohibit-password",
                        "MaxStartups 500",
                        "MaxSessions 100",
                        "LogLevel ERROR",
                        *_set_env(_session_vars(name, hdir, session_env, plain_home)),
                        *(["Subsystem sftp internal-sftp"] if sftp else []),
                        "",
                    ]
                )
            )
            self.hosts.append(SshdHost(name=name, port=port, host_key_pub=pub))
        self.down_names = [h.name for h in self.hosts[count:]]
        self.write_inventory()
        return self

    def write_inventory(self) -> None:
        hosts = {h.name: {"hostname": "127.0.0.1", "port": h.port, "groups": ["sshd"]} for h in self.hosts}
        (self.inventory_dir / "hosts.yaml").write_text(yaml.safe_dump(hosts, sort_keys=False))
        (self.inventory_dir / "groups.yaml").write_text(yaml.safe_dump({"sshd": {}}))
        defaults = {
            "username": self.user,
            "data": {
                "ssh": {
                    "key_file": "id_ed25519",
                    "proxy": "none",
                    "connect_timeout": 5,
                    "connect_retries": 0,
                },
                "app": {"dir": str(self.root / "app")},
            },
        }
        (self.inventory_dir / "defaults.yaml").write_text(yaml.safe_dump(defaults, sort_keys=False))
        (self.inventory_dir / "known_hosts").write_text(
            "".join(h.known_hosts_line + "\n" for h in self.hosts)
        )

    def start(self, timeout: float = 10.0) -> SshdFleet:
        """Start every host's sshd and wait until each listens; on any failure stop those started."""
        try:
            return self._start(timeout)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout: float) -> SshdFleet:
        for h in self.hosts:
            if h.name in getattr(self, "down_names", []):
                continue
            h.process = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(self.root / h.name / "sshd_config")],
                stdout=subprocess.DEVNULL,
                stderr=open(self.root / h.name / "sshd.log", "ab"),  # noqa: SIM115 - owned by the child
            )
        deadline = Deadline(timeout)
        for h in self.hosts:
            if h.process is None:
                continue
            for _ in polling(deadline, 0.02):
                if h.process.poll() is not None:
                    log = (self.root / h.name / "sshd.log").read_text()[-500:]
                    raise HostSetupError(f"sshd for {h.name} exited: {log}")
                try:
                    with socket.create_connection(("127.0.0.1", h.port), timeout=0.5):
                        break
                except OSError:
                    pass
            else:
                raise HostSetupError(f"sshd for {h.name} did not listen on {h.port}")
        return self

    def stop_host(self, name: str) -> None:
        for h in self.hosts:
            if h.name == name and h.process is not None:
                h.process.send_signal(signal.SIGTERM)
                h.process.wait(timeout=5)
                h.process = None

    def stop(self) -> None:
        for h in self.hosts:
            if h.process is not None and h.process.poll() is None:
                h.process.terminate()
        for h in self.hosts:
            if h.process is not None:
                try:
                    h.process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    h.process.kill()
                h.process = None

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
