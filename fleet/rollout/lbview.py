"""What the load balancer thinks of a host, and waiting until it stops or resumes sending it traffic.

A drained host answers 503 on /health; the LB notices after its unhealthy threshold and stops sending
new requests, in-flight ones then finish. Only then may the host restart its stack. Three kinds:

- `haproxy` (the local fleet): the admin socket's `show stat` per server: wait until the server is
  not UP and has no current session; back in once it is fully UP again.
- `gcp` (a backend service): `backendServices.getHealth` for the host's instance group: wait until
  the instance is not HEALTHY, then the draining timeout for in-flight requests; in once HEALTHY.
- `none`: nothing to ask, so wait the time the health check needs (interval x threshold + draining).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

from fleet.commands.haproxy import SHOW_STAT, parse_show_stat
from fleet.errors import FleetError
from fleet.waits import polling

if TYPE_CHECKING:
    from fleet.gcp.compute import Compute
    from fleet.inventory import FleetHost

Sleep = Callable[[float], None]
Clock = Callable[[], float]


class LBTimeout(FleetError):
    """The LB did not reach the wanted state in time."""


@dataclass(frozen=True)
class Seen:
    """One look at one host: `serving` = the LB may send it new requests; `active` = requests in flight
    (None when the LB does not say); `raw` is the LB's own words."""

    serving: bool
    active: int | None
    raw: str
    steady: bool = True  # no health transition in progress (haproxy's "UP 1/2" is not steady)


class LBView(Protocol):
    kind: str

    def look(self, host: FleetHost) -> Seen | None: ...
    def wait_out(self, host: FleetHost, timeout: float) -> float: ...
    def wait_in(self, host: FleetHost, timeout: float) -> float: ...


def _poll(
    look: Callable[[], Seen | None],
    done: Callable[[Seen], bool],
    timeout: float,
    what: str,
    where: str,
    poll: float,
    clock: Clock,
    sleep: Sleep,
) -> float:
    start = clock()
    last: Seen | None = None
    for _ in polling(timeout, poll, clock=clock, sleep=sleep):
        last = look()
        if last is not None and done(last):
            return clock() - start
    seen = last.raw if last else "not in the LB"
    raise LBTimeout(
        f"the load balancer still reports {seen} after {timeout:.0f}s (waiting until {what})",
        where=where,
        hint="raise --drain-wait/--health-timeout, or check the LB health check",
    )


# --------------------------------------------------------------------------- haproxy


def parse_haproxy_stat(text: str, backend: str) -> dict[str, Seen]:
    """`show stat` CSV -> server name -> Seen ("UP 1/2" still serves; "DOWN 1/2" does not yet)."""
    return {
        name: Seen(serving=s.serving, active=s.sessions, raw=s.raw or "UNKNOWN", steady=s.steady)
        for name, s in parse_show_stat(text, backend).servers.items()
    }


class HaproxyView:
    kind = "haproxy"

    def __init__(
        self,
        stats_socket: str,
        backend: str,
        *,
        poll: float = 0.1,
        settle: float = 0.0,
        clock: Clock = time.monotonic,
        sleep: Sleep = time.sleep,
    ) -> None:
        self.stats_socket = stats_socket
        self.backend = backend
        self.poll = poll
        self.settle = settle
        self.clock = clock
        self.sleep = sleep

    def _stat(self) -> str:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(5)
                sock.connect(self.stats_socket)
                sock.sendall(f"{SHOW_STAT}\n".encode())
                chunks = []
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
        except OSError as exc:
            raise FleetError(
                f"cannot read haproxy's state: {exc}",
                where=self.stats_socket,
                hint="is the LB running (`fab local.status`)? lb.stats_socket in the inventory",
            ) from None
        return b"".join(chunks).decode(errors="replace")

    def servers(self) -> dict[str, Seen]:
        return parse_haproxy_stat(self._stat(), self.backend)

    def look(self, host: FleetHost) -> Seen | None:
        return self.servers().get(server_name(host))

    def wait_out(self, host: FleetHost, timeout: float) -> float:
        waited = _poll(
            lambda: self.look(host),
            lambda s: not s.serving and not s.active,
            timeout,
            "it is not UP and has no request in flight",
            f"LB server {server_name(host)}",
            self.poll,
            self.clock,
            self.sleep,
        )
        if self.settle:
            self.sleep(self.settle)
        return waited + self.settle

    def wait_in(self, host: FleetHost, timeout: float) -> float:
        return _poll(
            lambda: self.look(host),
            lambda s: s.serving and s.steady,
            timeout,
            "it is UP",
            f"LB server {server_name(host)}",
            self.poll,
            self.clock,
            self.sleep,
        )


def server_name(host: FleetHost) -> str:
    return host.settings.lb.server or host.name


# --------------------------------------------------------------------------- GCP backend service


def instance_group_url(project: str, location: str, name: str) -> str:
    scope = "zones" if location.count("-") >= 2 else "regions"
    return (
        f"https://www.googleapis.com/compute/v1/projects/{project}/{scope}/{location}/instanceGroups/{name}"
    )


