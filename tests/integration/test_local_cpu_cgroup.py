"""The CPU reader against a real container's cgroup on this machine: a container that burns CPU for
about a second shows it in its counter, and the utilization the monitor would compute is plausible.
One small container (the base image every local fleet builds from), a few seconds in all."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator

import pytest

from fleet.local.config import LocalConfig
from fleet.local.cpu import ContainerCpu, engine_usage
from fleet.local.engine import ensure_engine
from fleet.local.progress import Progress
from fleet.local.rootfs import ensure_base
from fleet.scenarios.monitor import CpuSignal

pytestmark = [pytest.mark.localfleet, pytest.mark.loadproof]


@pytest.fixture(scope="module")
def container() -> Iterator[str]:
    config = LocalConfig()
    ensure_engine(config)
    image = ensure_base(config, Progress(rich=False))
    name = f"fleet-cputest-{secrets.token_hex(4)}"
    subprocess.run(
        ["docker", "run", "-d", "--rm", "--name", name, "--init", image, "sleep", "120"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    try:
        yield name
    finally:
        subprocess.run(["docker", "rm", "-f", name], check=False, capture_output=True, timeout=60)


def test_a_busy_container_shows_in_its_cgroup_counter(container: str) -> None:
    reader = ContainerCpu()
    signal = CpuSignal()
    first = reader.sample([container])[container]
    signal.add({"vm": first}, keep=3)
    assert first.vcpus >= 1 and first.usage >= 0
    # about one CPU-second of work inside the container (a shell loop, bounded by timeout)
    subprocess.run(
        ["docker", "exec", container, "timeout", "1", "sh", "-c", "while :; do :; done"],
        check=False,
        timeout=60,
    )
    second = reader.sample([container])[container]
    assert second.container_id == first.container_id
    used = second.usage - first.usage
    assert used > 0.05, f"the loop's CPU time is in the container's counter ({used:.3f} s)"
    found = signal.add({"vm": second}, keep=3)
    assert found is not None
    mean, per = found
    assert 0 < per["vm"] <= 1.0 and mean == per["vm"]
    assert reader.engine_reads == 0, "read from the cgroup file, not through the engine"
    # the Docker Engine's own counter (the fallback) is the same counter, read later: not smaller
    assert engine_usage(second.container_id) >= second.usage
    assert reader.sample(["fleet-cputest-does-not-exist"]) == {}, "no container: no data"
