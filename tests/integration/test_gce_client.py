"""fleet/gcp/compute.py with the real google-cloud-compute client against the local Compute endpoint."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fleet.gcp.compute import Compute, ComputeError, PreconditionFailed
from standins.compute_api import ComputeApi
from standins.compute_state import InMemoryCompute

ZONE = "europe-west1-b"


@pytest.fixture
def api() -> Iterator[tuple[ComputeApi, InMemoryCompute]]:
    backend = InMemoryCompute(action_seconds=0.1, op_seconds=0.05)
    backend.add_project("p")
    backend.add_mig("p", ZONE, "mig", size=2, age=3600)
    server = ComputeApi(backend).start()
    yield server, backend
    server.stop()
    backend.close()


def test_project_metadata_compare_and_swap(api: tuple[ComputeApi, InMemoryCompute]) -> None:
    server, _ = api
    c = Compute(server.url)
    items, fp = c.project_metadata("p")
    assert items == {}
    c.set_project_metadata("p", {"compose-fleet-lock": "x"}, fp)
    items2, fp2 = c.project_metadata("p")
    assert items2 == {"compose-fleet-lock": "x"} and fp2 != fp
    with pytest.raises(PreconditionFailed):
        c.set_project_metadata("p", {"compose-fleet-lock": "y"}, fp)  # stale fingerprint
    assert c.project_metadata("p")[0] == {"compose-fleet-lock": "x"}
    calls = [call.method for call in server.calls()]
    assert (
        calls.count("projects.setCommonInstanceMetadata") == 2
    )  # the stale one reached the API and was refused


def test_labels_set_and_clear_keep_others(api: tuple[ComputeApi, InMemoryCompute]) -> None:
    server, backend = api
    c = Compute(server.url)
    name = backend.member_names("p", ZONE, "mig")[0]
    c.set_label("p", ZONE, name, "team", "ops")
    c.set_label("p", ZONE, name, "fleet-rollout", "r1")
    assert dict(c.instance("p", ZONE, name).labels) == {"team": "ops", "fleet-rollout": "r1"}
    c.set_label("p", ZONE, name, "fleet-rollout", None)
    assert dict(c.instance("p", ZONE, name).labels) == {"team": "ops"}


def test_errors_are_fleet_errors(api: tuple[ComputeApi, InMemoryCompute]) -> None:
    server, _ = api
    with pytest.raises(ComputeError, match="not found"):
        Compute(server.url).instance("p", ZONE, "ghost")
