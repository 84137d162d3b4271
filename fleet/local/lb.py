"""The local fleet's load balancer: real haproxy on 127.0.0.1, health-checking every instance.

It stands in for a GCP backend service and is configured from the same settings (`BackendConfig`:
the inventory's `lb` section, or a backend service and its health check as Compute returns them):
session affinity CLIENT_IP is `balance source` on a consistent hash, NONE round robin, GENERATED_COOKIE
a cookie haproxy inserts (GCLB); the readiness check (`GET /health`) runs every `check_interval` with
rise/fall from its healthy/unhealthy thresholds, and a new member starts unhealthy until its checks
pass; a member leaving is drained (no new requests) for at most the draining timeout. Membership
changes go through haproxy's runtime API (add/del server), so adding or removing one instance never
disturbs the others' state. The same socket tells a rollout what the LB really thinks of each server
(UP, DOWN, MAINT, DRAIN).

Once the fleet's backend service exists on its Compute endpoint (made by `fab infra.apply` at bring-up),
its settings are read back from there and kept in `backend.json` beside haproxy.cfg, so every process
that drives this LB (the operator's, the endpoint's) uses the same; `configure` applies a changed one
with a reload that keeps each member and its health (fleet/local/fromapi.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import signal
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleet.commands.haproxy import SHOW_STAT, ServerState, parse_show_stat
from fleet.errors import FleetError
from fleet.inventory.schema import LBSettings
from fleet.local import execute
from fleet.local.config import LocalConfig, check_name, check_port
from fleet.waits import polling

HAPROXY = "haproxy"
STATES = ("UP", "DOWN", "MAINT", "DRAIN", "NOLB")
AFFINITIES = ("NONE", "CLIENT_IP", "GENERATED_COOKIE")
AFFINITY_COOKIE = "GCLB"  # the name of the cookie a GCP load balancer generates
READINESS_PATH = "/health"
_CHECK_PATH = re.compile(r"^/[A-Za-z0-9._~/-]*$")  # goes into haproxy.cfg: no space, quote or '#'


def _ms(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


@dataclass(frozen=True)
class BackendConfig:
    """What the LB is configured from: a backend service and its (readiness) health check."""

    session_affinity: str = "NONE"
    check_path: str = READINESS_PATH
    check_interval: float = 1.0  # seconds
    check_timeout: float = 1.0
    healthy_threshold: int = 2  # haproxy's rise
    unhealthy_threshold: int = 2  # haproxy's fall
    draining_timeout: float = 10.0  # connection draining: how long a leaving member's requests may take

    def __post_init__(self) -> None:
        where = "local LB (backend service)"
        if self.session_affinity not in AFFINITIES:
            raise FleetError(
                f"session affinity {self.session_affinity!r} is not supported by the local LB",
                where=where,
                hint=", ".join(AFFINITIES),
            )
        if not _CHECK_PATH.fullmatch(self.check_path):
            raise FleetError(
                f"health check path {self.check_path!r} cannot be used",
                where=where,
                hint="/ then a-z 0-9 . _ ~ / -",
            )
        if not (self.check_interval > 0 and self.check_timeout > 0 and self.draining_timeout >= 0):
            raise FleetError("check interval and timeout must be > 0, draining timeout >= 0", where=where)
        if self.healthy_threshold < 1 or self.unhealthy_threshold < 1:
            raise FleetError("health check thresholds must be >= 1", where=where)

    @classmethod
    def from_settings(cls, lb: LBSettings) -> BackendConfig:
        """From the inventory's `lb` section (readiness: /health, `check_interval` and thresholds)."""
        interval = float(lb.check_interval)
        return cls(
            session_affinity=lb.session_affinity,
            check_path=READINESS_PATH,
            check_interval=interval,
            check_timeout=min(interval, 5.0),  # a check must end before the next one
            healthy_threshold=lb.healthy_threshold,
            unhealthy_threshold=lb.unhealthy_threshold,
            draining_timeout=float(lb.draining_timeout),
        )

    @classmethod
    def from_api(cls, backend_service: Mapping[str, Any], health_check: Mapping[str, Any]) -> BackendConfig:
        """From Compute's JSON of a backend service and its health check (the API's defaults where a
        field is absent: 5 s interval and timeout, thresholds 2, request path /, no draining)."""
        http = health_check.get("httpHealthCheck") or health_check.get("httpsHealthCheck") or {}
        draining = (backend_service.get("connectionDraining") or {}).get("drainingTimeoutSec", 0)
        return cls(
            session_affinity=str(backend_service.get("sessionAffinity", "NONE")),
            check_path=str(http.get("requestPath", "/")),
            check_interval=float(health_check.get("checkIntervalSec", 5)),
            check_timeout=float(health_check.get("timeoutSec", 5)),
            healthy_threshold=int(health_check.get("healthyThreshold", 2)),
            unhealthy_threshold=int(health_check.get("unhealthyThreshold", 2)),
            draining_timeout=float(draining),
        )

    def check_params(self) -> dict[str, str | int]:
        """A server's check settings: every `check_interval`, up after rise, down after fall."""
        inter = _ms(self.check_interval)
        return {
            "inter": inter,
            "fastinter": inter,
            "downinter": inter,
            "rise": self.healthy_threshold,
            "fall": self.unhealthy_threshold,
        }

    def balance_lines(self) -> list[str]:
        if self.session_affinity == "CLIENT_IP":
            # a consistent hash: a member coming or going moves only the clients hashed to it
            return ["balance source", "hash-type consistent"]
        lines = ["balance roundrobin"]
        if self.session_affinity == "GENERATED_COOKIE":
            # cookie values derived from each server's address (runtime-added servers take no `cookie`)
            lines += [
                f"cookie {AFFINITY_COOKIE} insert indirect nocache dynamic",
                "dynamic-cookie-key compose-fleet-local",
            ]
        return lines


