"""The seam between the rollout engine and the hosts: `HostOps`, one method per thing the engine does to
a host, and `SshHostOps`, the one implementation that does it over SSH (the Nornir runner, one
reused connection per host).

The engine never sees Nornir, a connection or a shell command: unit tests drive it with a fake
`HostOps` (tests/unit/test_rollout_engine.py). Every method raises on failure, as the host steps of
fleet.release.hoststeps do (`StepError`, or a connection error that `unreachable()` recognises).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from fleet.commands import release as rc
from fleet.commands import rollout as cr
from fleet.commands.health import health_command
from fleet.release import hoststeps as ht
from fleet.ssh.runner import HostContext, HostResult, run_step

if TYPE_CHECKING:
    from nornir.core import Nornir

    from fleet.inventory import FleetHost
    from fleet.release.bundle import Bundle

HostFn = Callable[[str], HostResult]


class HostOps(Protocol):
    """What the rollout engine does to hosts, by host name."""

    def names(self) -> list[str]:
        """Every host of the inventory (worker_beat is fleet-wide, not only the rollout's hosts)."""
        ...

    def host(self, name: str) -> FleetHost:
        """The inventory's host: for its LB view and its instance label."""
        ...

    def each(self, names: Sequence[str], fn: HostFn) -> list[HostResult]:
        """`fn(name)` on every host of `names` in parallel, results in order; an exception on one host
        becomes its result (`unreachable` when the connection broke, else `failed`), never raised."""
        ...

    def unreachable(self, exc: BaseException) -> bool:
        """Did `exc` come from losing the host (rather than the host saying no)?"""
        ...

    def layout(self, name: str) -> rc.Layout: ...
    def read_state(self, name: str) -> rc.HostState: ...
    def stage(self, name: str, bundle: Bundle) -> None: ...
    def release_present(self, name: str, rid: str) -> bool: ...
    def compose_check(self, name: str, rid: str) -> None: ...
    def pull(self, name: str, rid: str) -> None: ...
    def switch_when_idle(self, name: str, rid: str) -> None: ...
    def switch(self, name: str, rid: str) -> None: ...
    def up(self, name: str, rid: str, disabled: Sequence[str], timeout: float) -> None: ...
    def drain(self, name: str) -> None: ...
    def undrain(self, name: str) -> None: ...
    def config_hashes(self, name: str, rid: str) -> dict[str, str]: ...
    def check(
        self,
        name: str,
        version: str,
        rid: str,
        *,
        expect_drained: bool = False,
        hashes: Mapping[str, str] | None = None,
    ) -> ht.Verdict: ...

    def probe(self, name: str) -> tuple[int, str | None]:
        """/health through the host's nginx: (HTTP status, version); status 0 = no answer."""
        ...

    def undrain_and_probe(self, name: str) -> tuple[int, str | None]:
        """Remove the drain flag (raises if that fails), then `probe`, in one round trip."""
        ...

    def record(self, name: str, entry: Mapping[str, Any]) -> None: ...
    def releases(self, name: str) -> list[rc.ReleaseDir]:
        """The releases staged on the host, newest first."""
        ...

    def release_record(self, name: str, rid: str) -> str:
        """The text of a staged release's release.json."""
        ...

    def set_previous(self, name: str, rid: str | None) -> None: ...
    def beat_running(self, name: str) -> bool: ...
    def beat_stop(self, name: str) -> None: ...
    def beat_start(self, name: str, rid: str) -> None: ...
    def migrate(self, name: str, rid: str, command: Sequence[str], timeout: float) -> str:
        """Run the database migration once, as a one-off container of release `rid`; its output."""
        ...


class SshHostOps:
    """`HostOps` over SSH: fleet.release.hoststeps steps and fleet.commands builders on the Nornir runner."""

    def __init__(self, nr: Nornir) -> None:
        self.nr = nr  # every host of the inventory (connections open lazily)
        self._ctx: dict[str, HostContext] = {}
        # (host, release id) -> config hashes, read while validating: a staged release never changes
        self._hashes: dict[tuple[str, str], dict[str, str]] = {}

    def names(self) -> list[str]:
        return list(self.nr.inventory.hosts)

    def host(self, name: str) -> FleetHost:
        from fleet.inventory.nornir_plugin import fleet_host

        return fleet_host(self.nr.inventory.hosts[name])

    def each(self, names: Sequence[str], fn: HostFn) -> list[HostResult]:
        wanted = set(names)

        def step(ctx: HostContext) -> HostResult:
            self._ctx[ctx.host.name] = ctx  # one thread per host: the other methods find it here
            return fn(ctx.host.name)

        step.__name__ = getattr(fn, "__name__", "fleet_step")
        return run_step(self.nr.filter(filter_func=lambda h: h.name in wanted), step)

    def unreachable(self, exc: BaseException) -> bool:
        import paramiko

        from fleet.errors import HostKeyError
        from fleet.ssh.connection import UnreachableError

        return isinstance(exc, (UnreachableError, HostKeyError, OSError, EOFError, paramiko.SSHException))

    def ctx(self, name: str) -> HostContext:
        try:
            return self._ctx[name]
        except KeyError:
            raise RuntimeError(f"{name}: host operations run only inside SshHostOps.each") from None

    def layout(self, name: str) -> rc.Layout:
        return ht.layout_of(self.host(name))

    def read_state(self, name: str) -> rc.HostState:
        return ht.read_state(self.ctx(name))

    def stage(self, name: str, bundle: Bundle) -> None:
        ht.stage(self.ctx(name), bundle)  # uploads only when the host lacks the release

    def release_present(self, name: str, rid: str) -> bool:
        ctx = self.ctx(name)
        return rc.parse_present(ht.run(ctx, rc.release_present(self.layout(name), rid), "stage").stdout)

    def compose_check(self, name: str, rid: str) -> None:
        r = ht.run(self.ctx(name), rc.compose_check_hashes(self.layout(name), rid), "validate")
        self._hashes[(name, rid)] = rc.parse_hashes(r.stdout)

    def pull(self, name: str, rid: str) -> None:
        ht.run(
            self.ctx(name),
            rc.compose_pull(self.layout(name), rid),
            "pull",
            timeout=900,
            hint="is the version right, and can the host reach the registry?",
        )

    def switch_when_idle(self, name: str, rid: str) -> None:
        ht.run(self.ctx(name), cr.switch_when_idle(self.layout(name), rid), "switch", timeout=90)

    def switch(self, name: str, rid: str) -> None:
        ht.switch(self.ctx(name), rid)

    def up(self, name: str, rid: str, disabled: Sequence[str], timeout: float) -> None:
        ht.up(self.ctx(name), rid, disabled, timeout=timeout)

    def drain(self, name: str) -> None:
        ht.drain(self.ctx(name))

    def undrain(self, name: str) -> None:
        ht.undrain(self.ctx(name))

    def config_hashes(self, name: str, rid: str) -> dict[str, str]:
        known = self._hashes.get((name, rid))
        if known:
            return dict(known)
        hashes = ht.config_hashes(self.ctx(name), rid)
        self._hashes[(name, rid)] = hashes
        return dict(hashes)

    def check(
        self,
        name: str,
        version: str,
        rid: str,
        *,
        expect_drained: bool = False,
        hashes: Mapping[str, str] | None = None,
    ) -> ht.Verdict:
        return ht.check(self.ctx(name), version, rid, expect_drained=expect_drained, hashes=hashes)

    def probe(self, name: str) -> tuple[int, str | None]:
        ctx = self.ctx(name)
        r = ctx.run(health_command(ht.http_port_of(ctx.host)).shell(), timeout=10)
        return ht.parse_health(r.stdout)

    def undrain_and_probe(self, name: str) -> tuple[int, str | None]:
        ctx = self.ctx(name)
        layout = self.layout(name)
        r = ctx.run(cr.undrain_then_probe(layout, ht.http_port_of(ctx.host)).shell(), timeout=15)
        if r.exited == cr.UNDRAIN_FAILED:
            raise ht.StepError(name, "undrain", f"could not remove {layout.drain_flag}: {r.stderr.strip()}")
        return ht.parse_health(r.stdout)

    def record(self, name: str, entry: Mapping[str, Any]) -> None:
        ht.record(self.ctx(name), entry)

    def releases(self, name: str) -> list[rc.ReleaseDir]:
        return rc.parse_releases(
            ht.run(self.ctx(name), rc.list_releases(self.layout(name)), "releases").stdout
        )

    def release_record(self, name: str, rid: str) -> str:
        out: str = ht.run(self.ctx(name), cr.release_record(self.layout(name), rid), "releases").stdout
        return out

    def set_previous(self, name: str, rid: str | None) -> None:
        ht.run(self.ctx(name), cr.set_previous(self.layout(name), rid), "previous")

    def beat_running(self, name: str) -> bool:
        r = ht.run(self.ctx(name), cr.beat_running(self.layout(name)), "beat")
        return bool(r.stdout.strip())

    def beat_stop(self, name: str) -> None:
        ht.run(self.ctx(name), cr.beat_stop(self.layout(name)), "beat")

    def beat_start(self, name: str, rid: str) -> None:
        ht.run(self.ctx(name), cr.beat_start(self.layout(name), rid), "beat", timeout=300)

    def migrate(self, name: str, rid: str, command: Sequence[str], timeout: float) -> str:
        return ht.migrate(self.ctx(name), rid, command, timeout)
