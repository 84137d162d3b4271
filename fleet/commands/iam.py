"""The service accounts and IAM bindings a fleet needs, as exact `gcloud` command lines (argv as data).

`fab infra.plan` prints them; nothing runs them for you: the operator's identity that creates
Compute resources usually lacks IAM admin rights, and IAM changes are reviewed separately
(docs/infra.md). Every value is validated here and quoted by `sh`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from fleet.commands.base import sh
from fleet.errors import FleetError

_PROJECT = re.compile(r"^(?:[a-z0-9][a-z0-9.-]*:)?[a-z0-9][a-z0-9-]{0,62}$")
_SA = re.compile(r"^([a-z][a-z0-9-]{4,61})@([a-z0-9][a-z0-9.-]*)$")
_ROLE = re.compile(r"^roles/[A-Za-z0-9_.]+$")
_PERMISSION = re.compile(r"^[a-z]+\.[A-Za-z]+\.[A-Za-z]+$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
_SECRET = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
_TOPIC = re.compile(r"^[A-Za-z][A-Za-z0-9_.~+%-]{2,254}$")

# what the VMs' service account needs at project level (the agent, logs, metrics)
VM_PROJECT_ROLES = ("roles/logging.logWriter", "roles/monitoring.metricWriter", "roles/compute.viewer")
# the functions' service account gets a custom role with exactly the Compute calls functions/gce.py
# makes (autoheal: list, setLabels, reset, recreateInstances; scale: resize, autoscalers.patch; the lock
# in project metadata; waiting on operations), not roles/compute.instanceAdmin.v1 (which can also
# create, delete and SSH into every VM). Keep in step with functions/gce.py (a test checks it).
FUNCTIONS_ROLE_ID = "fleetFunctions"
FUNCTIONS_PERMISSIONS = (
    "compute.autoscalers.get",
    "compute.autoscalers.update",
    "compute.globalOperations.get",
    "compute.instanceGroupManagers.get",
    "compute.instanceGroupManagers.update",
    "compute.instances.list",
    "compute.instances.reset",
    "compute.instances.setLabels",
    "compute.projects.get",
    "compute.regionOperations.get",
    "compute.zoneOperations.get",
)


@dataclass(frozen=True)
class GcloudLine:
    why: str
    argv: tuple[str, ...]

    def render(self) -> str:
        return sh(*self.argv)


def _check(kind: str, value: str, pattern: re.Pattern[str]) -> str:
    if not pattern.fullmatch(value):
        raise FleetError(f"invalid {kind} {value!r}", hint="see docs/infra.md")
    return value


def service_account_lines(
    project: str,
    vm_account: str,
    *,
    bucket: str | None = None,
    secrets: Iterable[tuple[str, str]] = (),
    functions_account: str | None = None,
    project_number: str | None = None,
    alerts_topic: str | None = None,
    store_prefix: str | None = None,
) -> list[GcloudLine]:
    """gcloud lines: the VMs' account and its roles, the store bucket (read; with `store_prefix`, create
    objects under its history/ only: the agents' central history), each secret (project, name), the
    functions' custom Compute role, and the Monitoring service agent's right to publish alerts."""
    _check("project", project, _PROJECT)
    match = _SA.fullmatch(vm_account)
    if match is None:
        raise FleetError(
            f"invalid service account {vm_account!r}", hint="NAME@PROJECT.iam.gserviceaccount.com"
        )
    member = f"serviceAccount:{vm_account}"
    sa_project = match.group(2).split(".", 1)[0]
    lines = [
        GcloudLine(
            "the VMs' service account (skip if it exists)",
            (
                "gcloud",
                "iam",
                "service-accounts",
                "create",
                match.group(1),
                f"--project={sa_project}",
                "--display-name=fleet VMs",
            ),
        )
    ]
    for role in VM_PROJECT_ROLES:
        lines.append(
            GcloudLine(
                f"VMs: {role}",
                (
                    "gcloud",
                    "projects",
                    "add-iam-policy-binding",
                    project,
                    f"--member={member}",
                    f"--role={_check('role', role, _ROLE)}",
                    "--condition=None",
                ),
            )
        )
    if bucket:
        lines.append(
            GcloudLine(
                "VMs: read the release store",
                (
                    "gcloud",
                    "storage",
                    "buckets",
                    "add-iam-policy-binding",
                    f"gs://{_check('bucket', bucket, _BUCKET)}",
                    f"--member={member}",
                    "--role=roles/storage.objectViewer",
                ),
            )
        )
    if bucket and store_prefix:
        if not re.fullmatch(r"fleets/[a-z0-9][a-z0-9_-]{0,62}", store_prefix):
            raise FleetError(f"invalid store prefix {store_prefix!r}", hint="fleets/<fleet>")
        objects = f"projects/_/buckets/{bucket}/objects/{store_prefix}/history/"
        lines.append(
            GcloudLine(
                "VMs: append to the store's central history (create only, under history/)",
                (
                    "gcloud",
                    "storage",
                    "buckets",
                    "add-iam-policy-binding",
                    f"gs://{bucket}",
                    f"--member={member}",
                    "--role=roles/storage.objectCreator",
                    f'--condition=expression=resource.name.startsWith("{objects}"),title=fleet-history',
                ),
            )
        )
    for secret_project, secret in secrets:
        lines.append(
            GcloudLine(
                f"VMs: read secret {secret}",
                (
                    "gcloud",
                    "secrets",
                    "add-iam-policy-binding",
                    _check("secret", secret, _SECRET),
                    f"--project={_check('project', secret_project, _PROJECT)}",
                    f"--member={member}",
                    "--role=roles/secretmanager.secretAccessor",
                ),
            )
        )
    if functions_account:
        if _SA.fullmatch(functions_account) is None:
            raise FleetError(f"invalid service account {functions_account!r}")
        permissions = ",".join(_check("permission", p, _PERMISSION) for p in FUNCTIONS_PERMISSIONS)
        lines.append(
            GcloudLine(
                "functions: a custom role with the Compute calls they make (exists: `gcloud iam roles "
                "update` with the same flags)",
                (
                    "gcloud",
                    "iam",
                    "roles",
                    "create",
                    FUNCTIONS_ROLE_ID,
                    f"--project={project}",
                    "--title=fleet functions (autoheal, scale)",
                    f"--permissions={permissions}",
                    "--stage=GA",
                ),
            )
        )
        lines.append(
            GcloudLine(
                f"functions: {FUNCTIONS_ROLE_ID} (autoheal, scale)",
                (
                    "gcloud",
                    "projects",
                    "add-iam-policy-binding",
                    project,
                    f"--member=serviceAccount:{functions_account}",
                    f"--role=projects/{project}/roles/{FUNCTIONS_ROLE_ID}",
                    "--condition=None",
                ),
            )
        )
    if project_number and alerts_topic:
        if not project_number.isdigit():
            raise FleetError(f"invalid project number {project_number!r}")
        agent = f"service-{project_number}@gcp-sa-monitoring-notification.iam.gserviceaccount.com"
        lines.append(
            GcloudLine(
                "Monitoring's service agent: publish alerts to the topic",
                (
                    "gcloud",
                    "pubsub",
                    "topics",
                    "add-iam-policy-binding",
                    _check("topic", alerts_topic, _TOPIC),
                    f"--project={project}",
                    f"--member=serviceAccount:{agent}",
                    "--role=roles/pubsub.publisher",
                ),
            )
        )
    return lines


def render_all(lines: Sequence[GcloudLine]) -> list[str]:
    return [line.render() for line in lines]
