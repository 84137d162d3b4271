"""Compute Engine calls of the operator side (google-cloud-compute, REST): project metadata with
fingerprint compare-and-swap (the fleet lock), instance labels (rollout marks), operations.

One `Compute` object per endpoint: the real API by default, or a local endpoint
(`gce.api_endpoint` in the inventory, or FLEET_COMPUTE_ENDPOINT) such as the local fleet's, reached
with anonymous credentials. Operations are waited on with our own operations clients pointed at the
same endpoint (`.result()` would poll the real API).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fleet.errors import FleetError

ENDPOINT_ENV = "FLEET_COMPUTE_ENDPOINT"


class ComputeError(FleetError):
    """A Compute API call failed (after the operation finished, or at once)."""


class PreconditionFailed(ComputeError):
    """A fingerprint was stale: somebody else changed the object first (412 conditionNotMet)."""


def endpoint_for(configured: str | None = None) -> str | None:
    return configured or os.environ.get(ENDPOINT_ENV) or None


@dataclass
class Compute:
    """Lazily created Compute clients for one endpoint (None = the real API)."""

    endpoint: str | None = None
    op_timeout: float = 120.0

    def __post_init__(self) -> None:
        self._clients: dict[str, Any] = {}

    def client(self, name: str) -> Any:
        """`name` is a compute_v1 client class name, e.g. "InstancesClient"."""
        if name not in self._clients:
            from google.cloud import compute_v1

            kwargs: dict[str, Any] = {}
            if self.endpoint:
                from google.auth.credentials import AnonymousCredentials

                kwargs["client_options"] = {"api_endpoint": self.endpoint}
                if self.endpoint.startswith("http://"):
                    kwargs["credentials"] = AnonymousCredentials()
            self._clients[name] = getattr(compute_v1, name)(**kwargs)
        return self._clients[name]

    @staticmethod
    def types() -> Any:
        from google.cloud import compute_v1

        return compute_v1

    # ------------------------------------------------------------------ operations

    def wait(self, op: Any, *, project: str, zone: str | None = None, region: str | None = None) -> None:
        """Wait until a (zonal/regional/global) operation is DONE; raise ComputeError on its error."""
        done = self.types().Operation.Status.DONE
        deadline = time.monotonic() + self.op_timeout
        while op.status != done:
            if time.monotonic() > deadline:
                raise ComputeError(
                    f"operation {op.name} did not finish in {self.op_timeout:.0f}s", where=project
                )
            if zone:
                op = self.client("ZoneOperationsClient").wait(project=project, zone=zone, operation=op.name)
            elif region:
                op = self.client("RegionOperationsClient").wait(
                    project=project, region=region, operation=op.name
                )
            else:
                op = self.client("GlobalOperationsClient").wait(project=project, operation=op.name)
        if op.error and op.error.errors:
            first = op.error.errors[0]
            if first.code in ("CONDITION_NOT_MET", "conditionNotMet"):
                raise PreconditionFailed(f"operation {op.name}: {first.message}", where=project)
            raise ComputeError(f"operation {op.name} failed: {first.code}: {first.message}", where=project)

    # ------------------------------------------------------------------ project metadata

    def project_metadata(self, project: str) -> tuple[dict[str, str], str]:
        """(items, fingerprint) of the project's common instance metadata."""
        proj = self._call(lambda: self.client("ProjectsClient").get(project=project), project)
        md = proj.common_instance_metadata
        items = {i.key: i.value for i in md.items}
        return items, md.fingerprint

    def set_project_metadata(self, project: str, items: Mapping[str, str], fingerprint: str) -> None:
        """Replace the common metadata if nobody changed it since `fingerprint` was read."""
        t = self.types()
        md = t.Metadata(
            fingerprint=fingerprint, items=[t.Items(key=k, value=v) for k, v in sorted(items.items())]
        )
        op = self._call(
            lambda: self.client("ProjectsClient").set_common_instance_metadata_unary(
                project=project, metadata_resource=md
            ),
            project,
        )
        self.wait(op, project=project)

    # ------------------------------------------------------------------ instances

    def instance(self, project: str, zone: str, name: str) -> Any:
        return self._call(
            lambda: self.client("InstancesClient").get(project=project, zone=zone, instance=name),
            f"{project}/{zone}/{name}",
        )

    def set_label(
        self, project: str, zone: str, name: str, key: str, value: str | None, attempts: int = 5
    ) -> None:
        """Set (or with None, remove) one label, keeping the others; retried on a stale fingerprint."""
        t = self.types()
        where = f"{project}/{zone}/{name}"
        for _ in range(attempts):
            inst = self.instance(project, zone, name)
            labels = dict(inst.labels)
            if (labels.get(key) if value is not None else None) == value and (
                value is not None or key not in labels
            ):
                return
            if value is None:
                labels.pop(key, None)
            else:
                labels[key] = value
            req = t.InstancesSetLabelsRequest(labels=labels, label_fingerprint=inst.label_fingerprint)
            try:
                op = self._call(
                    lambda req=req: self.client("InstancesClient").set_labels_unary(
                        project=project, zone=zone, instance=name, instances_set_labels_request_resource=req
                    ),
                    where,
                )
                self.wait(op, project=project, zone=zone)
                return
            except PreconditionFailed:
                continue
        raise ComputeError(f"label {key} kept changing under us", where=where, hint="try again")

    # ------------------------------------------------------------------ errors

    def _call(self, fn: Any, where: str) -> Any:
        from google.api_core import exceptions as gexc

        try:
            return fn()
        except gexc.PreconditionFailed as exc:
            raise PreconditionFailed(f"precondition failed: {exc.message}", where=where) from None
        except gexc.NotFound as exc:
            raise ComputeError(f"not found: {exc.message}", where=where) from None
        except gexc.GoogleAPICallError as exc:
            raise ComputeError(
                f"Compute API error {exc.code}: {exc.message}",
                where=where,
                hint="check credentials and the project, or the endpoint (gce.api_endpoint)"
                if self.endpoint
                else "check `gcloud auth application-default login` and the project",
            ) from None
        except Exception as exc:
            if type(exc).__module__.startswith(("requests", "urllib3", "google.auth")):
                raise ComputeError(
                    f"cannot reach the Compute API ({self.endpoint or 'compute.googleapis.com'}): {exc}",
                    where=where,
                ) from None
            raise
