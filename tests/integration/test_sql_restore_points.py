"""The restore point before a migration, against the Cloud SQL Admin stand-in (standins/datalayer_api.py)
with the real client (google-auth's AuthorizedSession): an on-demand backup is a long-running operation
polled to DONE, its backup id confirmed SUCCESSFUL through backupRuns.get; a failing backup or an
unknown instance is a FleetError and nothing is migrated; PITR when automated backups are off. And the
whole migration phase of the engine (fake hosts) taking its restore point from the stand-in."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleet.errors import FleetError
from fleet.gcp.sqlbackup import CloudSqlRestorePoints
from standins.datalayer_api import LocalDataLayerApi
from tests.unit.test_rollout_engine import fleet
from tests.unit.test_rollout_migration import MigOps, go, migrating_plan

P = "my-dify-project"
MAIN: dict[str, Any] = {
    "name": "dify-main",
    "region": "europe-west1",
    "databaseVersion": "POSTGRES_15",
    "settings": {"backupConfiguration": {"enabled": True, "pointInTimeRecoveryEnabled": True}},
}


@pytest.fixture
def api() -> Iterator[LocalDataLayerApi]:
    server = LocalDataLayerApi().start()
    server.put_sql_instance(P, dict(MAIN))
    try:
        yield server
    finally:
        server.stop()


def points(api: LocalDataLayerApi, instance: str = "dify-main") -> CloudSqlRestorePoints:
    return CloudSqlRestorePoints(P, instance, endpoint=api.url, poll=0.01)


def test_an_on_demand_backup_polled_to_done(api: LocalDataLayerApi) -> None:
    api.backup_polls = 3
    point = points(api).take("compose-fleet ro-1: before schema rev-c")
    assert point.kind == "backup" and point.where == f"cloudsql/{P}/dify-main"
    assert point.restore_command == (
        f"gcloud sql backups restore {point.id} --restore-instance=dify-main "
        f"--backup-instance=dify-main --project={P}"
    )
    [run] = api.backup_runs(P, "dify-main")
    assert (run["id"], run["status"], run["type"]) == (point.id, "SUCCESSFUL", "ON_DEMAND")
    assert run["description"] == "compose-fleet ro-1: before schema rev-c"
    calls = [(c.method, c.path.rsplit("/", 2)[-2]) for c in api.calls()]
    assert calls.count(("POST", "dify-main")) == 1  # one backupRuns.insert
    assert sum(1 for m, p in calls if m == "GET" and p == "operations") == 3  # polled to DONE


def test_the_stand_in_speaks_the_wire_format(api: LocalDataLayerApi) -> None:
    base = f"{api.url}/v1/projects/{P}"
    req = urllib.request.Request(
        f"{base}/instances/dify-main/backupRuns",
        data=json.dumps({"description": "d"}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req) as resp:
        op = json.load(resp)
    assert (op["kind"], op["status"], op["operationType"]) == ("sql#operation", "PENDING", "BACKUP_VOLUME")
    assert op["backupContext"]["kind"] == "sql#backupContext" and op["targetId"] == "dify-main"
    with urllib.request.urlopen(f"{base}/operations/{op['name']}") as resp:
        assert json.load(resp)["status"] == "RUNNING"
    with urllib.request.urlopen(f"{base}/instances/dify-main/backupRuns") as resp:
        listed = json.load(resp)
    assert listed["kind"] == "sql#backupRunsList" and listed["items"][0]["status"] == "RUNNING"
    with pytest.raises(urllib.error.HTTPError) as info:  # one backup at a time, as Cloud SQL
        urllib.request.urlopen(req)
    assert info.value.code == 409


def test_a_failing_backup_is_an_error(api: LocalDataLayerApi) -> None:
    api.fail_backups("BACKUP_FAILED: the instance is under maintenance")
    with pytest.raises(FleetError, match="the backup of cloudsql/my-dify-project/dify-main failed") as info:
        points(api).take("x")
    assert "under maintenance" in info.value.what and info.value.hint == "nothing was migrated"
    assert api.backup_runs(P, "dify-main")[0]["status"] == "FAILED"


def test_a_caller_without_backup_rights_is_told_which_permission(api: LocalDataLayerApi) -> None:
    """A viewer can read the instance but not take a backup: the hint names the write permission."""
    api.deny(f"/v1/projects/{P}/instances/dify-main/backupRuns")
    with pytest.raises(FleetError) as err:
        points(api).take("compose-fleet ro-1: before schema rev-c")
    text = str(err.value) + (err.value.hint or "")
    assert "cannot write" in text and "cloudsql.backupRuns.create" in text
    assert "roles/cloudsql.viewer" not in text
    assert api.backup_runs(P, "dify-main") == []


def test_an_unknown_instance_is_an_error(api: LocalDataLayerApi) -> None:
    with pytest.raises(FleetError, match="cannot read instance cloudsql/my-dify-project/nope"):
        points(api, "nope").take("x")


def test_pitr_timestamp_when_backups_are_off(api: LocalDataLayerApi) -> None:
    api.put_sql_instance(
        P,
        {**MAIN, "settings": {"backupConfiguration": {"enabled": False, "pointInTimeRecoveryEnabled": True}}},
    )
    point = points(api).take("x")
    assert point.kind == "pitr" and point.id.endswith("Z")
    assert point.restore_command.startswith("gcloud sql instances clone dify-main dify-main-restore-")
    assert f"--point-in-time={point.id}" in point.restore_command
    assert api.backup_runs(P, "dify-main") == []  # nothing to wait for


def test_the_migration_phase_takes_its_restore_point_from_cloud_sql(
    api: LocalDataLayerApi, tmp_path: Path
) -> None:
    sims = fleet(2)
    ops = MigOps(sims)
    ran = go(tmp_path, ops, migrating_plan(sims), points(api))  # type: ignore[arg-type]
    assert ran.report.outcome == "succeeded" and len(ops.migrations) == 1
    [run] = api.backup_runs(P, "dify-main")
    point = next(e for e in ran.events if e["event"] == "migration" and e["status"] == "restore-point")
    assert point["restore_point"]["id"] == run["id"] and run["status"] == "SUCCESSFUL"

    api.fail_backups("BACKUP_FAILED: disk full")
    sims = fleet(2)
    ops = MigOps(sims)
    failed = go(tmp_path / "2", ops, migrating_plan(sims), points(api))  # type: ignore[arg-type]
    assert failed.report.outcome == "failed" and ops.migrations == []
    assert "disk full" in failed.report.problems[-1] and "nothing was migrated" in failed.report.problems[-1]
