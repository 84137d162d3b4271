"""The operator's Secret Manager client: read a version (for a release), add a version (`fab secrets.push`),
list and describe secrets without their values.

google-cloud-secret-manager over its REST transport. The endpoint is FLEET_SECRETMANAGER_ENDPOINT, else the
inventory's `gce.secretmanager_endpoint`, else the real API with application default credentials; an
`http://` endpoint (the local stand-in, standins/secretmanager_api.py) gets anonymous credentials.
Errors name the secret, never a value.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from typing import Any

from fleet import settings
from fleet.errors import FleetError

SECRET_ID_RE = r"[A-Za-z0-9_-]{1,255}"  # noqa: S105 (a pattern, not a password)
# a project id (or number) as a secret's resource name holds it
PROJECT_RE = r"[a-z0-9][a-z0-9.:-]{0,62}"
SECRET_NAME = re.compile(rf"projects/(?P<project>{PROJECT_RE})/secrets/(?P<secret>{SECRET_ID_RE})")
VERSION_NAME = re.compile(SECRET_NAME.pattern + r"/versions/(?P<version>[1-9][0-9]{0,18}|latest)")

READ_HINT = (
    "the caller needs roles/secretmanager.secretAccessor on the secret "
    "(`gcloud auth application-default login` for an operator)"
)
PUSH_HINT = "create it and add a version with `fab secrets.push`"


class SecretManagerError(FleetError):
    """A Secret Manager call failed; `status` is the API's (NOT_FOUND, PERMISSION_DENIED, ...) or None."""

    def __init__(
        self, what: str, *, where: str | None = None, hint: str | None = None, status: str | None = None
    ):
        self.status = status
        super().__init__(what, where=where, hint=hint)


@dataclass(frozen=True)
class SecretInfo:
    """A secret without its value: its name and its newest version (None when it has none)."""

    name: str  # projects/P/secrets/S
    created: str  # RFC 3339
    latest: str | None  # projects/P/secrets/S/versions/N, the most recently created
    latest_state: str | None  # ENABLED, DISABLED, DESTROYED
    versions: int


def endpoint_for(configured: str | None = None) -> str | None:
    """FLEET_SECRETMANAGER_ENDPOINT, else gce.secretmanager_endpoint (`configured`), else None (real API)."""
    return settings.load().secretmanager_endpoint_for(configured)


def secret_of(version_name: str) -> str:
    """projects/P/secrets/S of projects/P/secrets/S/versions/N."""
    return version_name.split("/versions/", 1)[0]


