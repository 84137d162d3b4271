"""The IAM lines `fab infra.plan` prints: the functions' custom role matches the calls functions/gce.py
makes, the history condition is scoped to the fleet's prefix, and the real gcloud parses every line."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from fleet.commands import iam
from fleet.errors import FleetError
from fleet.gcp import infra
from tests.unit.test_infra_pure import config

ROOT = Path(__file__).resolve().parents[2]

# each Compute method functions/gce.py calls -> the permission Google documents for it
METHOD_PERMISSION = {
    "autoscalers.get": "compute.autoscalers.get",
    "autoscalers.patch_unary": "compute.autoscalers.update",
    "region_autoscalers.get": "compute.autoscalers.get",
    "region_autoscalers.patch_unary": "compute.autoscalers.update",
    "igms.get": "compute.instanceGroupManagers.get",
    "region_igms.get": "compute.instanceGroupManagers.get",
    "igms.list_managed_instances": "compute.instanceGroupManagers.get",
    "region_igms.list_managed_instances": "compute.instanceGroupManagers.get",
    "igms.recreate_instances_unary": "compute.instanceGroupManagers.update",
    "region_igms.recreate_instances_unary": "compute.instanceGroupManagers.update",
    "igms.resize_unary": "compute.instanceGroupManagers.update",
    "region_igms.resize_unary": "compute.instanceGroupManagers.update",
    "instances.list": "compute.instances.list",
    "instances.reset_unary": "compute.instances.reset",
    "instances.set_labels_unary": "compute.instances.setLabels",
    "projects.get": "compute.projects.get",
    "global_ops.get": "compute.globalOperations.get",
    "region_ops.get": "compute.regionOperations.get",
    "zone_ops.get": "compute.zoneOperations.get",
}


def test_the_functions_role_is_exactly_what_their_calls_need() -> None:
    source = (ROOT / "functions" / "gce.py").read_text()
    called = set(re.findall(r"self\.api\.([a-z_]+\.[a-z_]+)", source)) - {"compute.", ""}
    called = {c for c in called if not c.startswith("compute.")}
    unknown = called - METHOD_PERMISSION.keys()
    assert not unknown, f"functions/gce.py calls {sorted(unknown)}: add their permission to the role"
    assert set(iam.FUNCTIONS_PERMISSIONS) == {METHOD_PERMISSION[c] for c in called}
    lines = [line.render() for line in infra.iam_lines(config())]
    assert not any("instanceAdmin" in line for line in lines)
    create = next(line for line in lines if "iam roles create" in line)
    assert "--permissions=" + ",".join(iam.FUNCTIONS_PERMISSIONS) in create
    assert any("--role=projects/my-dify-project/roles/fleetFunctions" in line for line in lines)


def test_the_vms_may_create_objects_under_their_fleets_history_only() -> None:
    lines = [line.render() for line in infra.iam_lines(config())]
    history = [line for line in lines if "objectCreator" in line]
    assert len(history) == 1
    prefix = config().store_url.removeprefix("gs://").split("/", 1)
    expected = f"projects/_/buckets/{prefix[0]}/objects/{prefix[1]}/history/"
    assert f'resource.name.startsWith("{expected}")' in history[0]
    with pytest.raises(FleetError, match="store prefix"):
        iam.service_account_lines(
            "p", "vm-account@p.iam.gserviceaccount.com", bucket="b-1", store_prefix="fleets/x/../y"
        )


@pytest.mark.skipif(shutil.which("gcloud") is None, reason="the Google Cloud CLI is not installed")
def test_real_gcloud_parses_every_iam_line(tmp_path: Path) -> None:
    """As for the functions' deploy lines: with an empty configuration each kind of line must get as far
    as "no active account" (exit 1), never an argument error (exit 2)."""
    env = {
        **os.environ,
        "CLOUDSDK_CONFIG": str(tmp_path / "gcloud-config"),
        "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
    }
    seen: set[tuple[str, ...]] = set()
    for line in infra.iam_lines(config()):
        kind = (*line.argv[1:3], str(any(a.startswith("--condition=expression") for a in line.argv)))
        if kind in seen:
            continue
        seen.add(kind)
        proc = subprocess.run(list(line.argv), capture_output=True, text=True, timeout=120, env=env)
        assert proc.returncode == 1, f"{line.render()}\n{proc.stderr}"
        assert "do not currently have an active account" in proc.stderr, proc.stderr
    assert len(seen) >= 6
