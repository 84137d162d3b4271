"""The rollout journal: every step of a rollout as one JSON line, written before the process moves on.

It is what `fab rollout --resume` starts from (the plan, which hosts were done, where each host
stopped) and an audit of what the operator's machine did. Each line is written and fsync'ed before
`append` returns, so a SIGKILL (or a power cut) loses at most the line being written. The hosts of a
batch journal in parallel: their fsyncs are shared (group commit: one fsync makes every line written
before it durable, and a thread whose line is already covered does not wait for another), so at 200
hosts the journal costs a few fsyncs per step rather than one per host in a queue. A torn last line
is cut off when a run claims the journal (and journaled as `repair`), and `append` never glues a
record onto an unterminated line, so the records after a crash are never lost with it. The journal
never decides on its own: resume reconciles it with each host's real state (fleet/rollout.py).

One process runs a rollout at a time: the run holds an exclusive flock on its journal (`claim`), so
a second `--resume` of the same rollout on this machine is refused while the first one lives (the
kernel drops the flock when a process dies, however it dies).

Layout: `.fleet/journal/<inventory name>-<hash of its path>/<rollout id>.jsonl` under the checkout
(FLEET_JOURNAL_DIR moves the root), so two inventories with the same directory name never mix.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleet import settings
from fleet.errors import FleetError

if TYPE_CHECKING:
    from fleet.inventory import Inventory

JOURNAL_ENV = settings.JOURNAL_ENV
SUFFIX = ".jsonl"
# outcomes after which there is nothing left to resume
FINAL = ("succeeded", "rolled-back")
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


def root() -> Path:
    """FLEET_JOURNAL_DIR, else .fleet/journal in the project directory."""
    return settings.load().journal_dir


def fleet_dir(inv: Inventory, base: Path | None = None) -> Path:
    """One directory per inventory: its name plus a hash of its resolved path."""
    digest = hashlib.sha256(str(Path(inv.path).resolve()).encode()).hexdigest()[:8]
    return (base or root()) / f"{inv.name}-{digest}"


def check_id(rollout_id: str) -> str:
    """Rollout ids are file names and GCE label values: [a-z0-9_-], at most 63 characters."""
    if not isinstance(rollout_id, str) or not _ID_RE.fullmatch(rollout_id):
        raise FleetError(
            f"invalid rollout id {rollout_id!r}",
            hint="ids look like ro-20261126-071330-3f9a (see `fab rollout --resume` output)",
        )
    return rollout_id


def now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


class Journal:
    """An append-only JSON-lines file; thread-safe (hosts of a batch journal in parallel)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()  # one writer at a time: whole lines, in order
        self._sync_lock = threading.Lock()  # one fsync at a time; it covers every line written before it
        self._written = 0  # lines this object has written
        self._synced = 0  # of those, how many an fsync has covered
        self._claim: int | None = None  # the fd holding the flock while this process runs the rollout

    @classmethod
    def create(cls, directory: Path, rollout_id: str) -> Journal:
        """A new journal, claimed by this process."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{check_id(rollout_id)}{SUFFIX}"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise FleetError(
                f"journal {path} already exists", hint="rollout ids are unique: try again"
            ) from None
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # nobody else can know the file yet
        journal = cls(path)
        journal._claim = fd
        return journal

    @classmethod
    def claim(cls, path: Path) -> Journal:
        """Take the journal of a rollout to run it (resume): refused while another process has it.
        Cuts off a torn last line (journaled as `repair`)."""
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError as exc:
            raise FleetError(f"cannot open the journal: {exc}", where=str(path)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = load(path).pid
            raise FleetError(
                f"rollout {path.name[: -len(SUFFIX)]} is already running in another process"
                + (f" (pid {pid})" if pid else ""),
                where=str(path),
                hint="let it finish, or stop it with Ctrl-C (it undrains and releases the lock), then resume",
            ) from None
        journal = cls(path)
        journal._claim = fd
        dropped = _cut_torn_tail(fd)
        if dropped:
            journal.append("repair", dropped_bytes=dropped, why="torn last line (a crash mid-write)")
        return journal

    def close(self) -> None:
        """Let go of the claim (another process may run the rollout from now on)."""
        fd, self._claim = self._claim, None
        if fd is not None:
            os.close(fd)  # closing the only descriptor of the open file drops the flock

    @property
    def rollout_id(self) -> str:
        return self.path.name[: -len(SUFFIX)]

    def append(self, event: str, **fields: Any) -> dict[str, Any]:
        """Write one event durably (written, then fsync'ed) and return it."""
        entry = {"t": now_text(), "event": event, **fields}
        line = json.dumps(entry, sort_keys=False, separators=(",", ":"), default=str) + "\n"
        with self._lock, open(self.path, "a+b") as handle:
            size = handle.seek(0, os.SEEK_END)
            if size and os.pread(handle.fileno(), 1, size - 1) != b"\n":
                line = "\n" + line  # terminate a torn line rather than glue this record onto it
            handle.write(line.encode("utf-8"))
            handle.flush()
            self._written += 1
            ticket = self._written
        self._sync(ticket)
        return entry

    def _sync(self, ticket: int) -> None:
        """Return once line `ticket` is on disk: an fsync started after it was written covers it."""
        with self._sync_lock:
            if self._synced >= ticket:
                return  # another thread's fsync, started after our write, already covered it
            with self._lock:
                upto = self._written
            fd = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(fd)  # per file, not per descriptor: every line written so far
            finally:
                os.close(fd)
            self._synced = upto


def _cut_torn_tail(fd: int) -> int:
    """Truncate `fd`'s file after its last newline; the number of bytes cut (0 when it was whole)."""
    size = os.fstat(fd).st_size
    end = size
    while end > 0:
        start = max(0, end - 65536)
        chunk = os.pread(fd, end - start, start)
        cut = chunk.rfind(b"\n")
        if cut >= 0:
            end = start + cut + 1
            break
        end = start
    if end == size:
        return 0
    os.ftruncate(fd, end)
    os.fsync(fd)
    return size - end


def read(path: Path) -> list[dict[str, Any]]:
    """Every event; a torn or garbled line (a SIGKILL mid-write) is skipped, not fatal."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise FleetError(f"cannot read the journal: {exc}", where=str(path)) from None
    events = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict) and isinstance(value.get("event"), str):
            events.append(value)
    return events


@dataclass
class Replay:
    """What a journal says happened. `hosts` maps each host to its last recorded step and result."""

    rollout_id: str
    plan: dict[str, Any] | None
    outcome: str | None  # from the `end` event; None = the process died before writing it
    staged: bool
    steps: dict[str, str] = field(default_factory=dict)  # host -> last step started
    results: dict[str, str] = field(default_factory=dict)  # host -> last host result
    resumes: int = 0
    pid: int | None = None
    events: int = 0
    reverting: list[str] | None = None  # hosts a started fleet rollback is undoing
    migrated: dict[str, Any] | None = None  # the `migration` event that says the migration finished

    @property
    def touched(self) -> list[str]:
        """Hosts this rollout started working on in any earlier run."""
        return sorted(set(self.steps) | set(self.results))

    @property
    def finished(self) -> bool:
        return self.outcome in FINAL


def replay(rollout_id: str, events: Sequence[Mapping[str, Any]]) -> Replay:
    out = Replay(rollout_id, None, None, False, events=len(events))
    for e in events:
        kind = e.get("event")
        if kind == "plan":
            out.plan = dict(e)
            out.pid = e.get("pid") if isinstance(e.get("pid"), int) else None
        elif kind == "resume":
            out.resumes += 1
            out.outcome = None  # a resumed run writes its own end
            out.pid = e.get("pid") if isinstance(e.get("pid"), int) else out.pid
        elif kind == "stage" and e.get("status") == "done":
            out.staged = True
        elif kind == "step" and isinstance(e.get("host"), str):
            out.steps[e["host"]] = str(e.get("step"))
        elif kind == "host" and isinstance(e.get("host"), str):
            out.results[e["host"]] = str(e.get("result"))
        elif kind == "fleet-rollback" and e.get("status") == "start" and isinstance(e.get("hosts"), list):
            seen = out.reverting or []
            out.reverting = seen + [str(h) for h in e["hosts"] if str(h) not in seen]
        elif kind == "migration" and e.get("status") == "done":
            out.migrated = dict(e)
        elif kind == "end":
            out.outcome = str(e.get("outcome"))
    return out


def journals(directory: Path) -> list[Path]:
    """Journals of one inventory, oldest first (ids start with a timestamp; mtime breaks ties)."""
    if not directory.is_dir():
        return []
    paths = [p for p in directory.glob(f"*{SUFFIX}") if p.is_file()]
    return sorted(paths, key=lambda p: (p.stat().st_mtime, p.name))


DEPLOY_PREFIX = "dp-"  # a `fab deploy` that migrated journals too; it is never resumed


def find(directory: Path, rollout_id: str | None = None) -> Path:
    """The journal of `rollout_id`, or the newest rollout (or rollback) journal of the inventory."""
    if rollout_id:
        path = directory / f"{check_id(rollout_id)}{SUFFIX}"
        if not path.exists():
            raise FleetError(
                f"no journal for rollout {rollout_id}",
                where=str(directory),
                hint="rollouts of this inventory: "
                + (", ".join(p.stem for p in journals(directory)) or "none"),
            )
        return path
    found = [p for p in journals(directory) if not p.name.startswith(DEPLOY_PREFIX)]
    if not found:
        raise FleetError(
            "no rollout to resume: this inventory has no journal",
            where=str(directory),
            hint="journals are kept on the machine that ran the rollout",
        )
    return found[-1]


def load(path: Path) -> Replay:
    return replay(path.name[: -len(SUFFIX)], read(path))


def pid_alive(pid: int | None) -> bool:
    """Is `pid` a live fleet operator process on this machine (so its rollout is still running)?"""
    if not pid or pid == os.getpid():
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return any(word in cmdline for word in ("fab", "fleet"))