def group_of(host: FleetHost) -> str:
    """The instance group (a MIG's group has the MIG's name) that holds `host`, from gce.migs."""
    project = host.settings.gce.project
    zone = host.settings.gce.zone
    migs = host.settings.gce.migs
    candidates = [m for m in migs if isinstance(m, dict) and m.get("name")]
    if zone:
        in_zone = [m for m in candidates if m.get("zone") in (zone, None) or m.get("region") == zone[:-2]]
        candidates = in_zone or candidates
    if not candidates or not project:
        raise FleetError(
            "cannot tell which instance group holds this host",
            where=host.name,
            hint="lb.kind gcp needs gce.project and gce.migs [{project, zone|region, name}]",
        )
    mig = candidates[0]
    location = mig.get("zone") or mig.get("region") or zone
    return instance_group_url(mig.get("project") or project, cast(str, location), mig["name"])


def parse_backend_health(response: Any, instance: str) -> Seen | None:
    """The `BackendServiceGroupHealth` entry of `instance` (matched on the URL's last segment)."""
    for status in getattr(response, "health_status", []) or []:
        url = str(getattr(status, "instance", "") or "")
        if url.rstrip("/").rsplit("/", 1)[-1] == instance:
            state = str(getattr(status, "health_state", "") or "UNKNOWN")
            state = state.rsplit(".", 1)[-1]  # an enum prints as HealthState.HEALTHY on some versions
            return Seen(serving=state == "HEALTHY", active=None, raw=state)
    return None


class GcpView:
    kind = "gcp"

    def __init__(
        self,
        compute: Compute,
        project: str,
        backend_service: str,
        *,
        draining: float,
        poll: float = 2.0,
        clock: Clock = time.monotonic,
        sleep: Sleep = time.sleep,
    ) -> None:
        self.compute = compute
        self.project = project
        self.backend_service = backend_service
        self.draining = draining
        self.poll = poll
        self.clock = clock
        self.sleep = sleep

    def look(self, host: FleetHost) -> Seen | None:
        from google.api_core import exceptions as gexc

        t = self.compute.types()
        group = group_of(host)
        try:
            response = self.compute.client("BackendServicesClient").get_health(
                project=self.project,
                backend_service=self.backend_service,
                resource_group_reference_resource=t.ResourceGroupReference(group=group),
            )
        except gexc.GoogleAPICallError as exc:
            raise FleetError(
                f"backendServices.getHealth failed: {exc.code} {exc.message}",
                where=f"backend service {self.backend_service}",
                hint="lb.backend must name the backend service the hosts' instance groups belong to",
            ) from None
        return parse_backend_health(response, host.settings.gce.instance or host.name)

    def wait_out(self, host: FleetHost, timeout: float) -> float:
        waited = _poll(
            lambda: self.look(host),
            lambda s: not s.serving,
            timeout,
            "it is not HEALTHY",
            f"{host.name} in {self.backend_service}",
            self.poll,
            self.clock,
            self.sleep,
        )
        self.sleep(self.draining)  # GCP does not count in-flight requests: give them the draining time
        return waited + self.draining

    def wait_in(self, host: FleetHost, timeout: float) -> float:
        return _poll(
            lambda: self.look(host),
            lambda s: s.serving,
            timeout,
            "it is HEALTHY",
            f"{host.name} in {self.backend_service}",
            self.poll,
            self.clock,
            self.sleep,
        )


# --------------------------------------------------------------------------- no LB to ask


class BlindView:
    """No LB to ask: wait what the health check needs to notice (out) or to trust the host (in)."""

    kind = "none"

    def __init__(self, out_seconds: float, in_seconds: float, sleep: Sleep = time.sleep) -> None:
        self.out_seconds = out_seconds
        self.in_seconds = in_seconds
        self.sleep = sleep

    def look(self, host: FleetHost) -> Seen | None:
        return None

    def wait_out(self, host: FleetHost, timeout: float) -> float:
        self.sleep(self.out_seconds)
        return self.out_seconds

    def wait_in(self, host: FleetHost, timeout: float) -> float:
        self.sleep(self.in_seconds)
        return self.in_seconds


# --------------------------------------------------------------------------- from the inventory


def for_host(host: FleetHost, compute: Callable[[], Compute], drain_wait: float) -> LBView:
    """The view a host's `lb` settings describe (hosts of one rollout normally share one)."""
    lb = host.settings.lb
    kind = lb.kind
    interval = float(lb.check_interval)
    healthy = lb.healthy_threshold
    draining = float(lb.draining_timeout)
    if kind == "haproxy":
        sock = lb.stats_socket
        if not sock:
            raise FleetError("lb.kind haproxy needs lb.stats_socket", where=host.name)
        return HaproxyView(sock, lb.backend or "app")
    if kind == "gcp":
        backend = lb.backend
        project = host.settings.gce.project
        if not backend or not project:
            raise FleetError(
                "lb.kind gcp needs lb.backend (the backend service) and gce.project", where=host.name
            )
        return GcpView(compute(), str(project), str(backend), draining=draining, poll=min(2.0, interval))
    if kind == "none":
        return BlindView(drain_wait, interval * healthy)
    raise FleetError(f"unknown lb.kind {kind!r}", where=host.name, hint="haproxy, gcp or none")
