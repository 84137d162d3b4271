"""Run a per-host task on many hosts in parallel (Nornir's threaded runner); results as data.

Every host ends with exactly one `HostResult`: ok, failed (the command ran and failed) or unreachable
(no command ran). A task never raises out of the runner, so one bad host cannot hide the others.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from fleet import settings
from fleet.errors import FleetError, HostKeyError
from fleet.ssh.connection import CONNECTION_NAME, UnreachableError, register, ssh_params
from fleet.ssh.session import CommandResult, HostConnection

if TYPE_CHECKING:
    from nornir.core import Nornir
    from nornir.core.inventory import Host as NornirHost
    from nornir.core.processor import Processor
    from nornir.core.task import AggregatedResult, MultiResult, Task

    from fleet.inventory import FleetHost, Inventory

Status = Literal["ok", "failed", "unreachable"]
TAIL_LINES = 20
MAX_WORKERS = settings.MAX_WORKERS


@dataclass
class HostResult:
    host: str
    status: Status
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    duration: float = 0.0
    error: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def as_dict(self, tail: int | None = TAIL_LINES) -> dict[str, Any]:
        out = asdict(self)
        if tail is not None:
            out["stdout"] = tail_lines(self.stdout, tail)
            out["stderr"] = tail_lines(self.stderr, tail)
        return out


def tail_lines(text: str, n: int) -> str:
    lines = text.splitlines()
    return "\n".join(lines[-n:])


class HostContext:
    """What a per-host step gets: the host's settings and its (lazily opened, reused) connection."""

    def __init__(self, task: Task, host: FleetHost) -> None:
        self._task = task
        self.host = host

    @property
    def conn(self) -> HostConnection:
        return self._task.host.get_connection(CONNECTION_NAME, self._task.nornir.config)

    def run(self, script: str, *, timeout: float | None = None, stdin: str | None = None) -> CommandResult:
        """Run a shell script on the host; never raises on a non-zero exit (the caller decides)."""
        return self.conn.run(script, timeout=timeout, stdin=stdin)

    def put(self, data: bytes, remote: str) -> None:
        """Write `data` to the file `remote` on the host over SFTP (OSError when it cannot)."""
        import io

        self.conn.sftp().putfo(io.BytesIO(data), remote, file_size=len(data), confirm=True)


StepFn = Callable[[HostContext], HostResult]


def build_nornir(inv: Inventory, hosts: Sequence[FleetHost], workers: int | None = None) -> Nornir:
    """Nornir for `hosts`: the FleetInventory plugin holding them, Nornir's threaded runner, our SSH
    connection plugin.

    Assembled from Nornir's own parts as InitNornir does, without its plugin discovery: InitNornir
    scans every installed distribution's entry points three times (~40 ms of every `fab` start, issue
    17's profile) to find plugins that are registered here by name anyway."""
    from nornir.core import Nornir
    from nornir.core.configuration import Config
    from nornir.core.inventory import ConnectionOptions
    from nornir.core.plugins.inventory import InventoryPluginRegister
    from nornir.core.state import GlobalState
    from nornir.plugins.runners import ThreadedRunner

    from fleet.inventory import nornir_plugin

    register()
    nornir_plugin.register()

    def connection_options(h: FleetHost) -> dict[str, ConnectionOptions]:
        return {CONNECTION_NAME: ConnectionOptions(extras={"params": ssh_params(h, inv)})}

    configured = inv.defaults.get("data", {}).get("run", {}).get("workers")
    num_workers = settings.load().workers_for(len(hosts), inventory=configured, flag=workers)
    config = Config.from_dict(
        inventory={"plugin": nornir_plugin.PLUGIN_NAME},
        runner={"plugin": "threaded", "options": {"num_workers": num_workers}},
        logging={"enabled": False},  # no nornir.log in the working directory; errors are results
    )
    config.logging.configure()
    plugin = InventoryPluginRegister.get_plugin(nornir_plugin.PLUGIN_NAME)
    inventory = plugin(inventory=inv, hosts=list(hosts), connection_options=connection_options).load()
    return Nornir(
        inventory=inventory,
        runner=ThreadedRunner(num_workers=num_workers),
        config=config,
        data=GlobalState(dry_run=False),
    )


