"""The local metadata server's answer to "who am I": a VM recreated under the same name (and, on
the fleet network, usually the same address) must be told its NEW instance id from its first request.
Answered from the member list read before the recreate, its agent wrote its health metric under the
old id for good, and the monitor never saw the new VM report (the self-healing proof failed once)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from fleet.local.config import LocalConfig
from fleet.local.vmservices import VmServices
from standins.metadata_server import GuestAttributes


@dataclass(frozen=True)
class Rec:
    ip: str
    name: str
    instance_id: str


class FakeBackend:
    """What VmServices asks of fleet.local.compute_docker.DockerCompute."""

    def __init__(self, records: list[Rec]) -> None:
        self.records = records
        self.reads = 0  # member lists read from "Docker"
        self.changes: dict[str, float] = {}
        self.fleet = SimpleNamespace(instances=self._instances)

    def _instances(self) -> list[Rec]:
        self.reads += 1
        return list(self.records)

    def changed_since(self, name: str, since: float) -> bool:
        return self.changes.get(name, float("-inf")) >= since

    def project(self, project: str) -> dict[str, Any]:
        return {"id": 1234, "commonInstanceMetadata": {"items": []}}

    def instance_metadata(self, rec: Rec) -> tuple[dict[str, str], str, list[str]]:
        return {}, "vm@local-project.iam.gserviceaccount.com", []


def services(tmp_path: Path, backend: FakeBackend) -> VmServices:
    vm = VmServices(LocalConfig(root=tmp_path), tmp_path, GuestAttributes())
    vm.backend = backend
    return vm


def test_a_recreated_vm_is_told_its_new_id_at_once(tmp_path: Path) -> None:
    backend = FakeBackend([Rec("10.222.0.3", "sh-2", "111"), Rec("10.222.0.4", "sh-1", "999")])
    vm = services(tmp_path, backend)
    first = vm.identify("10.222.0.3")
    assert first is not None and first.id == "111"
    # the MIG recreates sh-2: a new container, same name and address, a new id
    backend.changes["sh-2"] = time.monotonic()
    backend.records = [Rec("10.222.0.3", "sh-2", "222"), Rec("10.222.0.4", "sh-1", "999")]
    again = vm.identify("10.222.0.3")
    assert again is not None and again.id == "222"


def test_an_unchanged_vm_is_answered_from_the_list_without_asking_docker(tmp_path: Path) -> None:
    backend = FakeBackend([Rec("10.222.0.3", "sh-2", "111"), Rec("10.222.0.4", "sh-1", "999")])
    vm = services(tmp_path, backend)
    assert vm.identify("10.222.0.4") is not None and backend.reads == 1
    for _ in range(5):
        who = vm.identify("10.222.0.4")
        assert who is not None and who.id == "999"
    assert backend.reads == 1  # within the list's TTL: no Docker call per request
    # a change to ANOTHER member does not make sh-1's requests wait for Docker either
    backend.changes["sh-2"] = time.monotonic()
    assert vm.identify("10.222.0.4") is not None and backend.reads == 1
