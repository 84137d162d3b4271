"""The fleet lock: one record in the Compute project's common instance metadata.

Why there: every operator with access to the project, and the Cloud Functions (autoheal, scale),
can read it with the credentials they already have, and `setCommonInstanceMetadata` takes the
fingerprint read before, so a write based on a stale read fails (412) instead of overwriting a lock
somebody else just took: compare-and-swap without another service. Format and key are the shared
contract in functions/fleet_contract.py. A lock expires; the rollout renews it from a heartbeat
thread, so a killed operator blocks the fleet for one TTL at most, and an expired lock can be taken
over (with a warning).

The lock names the process holding it (`holder`: host:pid:process start time). The same rollout id
from another process is refused with the holder's details while that process may be alive, so a
rollout never runs twice at once (and two heartbeats never renew one lock); a resume on the machine
of a run that died takes the lock back at once. `fab deploy` takes the same lock as a rollout (with a dp- id).

Renewal never dies quietly: every failure is logged and retried, and when the lock cannot be renewed
in time the heartbeat reports it lost *before* it expires, so the rollout pauses while still holding
it. Its Compute calls are bounded well below the TTL.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, cast

from fleet import settings
from fleet.errors import FleetError
from fleet.gcp.compute import Compute, PreconditionFailed, endpoint_for
from fleet.rollout.journal import pid_alive
from functions.fleet_contract import (
    LOCK_METADATA_KEY,
    Lock,
    is_held,
    lock_problem,
    lock_to_json,
    parse_lock,
)

if TYPE_CHECKING:
    from fleet.inventory import FleetHost, Inventory

DEFAULT_TTL = settings.DEFAULT_LOCK_TTL
CAS_ATTEMPTS = 8
Clock = Callable[[], datetime]


def _start_time(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot): tells it from a later one with the same pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 else None


_TOKEN = _start_time(os.getpid()) or secrets.token_hex(4)


class LockHeld(FleetError):
    """Somebody else holds the fleet lock."""


class LockLost(FleetError):
    """Our lock was released or taken by somebody else while we held it."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def operator() -> str:
    """user@machine (FLEET_OPERATOR overrides): who holds a lock."""
    return settings.load().operator_for()


def process_holder() -> str:
    """host:pid:token of this process (the `holder` of the locks it takes)."""
    return f"{socket.gethostname()}:{os.getpid()}:{_TOKEN}"


def _holder_parts(holder: str) -> tuple[str, int | None]:
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    return host, int(pid) if pid.isdigit() else None


def holder_text(holder: str) -> str:
    host, pid = _holder_parts(holder)
    return f"process pid {pid} on {host}" if pid else f"process {holder}"


def _holder_dead(holder: str) -> bool:
    """Provably gone: a process of this machine that no longer runs (or whose pid is reused)."""
    host, pid = _holder_parts(holder)
    if host != socket.gethostname() or pid is None:
        return False  # another machine: we cannot tell
    token = holder.split(":", 2)[2] if holder.count(":") >= 2 else ""
    started = _start_time(pid)
    if started is None:
        return True  # no such process here
    return started != token if token.isdigit() else not pid_alive(pid)


def describe(lock: Lock, now: datetime | None = None) -> str:
    now = now or utcnow()
    left = (lock.expires - now).total_seconds()
    state = f"expires in {left:.0f}s" if left > 0 else f"EXPIRED {-left:.0f}s ago"
    reason = f" ({lock.reason})" if lock.reason else ""
    process = f" ({holder_text(lock.holder)})" if lock.holder else ""
    return (
        f"held by {lock.owner}{process} for rollout {lock.rollout_id or '-'}{reason}, fleet {lock.fleet}, "
        f"since {lock.created:%Y-%m-%dT%H:%M:%SZ}, {state}"
    )


@dataclass(frozen=True)
class LockStatus:
    lock: Lock | None
    problem: str | None  # the stored value is garbled (treated as not held, as the functions do)
    held: bool
    project: str


