"""CPU time of the benchmark's sshd hosts (their sessions and every command they run), apart from the
operator's: the engine benchmark's hosts share this machine's cores with the operator, and this says
how much of a rollout's wall time went to the hosts' side of it.

The sshd processes are moved into a cgroup of their own (cgroup v1 `cpuacct`, else a cgroup v2 group),
so every session and command they fork is counted there. Needs root; where no cgroup can be made the
reading is None and the report says "not measured".
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path

V1 = Path("/sys/fs/cgroup/cpuacct")
V2 = Path("/sys/fs/cgroup/unified")


class HostCpu:
    """A cgroup holding the benchmark's sshd processes; `seconds()` is their CPU time so far."""

    def __init__(self, name: str) -> None:
        self.path: Path | None = None
        self.kind = ""
        for base, kind in ((V1, "v1"), (V2, "v2")):
            if not base.is_dir():
                continue
            path = base / f"{name}-{os.getpid()}"
            try:
                path.mkdir(exist_ok=True)
            except OSError:
                continue
            self.path, self.kind = path, kind
            break

    def add(self, pids: Iterable[int]) -> bool:
        """Move `pids` (and so everything they start from now on) into the group."""
        if self.path is None:
            return False
        try:
            for pid in pids:
                (self.path / "cgroup.procs").write_text(f"{pid}\n")
        except OSError:
            self.close()
            return False
        return True

    def seconds(self) -> float | None:
        if self.path is None:
            return None
        try:
            if self.kind == "v1":
                return int((self.path / "cpuacct.usage").read_text()) / 1e9
            for line in (self.path / "cpu.stat").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "usage_usec":
                    return int(value) / 1e6
        except (OSError, ValueError):
            return None
        return None

    def close(self) -> None:
        """Move what is left back to the root group and remove ours (a group with processes cannot go)."""
        if self.path is None:
            return
        path, self.path = self.path, None
        root = path.parent / "cgroup.procs"
        try:
            for pid in (path / "cgroup.procs").read_text().split():
                with contextlib.suppress(OSError):
                    root.write_text(f"{pid}\n")
            path.rmdir()
        except OSError:
            pass