def server_id(name: str) -> int:
    """A server's haproxy id, derived from its name: its place on a consistent-hash ring does not
    depend on the order members were added (ids 1, 2, 3... hash to neighbouring points: measured, a
    4-server ring left two servers without a single client)."""
    return 1 + int(hashlib.sha256(name.encode()).hexdigest()[:7], 16)


@dataclass(frozen=True)
class LbServer:
    """One backend server: an instance's published HTTP port."""

    name: str
    port: int
    address: str = "127.0.0.1"

    def __post_init__(self) -> None:
        check_name(self.name, "LB server name")
        check_port(self.port, "LB server port")


def render_config(config: LocalConfig, backend: BackendConfig | None = None) -> str:
    """haproxy.cfg with no servers: members come and go through the runtime API."""
    check_port(config.lb_port, "LB port")
    backend = backend or BackendConfig.from_settings(config.lb_settings)
    balance = "\n    ".join(backend.balance_lines())
    return f"""# generated by fleet.local.lb; members are managed through the stats socket
global
    stats socket {config.stats_socket} mode 600 level admin
    stats timeout 10s
    maxconn 4096
    hard-stop-after 5s

defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout http-request 10s
    option redispatch
    retries 1

frontend fleet_http
    bind 127.0.0.1:{config.lb_port}
    http-response set-header X-Fleet-Server %s
    default_backend {config.backend}

# session affinity {backend.session_affinity}; readiness GET {backend.check_path} every \
{backend.check_interval:g} s, rise {backend.healthy_threshold}, fall {backend.unhealthy_threshold}; \
connection draining {backend.draining_timeout:g} s
backend {config.backend}
    {balance}
    option httpchk GET {backend.check_path}
    http-check expect status 200
    timeout check {_ms(backend.check_timeout)}
"""


def add_server_commands(backend: str, member: LbServer, settings: BackendConfig | None = None) -> str:
    """Runtime commands that add a server which starts DOWN until `rise` checks pass (GCP-like)."""
    settings = settings or BackendConfig()
    check = " ".join(f"{k} {v}" for k, v in settings.check_params().items())
    srv = f"{backend}/{member.name}"
    # a runtime-added server gets its cookie value (from its address) once dynamic cookies are enabled
    cookie = (
        f"enable dynamic-cookie backend {backend}; "
        if settings.session_affinity == "GENERATED_COOKIE"
        else ""
    )
    return (
        f"add server {srv} {member.address}:{member.port} id {server_id(member.name)} check {check}; "
        f"{cookie}enable health {srv}; set server {srv} state ready; set server {srv} health down"
    )