def _wrap(step: StepFn) -> Callable[[Task], HostResult]:
    from fleet.inventory import nornir_plugin

    def nornir_task(task: Task) -> HostResult:
        fleet_host = nornir_plugin.fleet_host(task.host)
        started = time.monotonic()
        try:
            result = step(HostContext(task, fleet_host))
        except (UnreachableError, HostKeyError) as exc:
            result = HostResult(host=fleet_host.name, status="unreachable", error=exc.render())
        except FleetError as exc:
            result = HostResult(host=fleet_host.name, status="failed", error=exc.render())
        except Exception as exc:  # an unexpected error on one host must not hide the others
            status: Status = "failed"
            import paramiko

            if isinstance(exc, (OSError, EOFError, paramiko.SSHException)):
                status = "unreachable"  # the connection broke mid-run
            result = HostResult(host=fleet_host.name, status=status, error=f"{type(exc).__name__}: {exc}")
        result.duration = time.monotonic() - started
        return result

    nornir_task.__name__ = getattr(step, "__name__", "fleet_step")
    return nornir_task


def run_step(nr: Nornir, step: StepFn, *, processors: Sequence[Processor] = ()) -> list[HostResult]:
    """Run `step` on every host of `nr` in parallel; results in inventory order. `processors` (Nornir's)
    see each host start and finish as it happens (progress bars, per-host lines)."""
    agg = nr.with_processors(list(processors)).run(task=_wrap(step), on_failed=True)
    results = []
    for name in nr.inventory.hosts:
        multi = agg[name]
        value = multi[0].result if multi and isinstance(multi[0].result, HostResult) else None
        if value is None:
            exc = multi[0].exception if multi else None
            value = HostResult(host=name, status="failed", error=f"internal error: {exc!r}")
        results.append(value)
    return results


class HostProcessor:
    """A Nornir processor over our results: override `host_started` / `host_done` (both no-ops here).

    `host_done` gets each host's `HostResult` as soon as that host finishes, from the runner's thread."""

    def host_started(self, host: str) -> None: ...

    def host_done(self, result: HostResult) -> None: ...

    # Nornir's Processor protocol
    def task_started(self, task: Task) -> None: ...

    def task_completed(self, task: Task, result: AggregatedResult) -> None: ...

    def task_instance_started(self, task: Task, host: NornirHost) -> None:
        self.host_started(host.name)

    def task_instance_completed(self, task: Task, host: NornirHost, result: MultiResult) -> None:
        value = result[0].result if result else None
        if isinstance(value, HostResult):
            self.host_done(value)

    def subtask_instance_started(self, task: Task, host: NornirHost) -> None: ...

    def subtask_instance_completed(self, task: Task, host: NornirHost, result: MultiResult) -> None: ...


def run_on(
    inv: Inventory,
    hosts: Sequence[FleetHost],
    step: StepFn,
    *,
    workers: int | None = None,
    processors: Sequence[Processor] = (),
) -> list[HostResult]:
    """Convenience: build Nornir for `hosts`, run one step (seen by `processors`), close every connection."""
    if not hosts:
        return []
    nr = build_nornir(inv, hosts, workers)
    try:
        return run_step(nr, step, processors=processors)
    finally:
        nr.close_connections(on_good=True, on_failed=True)


def command_step(script: str, timeout: float | None = None) -> StepFn:
    """A step that runs one shell script and classifies the result by exit code."""

    def run_command(ctx: HostContext) -> HostResult:
        r = ctx.run(script, timeout=timeout)
        return HostResult(
            host=ctx.host.name,
            status="ok" if r.exited == 0 else "failed",
            exit_code=r.exited,
            stdout=r.stdout,
            stderr=r.stderr,
        )

    return run_command
