"""CPU time used by local instances, read from each instance container's own cgroup.

A local "VM" is a container: everything in it (sshd, its Docker engine, the compose stack, a load
process) runs in that container's cgroup or in cgroups nested under it, so the cgroup's CPU counter
is the VM's CPU time, as the hypervisor counts a GCE VM's. Read where the kernel keeps it:

    cgroup v1   <cpuacct mount>/<path>/cpuacct.usage        nanoseconds
    cgroup v2   /sys/fs/cgroup/<path>/cpu.stat usage_usec   microseconds

`<path>` is the container's cgroup as its init process lists it in /proc/<pid>/cgroup, so neither
the cgroup driver (cgroupfs, systemd) nor Docker's cgroup parent has to be guessed. One `docker
inspect` per container the first time (id, pid, CPU limits), then a file read per instance per
round (microseconds). Where the file cannot be read (a cgroup namespace hiding the path, another
machine), the Docker Engine API's one-shot stats are the fallback (`cpu_stats.cpu_usage.total_usage`,
the same counter, ~tens of ms a call). `docker stats --no-stream` is not used: it samples twice,
about 2 s per call.

vCPUs: Compute's instance/cpu/utilization is CPU time over the VM's vCPUs. A container's "vCPUs" are
its CPU limit (`--cpus`, or quota/period), else the CPUs of its cpuset, else the host's cores: local
instances are started without a limit, so on this machine each counts the host's cores.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

from fleet.errors import FleetError
from fleet.local import execute
from fleet.local.config import LocalConfig

CGROUP_ROOT = Path("/sys/fs/cgroup")
DOCKER_SOCKET = "/var/run/docker.sock"


@dataclass(frozen=True)
class CpuSample:
    """Cumulative CPU seconds of one instance at a moment, and its vCPUs."""

    usage: float  # CPU seconds since the container started
    at: float  # time.monotonic() of the read
    vcpus: float
    container_id: str  # a new id is a new VM (recreated): its counter starts again


def cpuset_count(spec: str) -> int:
    """CPUs in a cpuset list such as '0-3,6' (0 for an empty one)."""
    count = 0
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        low, _, high = part.partition("-")
        count += int(high or low) - int(low) + 1
    return count


def vcpus_of(nano_cpus: int, quota: int, period: int, cpuset: str, host: int | None = None) -> float:
    """A container's vCPUs: its CPU limit, else its cpuset's size, else the host's cores."""
    if nano_cpus > 0:
        return nano_cpus / 1e9
    if quota > 0 and period > 0:
        return quota / period
    if cpuset.strip():
        return float(cpuset_count(cpuset))
    return float(host or os.cpu_count() or 1)


def cgroup_usage_file(proc_cgroup: str, root: Path = CGROUP_ROOT) -> tuple[Path, float]:
    """(file, seconds per unit) of the CPU counter for a process, from its /proc/PID/cgroup text."""
    for line in proc_cgroup.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy != "0" and "cpuacct" in controllers.split(","):
            for mount in (controllers, "cpuacct", "cpu,cpuacct", "cpuacct,cpu"):
                candidate = root / mount / path.lstrip("/") / "cpuacct.usage"
                if candidate.exists():
                    return candidate, 1e-9
    for line in proc_cgroup.splitlines():
        if line.startswith("0::"):
            return root / line[3:].lstrip("/") / "cpu.stat", 1e-6
    raise FleetError("no cpuacct (v1) or unified (v2) cgroup in /proc/PID/cgroup", where="cgroup")


def read_counter(path: Path, unit: float) -> float:
    """CPU seconds from cpuacct.usage (one integer) or cpu.stat (the usage_usec line)."""
    text = path.read_text()
    if path.name == "cpu.stat":
        found = re.search(r"^usage_usec (\d+)$", text, re.MULTILINE)
        if found is None:
            raise FleetError("no usage_usec line", where=str(path))
        return int(found.group(1)) * unit
    return int(text.strip()) * unit