def del_server_commands(backend: str, name: str) -> str:
    check_name(name, "LB server name")
    srv = f"{backend}/{name}"
    return f"set server {srv} state maint; shutdown sessions server {srv}; del server {srv}"


def set_state_command(backend: str, name: str, state: str) -> str:
    if state not in ("ready", "drain", "maint"):
        raise FleetError(f"unknown LB server state {state!r}", where="lb", hint="ready, drain or maint")
    check_name(name, "LB server name")
    return f"set server {backend}/{name} state {state}"


class LoadBalancer:
    """haproxy as a daemon of this machine, its files under .fleet/local/lb/."""

    def __init__(self, config: LocalConfig) -> None:
        self.config = config
        self.dir = config.lb_dir
        self.cfg_path = self.dir / "haproxy.cfg"
        self.pid_path = self.dir / "haproxy.pid"
        self.socket_path = config.stats_socket
        self.backend_path = self.dir / "backend.json"

    @property
    def settings(self) -> BackendConfig:
        """The backend service's settings as last configured (backend.json), else the inventory's."""
        try:
            return BackendConfig(**json.loads(self.backend_path.read_text()))
        except (OSError, ValueError, TypeError):
            return BackendConfig.from_settings(self.config.lb_settings)

    @contextlib.contextmanager
    def _config_lock(self) -> Any:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "configure.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def configure(self, backend: BackendConfig) -> bool:
        """Take a backend service's settings; a running haproxy is reloaded with them, its members
        re-added with the state and health they had (no member starts over from DOWN). True when
        something changed."""
        with self._config_lock():
            changed = self.settings != backend  # what haproxy runs with now
            if changed and self.running():
                # backend.json follows the reload: `settings` never names what haproxy does not run
                # yet, and a failed reload is tried again by the next configure
                self._reload(backend)
            if changed or not self.backend_path.exists():
                tmp = self.backend_path.with_suffix(".tmp")
                tmp.write_text(json.dumps(dataclasses.asdict(backend), sort_keys=True))
                tmp.replace(self.backend_path)
            return changed

    def _reload(self, backend: BackendConfig) -> None:
        members = self.servers()
        old = self.pid()
        self.cfg_path.write_text(render_config(self.config, backend))
        execute.run([HAPROXY, "-c", "-q", "-f", str(self.cfg_path)], hint="haproxy rejected its config")
        self.socket_path.unlink(missing_ok=True)
        execute.run(
            [HAPROXY, "-D", "-f", str(self.cfg_path), "-p", str(self.pid_path), "-sf", str(old)],
            hint="haproxy did not reload",
        )
        for _ in polling(5, 0.05):
            if self.pid() not in (None, old) and self.socket_path.exists():
                with contextlib.suppress(FleetError):
                    self.command("show info")
                    break
        for name, state in members.items():
            host, _, port = state.address.rpartition(":")
            self.add(LbServer(name, int(port), host or "127.0.0.1"), backend)
            srv = f"{self.config.backend}/{name}"
            health = "up" if state.status in ("UP", "DRAIN", "NOLB") else "down"
            admin = {"DRAIN": "drain", "MAINT": "maint"}.get(state.status, "ready")
            self.command(f"set server {srv} health {health}; set server {srv} state {admin}")

    @property
    def frontend(self) -> str:
        return f"http://127.0.0.1:{self.config.lb_port}"

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_path.read_text().split()[0])
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except (OSError, ValueError, IndexError):
            return None
        return pid if comm == HAPROXY else None

    def running(self) -> bool:
        return self.pid() is not None and self.socket_path.exists()

    def command(self, cmd: str, timeout: float = 5.0) -> str:
        """One runtime-API request (several commands may be joined with '; ')."""
        if "\n" in cmd:
            raise FleetError("runtime command must be one line", where="lb")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout)
                sock.connect(str(self.socket_path))
                sock.sendall(cmd.encode() + b"\n")
                chunks = []
                while True:
                    data = sock.recv(65536)
                    if not data:
                        break
                    chunks.append(data)
        except OSError as exc:
            raise FleetError(
                f"cannot talk to haproxy: {exc}",
                where=str(self.socket_path),
                hint="is the LB running? `fab local.status`",
            ) from exc
        return b"".join(chunks).decode(errors="replace")

    def start(self) -> None:
        """Start haproxy (config checked first); no-op when it already runs."""
        if self.running():
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket_path.unlink(missing_ok=True)
        self.cfg_path.write_text(render_config(self.config, self.settings))
        execute.run([HAPROXY, "-c", "-q", "-f", str(self.cfg_path)], hint="haproxy rejected its config")
        execute.run(
            [HAPROXY, "-D", "-f", str(self.cfg_path), "-p", str(self.pid_path)],
            hint=f"is 127.0.0.1:{self.config.lb_port} free? move the LB with FLEET_LOCAL_LB_PORT",
        )
        for _ in polling(5, 0.05):
            if self.running():
                try:
                    self.command("show info")
                    return
                except FleetError:
                    pass
        raise FleetError(
            "haproxy did not start", where=str(self.cfg_path), hint=f"run: haproxy -f {self.cfg_path}"
        )

    def stop(self) -> None:
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            for _ in polling(5, 0.05):
                if not Path(f"/proc/{pid}").exists():
                    break
        self.pid_path.unlink(missing_ok=True)
        self.socket_path.unlink(missing_ok=True)

    def servers(self) -> dict[str, ServerState]:
        """Each backend server's state as haproxy sees it now."""
        return parse_show_stat(self.command(SHOW_STAT), self.config.backend).servers

    def _expect(self, answer: str, what: str) -> None:
        bad = [
            line
            for line in answer.splitlines()
            if line.strip() and not line.startswith(("New server", "Server deleted"))
        ]
        if bad:
            raise FleetError(f"haproxy refused to {what}: {' / '.join(bad)}", where=str(self.socket_path))

    def add(self, member: LbServer, settings: BackendConfig | None = None) -> None:
        command = add_server_commands(self.config.backend, member, settings or self.settings)
        self._expect(self.command(command), f"add {member.name}")

    def remove(self, name: str) -> None:
        self._expect(self.command(del_server_commands(self.config.backend, name)), f"remove {name}")

    def set_state(self, name: str, state: str) -> None:
        """ready / drain / maint: the LB-side levers (drain keeps sessions, takes no new traffic)."""
        self._expect(self.command(set_state_command(self.config.backend, name, state)), f"set {name} {state}")

    def drain(self, name: str, timeout: float | None = None, poll: float = 0.1) -> bool:
        """Take `name` out of rotation without cutting a request: DRAIN (no new requests), wait until
        its in-flight requests have finished (at most `timeout`, by default the backend's connection
        draining), then MAINT. True when nothing was left in flight; a server the LB does not have is
        True."""
        timeout = self.settings.draining_timeout if timeout is None else timeout
        servers = self.servers()
        if name not in servers:
            return True
        self.set_state(name, "drain")
        drained = False
        for _ in polling(timeout, poll):
            state = self.servers().get(name)
            if state is None or not state.sessions:  # none in flight (or none reported)
                drained = True
                break
        if name in self.servers():
            self.set_state(name, "maint")
        return drained

    def sync(self, members: list[LbServer]) -> None:
        """Make the backend hold exactly `members`, touching only servers that differ."""
        self.start()
        current = self.servers()
        wanted = {m.name: m for m in members}
        for name, state in current.items():
            member = wanted.get(name)
            if member is None or state.address != f"{member.address}:{member.port}":
                self.remove(name)
        current = self.servers()
        for name, member in wanted.items():
            if name not in current:
                self.add(member)

    def wait_for(
        self, name: str, statuses: tuple[str, ...], timeout: float = 30.0, poll: float = 0.2
    ) -> ServerState:
        """Block until the LB reports `name` in one of `statuses` (e.g. ("DOWN", "MAINT"))."""
        last: ServerState | None = None
        for _ in polling(timeout, poll):
            last = self.servers().get(name)
            if last is not None and last.status in statuses:
                return last
        seen = last.raw if last else "absent"
        raise FleetError(
            f"LB server {name} is {seen}, not {'/'.join(statuses)} after {timeout:.0f} s",
            where=f"{self.config.backend} backend",
        )