class FleetLock:
    """The lock of one fleet, stored in `project`'s metadata through `compute`."""

    def __init__(
        self,
        compute: Compute,
        project: str,
        fleet: str,
        *,
        clock: Clock = utcnow,
        warn: Callable[[str], None] | None = None,
        holder: str | None = None,
    ) -> None:
        self.compute = compute
        self.project = project
        self.fleet = fleet
        self.clock = clock
        self.warn = warn or (lambda _msg: None)
        self.holder = holder or process_holder()

    def bounded(self, ttl: float) -> FleetLock:
        """The same lock through a Compute whose calls all end well within `ttl` (for renewals)."""
        compute = self.compute
        if isinstance(compute, Compute):
            compute = Compute(
                compute.endpoint,
                op_timeout=min(compute.op_timeout, ttl / 4),
                call_timeout=min(compute.call_timeout, ttl / 8),
            )
        return FleetLock(
            compute, self.project, self.fleet, clock=self.clock, warn=self.warn, holder=self.holder
        )

    def _now(self) -> datetime:
        # the contract stores whole seconds: work in whole seconds so what we hold equals what is stored
        return self.clock().astimezone(UTC).replace(microsecond=0)

    def _read(self) -> tuple[dict[str, str], str, Lock | None, str | None]:
        items, fingerprint = self.compute.project_metadata(self.project)
        text = items.get(LOCK_METADATA_KEY)
        return items, fingerprint, parse_lock(text), lock_problem(text)

    def status(self) -> LockStatus:
        _items, _fp, lock, problem = self._read()
        return LockStatus(lock, problem, is_held(lock, self._now()), self.project)

    def acquire(self, owner: str, reason: str, rollout_id: str, ttl: float = DEFAULT_TTL) -> Lock:
        """Take the lock, or raise LockHeld naming the holder. Our own rollout id may take it back."""
        if ttl <= 0:
            raise FleetError(f"invalid lock TTL {ttl!r}", hint="seconds, > 0 (rollout.lock_ttl)")
        for _ in range(CAS_ATTEMPTS):
            items, fingerprint, current, problem = self._read()
            now = self._now()
            if current is not None and is_held(current, now):
                if current.rollout_id != rollout_id:
                    raise LockHeld(
                        f"the fleet is locked: {describe(current, now)}",
                        where=f"project {self.project} metadata {LOCK_METADATA_KEY}",
                        hint="wait for it to finish, or if that rollout is dead: "
                        "`fab lock.release --force` (check `fab lock.status` first)",
                    )
                if current.holder and current.holder != self.holder:
                    if not _holder_dead(current.holder):
                        raise LockHeld(
                            f"rollout {rollout_id} is already running in another process: "
                            f"{describe(current, now)}",
                            where=f"project {self.project} metadata {LOCK_METADATA_KEY}",
                            hint="let it finish or stop it (Ctrl-C); if that process is dead, wait for "
                            "the lock to expire or `fab lock.release --force`",
                        )
                    self.warn(
                        f"taking back the lock of rollout {rollout_id} from a dead run "
                        f"({holder_text(current.holder)})"
                    )
                elif current.owner != owner:
                    self.warn(f"taking over the lock of rollout {rollout_id} from {current.owner}")
            elif current is not None:
                self.warn(f"taking over an expired lock: {describe(current, now)}")
            elif problem is not None:
                self.warn(f"replacing an unreadable lock value ({problem})")
            new = Lock(self.fleet, owner, reason, rollout_id, now, now + timedelta(seconds=ttl), self.holder)
            items[LOCK_METADATA_KEY] = lock_to_json(new)
            try:
                self.compute.set_project_metadata(self.project, items, fingerprint)
            except PreconditionFailed:
                continue  # somebody changed the metadata since we read it: decide again
            return new
        raise FleetError(
            "the project metadata kept changing while taking the lock",
            where=f"project {self.project}",
            hint="try again",
        )

    def renew(self, lock: Lock, ttl: float = DEFAULT_TTL) -> Lock:
        """Push the expiry out; LockLost when the stored lock is no longer ours."""
        for _ in range(CAS_ATTEMPTS):
            items, fingerprint, current, _problem = self._read()
            if not _same_holder(current, lock):
                raise LockLost(
                    "the fleet lock is no longer ours: "
                    + (describe(current, self._now()) if current else "it was released"),
                    where=f"project {self.project}",
                    hint="somebody ran `fab lock.release --force` or took over an expired lock",
                )
            new = replace(lock, expires=self._now() + timedelta(seconds=ttl))
            items[LOCK_METADATA_KEY] = lock_to_json(new)
            try:
                self.compute.set_project_metadata(self.project, items, fingerprint)
            except PreconditionFailed:
                continue
            return new
        raise FleetError("the project metadata kept changing while renewing the lock", where=self.project)

    def release(
        self, lock: Lock | None = None, *, owner: str | None = None, force: bool = False
    ) -> Lock | None:
        """Remove the lock if it is `lock` (or held by `owner`), or whatever it is with `force`.
        Returns the lock removed (None when there was none)."""
        for _ in range(CAS_ATTEMPTS):
            items, fingerprint, current, problem = self._read()
            if LOCK_METADATA_KEY not in items:
                return None
            mine = (lock is not None and _same_holder(current, lock)) or (
                owner is not None and current is not None and current.owner == owner
            )
            if not (mine or force):
                if current is None:
                    raise LockHeld(
                        f"the stored lock is unreadable ({problem})",
                        where=f"project {self.project}",
                        hint="`fab lock.release --force` removes it",
                    )
                if lock is not None:
                    return None  # not ours any more: leave the new holder alone
                raise LockHeld(
                    f"the fleet lock is not yours: {describe(current)}",
                    where=f"project {self.project}",
                    hint="`fab lock.release --force` removes it anyway (make sure that rollout is dead)",
                )
            del items[LOCK_METADATA_KEY]
            try:
                self.compute.set_project_metadata(self.project, items, fingerprint)
            except PreconditionFailed:
                continue
            return current
        raise FleetError("the project metadata kept changing while releasing the lock", where=self.project)


