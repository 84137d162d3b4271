"""Restore points of the main Cloud SQL instance, taken before a rollout migrates its schema.

An on-demand backup through the Cloud SQL Admin API v1 (`backupRuns.insert`, a long-running
operation polled with `operations.get` until DONE; its `backupContext.backupId` names the backup, and
`backupRuns.get` confirms it SUCCESSFUL). When the instance's automated backups are off but
point-in-time recovery is on, the restore point is a PITR timestamp instead (nothing to wait for:
any moment inside the retained log window can be cloned). Either way the restore point carries the
exact command that restores it, which the rollout journals and a refused rollback prints.

The client is google-auth's AuthorizedSession on the REST API, as fleet.gcp.datalayer reads the
instance (same credentials, endpoint override and error mapping: `data_layer.endpoints.sqladmin`
points it at standins/datalayer_api.py).
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fleet.errors import FleetError
from fleet.gcp.datalayer import SQLADMIN, DataLayerClients, Endpoints

API = "Cloud SQL Admin"
# what taking an on-demand backup needs beyond the viewer role the data layer check asks for
BACKUP_PERMISSION = "cloudsql.backupRuns.create (roles/cloudsql.editor, or a custom role with it)"


@dataclass(frozen=True)
class RestorePoint:
    """Where the database can be put back to: a backup id, a PITR timestamp, or (no managed database
    known) the time it was taken. `restore_command` is what restores it, exactly."""

    kind: str  # backup | pitr | timestamp
    id: str
    time: str
    where: str  # cloudsql/PROJECT/INSTANCE, or "database" (none known)
    restore_command: str

    def text(self) -> str:
        what = {"backup": f"backup {self.id}", "pitr": f"point in time {self.id}"}.get(
            self.kind, f"timestamp {self.id}"
        )
        return f"{what} of {self.where}"

    def as_dict(self) -> dict[str, str]:
        return {
            "kind": self.kind,
            "id": self.id,
            "time": self.time,
            "where": self.where,
            "restore_command": self.restore_command,
        }

    @classmethod
    def from_dict(cls, raw: Any) -> RestorePoint | None:
        if not isinstance(raw, dict) or not raw.get("id"):
            return None
        return cls(
            str(raw.get("kind") or "timestamp"),
            str(raw["id"]),
            str(raw.get("time") or ""),
            str(raw.get("where") or "database"),
            str(raw.get("restore_command") or ""),
        )


def backup_restore_command(project: str, instance: str, backup_id: str) -> str:
    """`gcloud sql backups restore`: overwrites the instance with the backup (it must be stopped from
    serving first: every VM drained or the fleet down)."""
    return shlex.join(
        [
            "gcloud",
            "sql",
            "backups",
            "restore",
            backup_id,
            f"--restore-instance={instance}",
            f"--backup-instance={instance}",
            f"--project={project}",
        ]
    )


def pitr_restore_command(project: str, instance: str, when: str) -> str:
    """A point-in-time clone (PITR restores into a new instance; point DB_HOST at it afterwards)."""
    stamp = when.replace("-", "").replace(":", "").replace("T", "-")[:13].lower()
    return shlex.join(
        [
            "gcloud",
            "sql",
            "instances",
            "clone",
            instance,
            f"{instance}-restore-{stamp}"[:98],
            f"--point-in-time={when}",
            f"--project={project}",
        ]
    )


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass
class CloudSqlRestorePoints:
    """`RestorePoints` for the fleet's main Cloud SQL instance."""

    project: str
    instance: str
    endpoint: str | None = None  # a local stand-in; None = Google's API
    timeout: float = 1800.0  # how long a backup may take
    poll: float = 2.0
    sleep: Callable[[float], None] = time.sleep

    def __post_init__(self) -> None:
        self._clients = DataLayerClients(Endpoints(sqladmin=self.endpoint), self.project, timeout=30.0)
        self._session: Any = None

    @property
    def where(self) -> str:
        return f"cloudsql/{self.project}/{self.instance}"

    def describe(self) -> str:
        return (
            f"an on-demand backup of Cloud SQL instance {self.project}/{self.instance} (a PITR timestamp "
            "instead if its automated backups are off and point-in-time recovery is on)"
        )

    # --- REST ------------------------------------------------------------------------------------

    def _base(self) -> str:
        return f"{(self.endpoint or SQLADMIN).rstrip('/')}/v1/projects/{self.project}"

    def _request(self, method: str, path: str, what: str, body: dict[str, Any] | None = None) -> Any:
        from google.api_core import exceptions as gexc

        def call() -> Any:
            if self._session is None:
                from google.auth.transport.requests import AuthorizedSession

                self._session = AuthorizedSession(self._clients._credentials(self.endpoint, API))
            resp = self._session.request(method, f"{self._base()}{path}", json=body, timeout=30.0)
            if resp.status_code >= 400:
                raise gexc.from_http_response(resp)
            return resp.json()

        needs = BACKUP_PERMISSION if method == "POST" else None
        return self._clients._call(API, self.endpoint, what, call, needs=needs)

    def instance_info(self) -> dict[str, Any]:
        found: dict[str, Any] = self._request("GET", f"/instances/{self.instance}", f"instance {self.where}")
        return found

    def insert_backup(self, description: str) -> dict[str, Any]:
        op: dict[str, Any] = self._request(
            "POST",
            f"/instances/{self.instance}/backupRuns",
            f"a backup of {self.where}",
            {"description": description},
        )
        return op

    def operation(self, name: str) -> dict[str, Any]:
        op: dict[str, Any] = self._request("GET", f"/operations/{name}", f"operation {name}")
        return op

    def backup_run(self, backup_id: str) -> dict[str, Any]:
        run: dict[str, Any] = self._request(
            "GET", f"/instances/{self.instance}/backupRuns/{backup_id}", f"backup {backup_id}"
        )
        return run

    def backup_runs(self) -> list[dict[str, Any]]:
        listed = self._request("GET", f"/instances/{self.instance}/backupRuns", f"backups of {self.where}")
        return list(listed.get("items") or [])

    # --- the restore point -----------------------------------------------------------------------

    def take(self, description: str) -> RestorePoint:
        """A backup (waited for until SUCCESSFUL), or a PITR timestamp when backups are off."""
        settings = self.instance_info().get("settings") or {}
        backup = settings.get("backupConfiguration") or {}
        if backup.get("enabled") is not True and backup.get("pointInTimeRecoveryEnabled") is True:
            when = _now()
            return RestorePoint(
                "pitr",
                when,
                when,
                self.where,
                pitr_restore_command(self.project, self.instance, when),
            )
        op = self.insert_backup(description[:250])
        name = str(op.get("name") or "")
        deadline = time.monotonic() + self.timeout
        while op.get("status") != "DONE":
            if time.monotonic() > deadline:
                raise FleetError(
                    f"the backup of {self.where} did not finish in {self.timeout:.0f}s (operation {name})",
                    where=API,
                    hint="nothing was migrated; look at the operation with "
                    f"`gcloud sql operations describe {name} --project={self.project}`",
                )
            self.sleep(self.poll)
            op = self.operation(name)
        errors = (op.get("error") or {}).get("errors") or []
        if errors:
            detail = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors)
            raise FleetError(
                f"the backup of {self.where} failed: {detail}", where=API, hint="nothing was migrated"
            )
        backup_id = str((op.get("backupContext") or {}).get("backupId") or "")
        if not backup_id:  # older answers name no backup: the newest on-demand run with our description
            runs = [r for r in self.backup_runs() if r.get("description") == description[:250]]
            backup_id = str(runs[0]["id"]) if runs else ""
        if not backup_id:
            raise FleetError(f"the backup of {self.where} finished but names no backup id", where=API)
        run = self.backup_run(backup_id)
        if run.get("status") != "SUCCESSFUL":
            raise FleetError(
                f"backup {backup_id} of {self.where} is {run.get('status')}, not SUCCESSFUL",
                where=API,
                hint="nothing was migrated",
            )
        return RestorePoint(
            "backup",
            backup_id,
            str(run.get("endTime") or op.get("endTime") or _now()),
            self.where,
            backup_restore_command(self.project, self.instance, backup_id),
        )