@dataclass
class SecretManager:
    """One client for one endpoint (None = secretmanager.googleapis.com), created on first use."""

    endpoint: str | None = None
    _client: Any = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                from google.cloud import secretmanager_v1

                kwargs: dict[str, Any] = {"transport": "rest"}
                if self.endpoint:
                    kwargs["client_options"] = {"api_endpoint": self.endpoint}
                    if self.endpoint.startswith("http://"):
                        from google.auth.credentials import AnonymousCredentials

                        kwargs["credentials"] = AnonymousCredentials()
                try:
                    self._client = secretmanager_v1.SecretManagerServiceClient(**kwargs)
                except Exception as exc:
                    if type(exc).__module__.startswith("google.auth"):
                        raise SecretManagerError(
                            f"no credentials for Secret Manager: {exc}",
                            hint="run `gcloud auth application-default login` "
                            "(or set FLEET_SECRETMANAGER_ENDPOINT for a local stand-in)",
                        ) from None
                    raise
            return self._client

    # --- reading -----------------------------------------------------------------------------------

    def access(self, name: str) -> tuple[str, str]:
        """(value, pinned version name) of projects/P/secrets/S/versions/N|latest. The pinned name keeps
        the caller's project spelling and the concrete number the API answered (latest -> N)."""
        m = VERSION_NAME.fullmatch(name)
        if not m:
            raise SecretManagerError(
                f"not a secret version name: {name!r}", hint="projects/P/secrets/S/versions/N"
            )
        secret = secret_of(name)
        resp = self._call(lambda: self.client().access_secret_version(name=name), secret, READ_HINT)
        data = bytes(resp.payload.data)
        expected = resp.payload.data_crc32c
        if expected is not None and expected != _crc32c(data):
            raise SecretManagerError(f"{name}: the payload's checksum does not match (corrupted in transit)")
        try:
            value = data.decode("utf-8")
        except UnicodeDecodeError:
            raise SecretManagerError(
                f"{name} is not UTF-8 text", hint="an app secret must be text (it is written into .env)"
            ) from None
        number = str(resp.name).rsplit("/", 1)[-1]
        return value, f"{secret}/versions/{number}"

    def describe(self, secret: str) -> SecretInfo | None:
        """The secret and its newest version, without values; None when it does not exist."""
        _check_secret(secret)
        try:
            s = self._call(lambda: self.client().get_secret(name=secret), secret, _VIEW_HINT)
        except SecretManagerError as exc:
            if exc.status == "NOT_FOUND":
                return None
            raise
        versions = list(
            self._call(lambda: self.client().list_secret_versions(parent=secret), secret, _VIEW_HINT)
        )
        newest = max(versions, key=lambda v: int(str(v.name).rsplit("/", 1)[-1]), default=None)
        return SecretInfo(
            name=secret,
            created=_rfc3339(s.create_time),
            latest=f"{secret}/versions/{str(newest.name).rsplit('/', 1)[-1]}" if newest else None,
            latest_state=newest.state.name if newest else None,
            versions=len(versions),
        )

    def list(self, project: str) -> list[str]:
        """The names of the project's secrets (projects/P/secrets/S), sorted."""
        where = f"projects/{project}"
        found = self._call(lambda: self.client().list_secrets(parent=where), where, _VIEW_HINT)
        return sorted(f"{where}/secrets/{str(s.name).rsplit('/', 1)[-1]}" for s in found)

    # --- writing -----------------------------------------------------------------------------------

    def add_version(self, secret: str, value: str) -> tuple[str, bool]:
        """Add a version holding `value` to projects/P/secrets/S, creating the secret (automatic
        replication) when absent: (new version name, created the secret)."""
        m = _check_secret(secret)
        if not value:
            raise SecretManagerError("refusing to store an empty value", where=secret)
        data = value.encode("utf-8")
        created = False
        if self.describe(secret) is None:
            parent = f"projects/{m['project']}"

            def create() -> Any:
                return self.client().create_secret(
                    parent=parent, secret_id=m["secret"], secret={"replication": {"automatic": {}}}
                )

            try:
                self._call(create, secret, _ADD_HINT)
                created = True
            except SecretManagerError as exc:
                if exc.status != "ALREADY_EXISTS":  # someone else created it meanwhile: fine
                    raise
        payload = {"data": data, "data_crc32c": _crc32c(data)}
        v = self._call(
            lambda: self.client().add_secret_version(parent=secret, payload=payload), secret, _ADD_HINT
        )
        return f"{secret}/versions/{str(v.name).rsplit('/', 1)[-1]}", created

    # --- errors ------------------------------------------------------------------------------------

    def _call(self, fn: Any, secret: str, hint: str) -> Any:
        """Run one API call; its failure becomes a SecretManagerError naming `secret` (never a value)."""
        from google.api_core import exceptions as gexc

        api = self.endpoint or "secretmanager.googleapis.com"
        try:
            return fn()
        except gexc.GoogleAPICallError as exc:
            status = _status_of(exc)
            if status == "NOT_FOUND":
                raise SecretManagerError(
                    f"not found in Secret Manager ({exc.message})",
                    where=secret,
                    hint=PUSH_HINT,
                    status=status,
                ) from None
            if status in ("PERMISSION_DENIED", "UNAUTHENTICATED"):
                raise SecretManagerError(
                    f"Secret Manager says {status}", where=secret, hint=hint, status=status
                ) from None
            if status == "FAILED_PRECONDITION":
                raise SecretManagerError(
                    f"not readable: {exc.message}",
                    where=secret,
                    hint="enable that version, or push a new one with `fab secrets.push`",
                    status=status,
                ) from None
            raise SecretManagerError(
                f"Secret Manager error {exc.code} {status or ''}: {exc.message}".replace("  ", " "),
                where=secret,
                hint=f"check the endpoint ({api}) and the project",
                status=status,
            ) from None
        except Exception as exc:
            if type(exc).__module__.startswith(("requests", "urllib3", "google.auth")):
                raise SecretManagerError(
                    f"cannot reach Secret Manager ({api}): {exc.__class__.__name__}",
                    where=secret,
                    hint="check FLEET_SECRETMANAGER_ENDPOINT / gce.secretmanager_endpoint and credentials",
                ) from None
            raise


_VIEW_HINT = "the caller needs roles/secretmanager.viewer on the project or the secret"
_ADD_HINT = (
    "the caller needs roles/secretmanager.secretVersionAdder on the secret "
    "(and roles/secretmanager.admin to create a new one)"
)
_STATUS_OF_CODE = {
    403: "PERMISSION_DENIED",
    401: "UNAUTHENTICATED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    412: "FAILED_PRECONDITION",
}


def _status_of(exc: Any) -> str | None:
    """The API's status string: from the REST error body, else the gRPC code, else the HTTP code."""
    response = getattr(exc, "response", None)
    if response is not None:
        try:
            status = response.json().get("error", {}).get("status")
        except (ValueError, AttributeError):
            status = None
        if isinstance(status, str) and status:
            return status
    grpc_status = getattr(exc, "grpc_status_code", None)
    if grpc_status is not None:
        return str(grpc_status.name)
    return _STATUS_OF_CODE.get(getattr(exc, "code", 0) or 0)


def _check_secret(secret: str) -> re.Match[str]:
    m = SECRET_NAME.fullmatch(secret)
    if not m:
        raise SecretManagerError(
            f"not a secret name: {secret!r}",
            hint="projects/PROJECT/secrets/NAME, NAME = [A-Za-z0-9_-]{1,255}",
        )
    return m


def _crc32c(data: bytes) -> int:
    import google_crc32c

    return int(google_crc32c.value(data))


def _rfc3339(ts: Any) -> str:
    try:
        return str(ts.isoformat().replace("+00:00", "Z"))
    except AttributeError:
        return str(ts)