def _same_holder(stored: Lock | None, ours: Lock) -> bool:
    return (
        stored is not None
        and stored.rollout_id == ours.rollout_id
        and stored.owner == ours.owner
        and stored.fleet == ours.fleet
        and stored.holder == ours.holder
    )


class Heartbeat:
    """Renews a lock every `interval` seconds from a daemon thread.

    Any failure is logged (`warn`, `errors`) and retried sooner; `problem()` turns non-None when the
    lock was taken from us, or when it could not be renewed and less than `margin` seconds are left
    (also if the thread is stuck in a call): the rollout then stops at its next step while the lock
    is still ours. `on_lost` is told once."""

    def __init__(
        self,
        store: FleetLock,
        lock: Lock,
        ttl: float,
        interval: float | None = None,
        *,
        warn: Callable[[str], None] | None = None,
        on_lost: Callable[[FleetError], None] | None = None,
    ) -> None:
        self.store = store.bounded(ttl)
        self.lock = lock
        self.ttl = ttl
        self.interval = interval if interval is not None else max(1.0, ttl / 3)
        self.retry = min(self.interval, max(0.2, ttl / 30))
        self.margin = min(60.0, ttl / 5)  # give up this long before expiry: time to finish the host step
        self.warn = warn or (lambda _msg: None)
        self.on_lost = on_lost
        self.lost: FleetError | None = None
        self.errors: list[str] = []
        self._told = False
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleet-lock-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def _left(self) -> float:
        return (self.lock.expires - self.store.clock().astimezone(UTC)).total_seconds()

    def problem(self) -> str | None:
        """Why the rollout must stop now (None: the lock is ours for long enough)."""
        if self.lost is None and self._left() <= self.margin:
            last = f": {self.errors[-1]}" if self.errors else ""
            self._lose(
                FleetError(
                    f"could not renew the fleet lock; it expires in {max(0.0, self._left()):.0f}s{last}"
                )
            )
        return self.lost.what if self.lost is not None else None

    def _lose(self, exc: FleetError) -> None:
        with self._mutex:
            if self.lost is None:
                self.lost = exc
            if self._told or self.on_lost is None:
                return
            self._told = True
        try:
            self.on_lost(self.lost)
        except Exception as err:  # reporting it must not hide it
            self.errors.append(f"recording the lost lock: {err}")

    def _run(self) -> None:
        delay = self.interval
        while not self._stop.wait(delay):
            try:
                self.lock = self.store.renew(self.lock, self.ttl)
                delay = self.interval
                continue
            except LockLost as exc:
                self._lose(exc)
                return
            except Exception as exc:  # anything: a dead heartbeat would let the lock expire silently
                what = exc.what if isinstance(exc, FleetError) else f"{type(exc).__name__}: {exc}"
                self.errors.append(what)
                self.warn(f"could not renew the fleet lock ({what}); retrying in {self.retry:.0f}s")
            if self.problem() is not None:
                return
            delay = self.retry

    def stop(self) -> Lock:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        return self.lock