def engine_usage(container_id: str, socket_path: str = DOCKER_SOCKET, timeout: float = 10.0) -> float:
    """CPU seconds of a container from the Docker Engine API's one-shot stats."""

    class _Unix(HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(socket_path)

    conn = _Unix("localhost", timeout=timeout)
    try:
        conn.request("GET", f"/containers/{container_id}/stats?stream=false&one-shot=true")
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise FleetError(f"stats answered {resp.status}", where=f"docker container {container_id[:12]}")
        return int(json.loads(body)["cpu_stats"]["cpu_usage"]["total_usage"]) * 1e-9
    finally:
        conn.close()


@dataclass
class _Target:
    container_id: str
    vcpus: float
    read: Callable[[], float]


class ContainerCpu:
    """Reads the CPU counters of named containers; `sample(names)` costs one file read each."""

    def __init__(
        self,
        *,
        inspect: Callable[[Sequence[str]], list[dict[str, Any]]] | None = None,
        proc: Path = Path("/proc"),
        root: Path = CGROUP_ROOT,
    ) -> None:
        self._inspect = inspect or _docker_inspect
        self._proc, self._root = proc, root
        self._targets: dict[str, _Target] = {}
        self.engine_reads = 0  # how often the fallback was needed (documented as the slow path)

    def _resolve(self, containers: Sequence[str]) -> None:
        for info in self._inspect(containers):
            state, host = info.get("State") or {}, info.get("HostConfig") or {}
            pid = int(state.get("Pid") or 0)
            if not state.get("Running") or pid <= 0:
                continue
            name, cid = str(info.get("Name", "")).lstrip("/"), str(info.get("Id", ""))
            vcpus = vcpus_of(
                int(host.get("NanoCpus") or 0),
                int(host.get("CpuQuota") or 0),
                int(host.get("CpuPeriod") or 0),
                str(host.get("CpusetCpus") or ""),
            )
            self._targets[name] = _Target(cid, vcpus, self._reader(pid, cid))

    def _reader(self, pid: int, cid: str) -> Callable[[], float]:
        """The cgroup file's counter when it can be read from here, else the engine's stats."""
        try:
            path, unit = cgroup_usage_file((self._proc / str(pid) / "cgroup").read_text(), self._root)
            read_counter(path, unit)
        except (OSError, ValueError, FleetError):

            def from_engine() -> float:
                self.engine_reads += 1
                return engine_usage(cid)

            return from_engine

        def from_cgroup() -> float:
            return read_counter(path, unit)

        return from_cgroup

    def sample(self, containers: Sequence[str]) -> dict[str, CpuSample]:
        """A sample per running container (missing ones are left out: no data)."""
        new = [c for c in containers if c not in self._targets]
        if new:
            self._resolve(new)
        out: dict[str, CpuSample] = {}
        for name in containers:
            target = self._targets.get(name)
            if target is None:
                continue
            try:
                usage = target.read()
            except (OSError, ValueError, FleetError):
                del self._targets[name]  # gone or recreated: resolve it again next time
                continue
            out[name] = CpuSample(usage, time.monotonic(), target.vcpus, target.container_id)
        return out


def _docker_inspect(containers: Sequence[str]) -> list[dict[str, Any]]:
    """`docker container inspect` of the containers that exist (a missing one is no data)."""
    from fleet.local import dockercmd

    proc = execute.run(dockercmd.inspect_containers(containers), check=False, timeout=30)
    try:
        found = json.loads(proc.stdout or "[]")
    except ValueError:
        return []
    return [i for i in found if isinstance(i, dict)]


def instance_cpu(config: LocalConfig) -> Callable[[Sequence[str]], dict[str, CpuSample]]:
    """Samples by instance name (local-N) for the fleet's instance containers."""
    reader = ContainerCpu()

    def sample(names: Sequence[str]) -> dict[str, CpuSample]:
        containers = {config.container_name(config.index_of(n)): n for n in names}
        return {containers[c]: s for c, s in reader.sample(list(containers)).items()}

    return sample
