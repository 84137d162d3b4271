"""The rollout journal: every step of a rollout as one JSON line, written before the process moves on.

It is what `fab rollout --resume` starts from (the plan, which hosts were done, where each host
stopped) and an audit of what the operator's machine did. Each line is flushed and fsync'ed, so a
SIGKILL loses at most the line being written; `read` drops a torn last line. The journal never
decides on its own: resume reconciles it with each host's real state (fleet/rollout.py).

Layout: `.fleet/journal/<inventory name>-<hash of its path>/<rollout id>.jsonl` under the checkout
(FLEET_JOURNAL_DIR moves the root), so two inventories with the same directory name never mix.
"""

from __future__ import annotations

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

from fleet.errors import FleetError

if TYPE_CHECKING:
    from fleet.inventory import Inventory

JOURNAL_ENV = "FLEET_JOURNAL_DIR"
REPO_ROOT = Path(__file__).resolve().parent.parent
SUFFIX = ".jsonl"
# outcomes after which there is nothing left to resume
FINAL = ("succeeded", "rolled-back")
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


def root() -> Path:
    configured = os.environ.get(JOURNAL_ENV)
    return Path(configured) if configured else REPO_ROOT / ".fleet" / "journal"


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
        self._lock = threading.Lock()

    @classmethod
    def create(cls, directory: Path, rollout_id: str) -> Journal:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{check_id(rollout_id)}{SUFFIX}"
        if path.exists():
            raise FleetError(f"journal {path} already exists", hint="rollout ids are unique: try again")
        path.touch()
        return cls(path)

    @property
    def rollout_id(self) -> str:
        return self.path.name[: -len(SUFFIX)]

    def append(self, event: str, **fields: Any) -> dict[str, Any]:
        """Write one event durably (flush + fsync) and return it."""
        entry = {"t": now_text(), "event": event, **fields}
        line = json.dumps(entry, sort_keys=False, separators=(",", ":"), default=str) + "\n"
        with self._lock, open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
        return entry


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
        elif kind == "end":
            out.outcome = str(e.get("outcome"))
    return out


def journals(directory: Path) -> list[Path]:
    """Journals of one inventory, oldest first (ids start with a timestamp; mtime breaks ties)."""
    if not directory.is_dir():
        return []
    paths = [p for p in directory.glob(f"*{SUFFIX}") if p.is_file()]
    return sorted(paths, key=lambda p: (p.stat().st_mtime, p.name))


def find(directory: Path, rollout_id: str | None = None) -> Path:
    """The journal of `rollout_id`, or the newest one of the inventory."""
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
    found = journals(directory)
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