@contextmanager
def holding(
    store: FleetLock,
    owner: str,
    reason: str,
    rollout_id: str,
    ttl: float = DEFAULT_TTL,
    warn: Callable[[str], None] | None = None,
    on_lost: Callable[[FleetError], None] | None = None,
    announce: Callable[[str, str, str], None] | None = None,
) -> Iterator[Heartbeat]:
    """Take the lock (LockHeld names the holder), renew it while the body runs, release it after.
    `announce(action, result, detail)` hears acquire, lost and release (the fleet events topic)."""
    tell = announce or (lambda _action, _result, _detail: None)
    held = store.acquire(owner, reason, rollout_id, ttl)
    tell("acquire", "done", f"{owner}: {reason}")

    def lost(exc: FleetError) -> None:
        tell("lost", "failed", exc.what)
        if on_lost is not None:
            on_lost(exc)

    heartbeat = Heartbeat(store, held, ttl, warn=warn, on_lost=lost).start()
    try:
        yield heartbeat
    finally:
        final = heartbeat.stop()
        try:
            store.release(final)
            tell("release", "done", f"{owner}: {reason}")
        except FleetError as exc:
            tell("release", "failed", exc.what)
            if warn is not None:
                warn(f"could not release the fleet lock: {exc.what} (it expires on its own)")


def has_backend(inv: Inventory, hosts: Sequence[FleetHost]) -> bool:
    """Is there a Compute project to keep the lock in (a GCE inventory)? Plain SSH inventories have none."""
    return bool(
        any(h.settings.gce.project for h in hosts)
        or inv.defaults.get("data", {}).get("gce", {}).get("project")
    )


def project_of(inv: Inventory, hosts: Sequence[FleetHost]) -> str:
    """The one Compute project of the selected hosts (the lock lives in its metadata)."""
    projects = {h.settings.gce.project for h in hosts} | {
        inv.defaults.get("data", {}).get("gce", {}).get("project")
    }
    projects.discard(None)
    projects.discard("")
    if not projects:
        raise FleetError(
            "no Compute project for the fleet lock",
            where=f"inventory {inv.name}",
            hint="set gce.project in defaults.yaml (the lock lives in that project's metadata)",
        )
    host_projects = {h.settings.gce.project for h in hosts if h.settings.gce.project}
    if len(host_projects) > 1:
        raise FleetError(
            f"the selected hosts span several projects: {', '.join(sorted(host_projects))}",
            where=f"inventory {inv.name}",
            hint="roll out one project at a time (--where gce.project=...)",
        )
    return cast(str, next(iter(host_projects or projects)))


def compute_for(inv: Inventory, hosts: Sequence[FleetHost]) -> Compute:
    configured = None
    for h in hosts:
        configured = configured or h.settings.gce.api_endpoint
    configured = configured or inv.defaults.get("data", {}).get("gce", {}).get("api_endpoint")
    return Compute(endpoint_for(configured))


def for_inventory(
    inv: Inventory, hosts: Sequence[FleetHost], warn: Callable[[str], None] | None = None
) -> FleetLock:
    return FleetLock(compute_for(inv, hosts), project_of(inv, hosts), inv.name, warn=warn)


def ttl_of(hosts: Sequence[FleetHost]) -> float:
    configured = next((h.settings.rollout.lock_ttl for h in hosts if h.settings.rollout.lock_ttl), None)
    return settings.load().lock_ttl_for(configured)
