"""The Google APIs the agent reads, over plain HTTP with the VM's own service account: the metadata
server (attributes, token, guest attributes), Cloud Storage (the release store), Secret Manager (app
secrets) and Compute (the MIG's members for the beat rule, the instance's rollout label).

The flow (fleet/agent/flow.py) uses only the small interfaces below, so tests replace them with fakes."""

from __future__ import annotations

import base64
import json
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from fleet import settings
from fleet.agent.http import Http, Response
from fleet.commands import healthmetric
from fleet.errors import FleetError

METADATA_HOST = "metadata.google.internal"
STORAGE_ENDPOINT = "https://storage.googleapis.com"
SECRETMANAGER_ENDPOINT = "https://secretmanager.googleapis.com"
COMPUTE_ENDPOINT = "https://compute.googleapis.com/compute/v1"
GUEST_NAMESPACE = "fleet"
TOKEN_MARGIN = 60.0  # seconds before expiry a cached token is fetched anew


class NotFound(FleetError):
    """The object, secret version or attribute does not exist (HTTP 404)."""


class AlreadyExists(FleetError):
    """A create with ifGenerationMatch=0 found the object there (HTTP 412)."""


def _json(resp: Response, where: str) -> Any:
    try:
        return json.loads(resp.body)
    except ValueError:
        raise FleetError("the answer is not JSON", where=where) from None


def _fail(resp: Response, what: str, where: str, hint: str | None = None) -> FleetError:
    text = resp.body[:300].decode(errors="replace").strip()
    if resp.status == 404:
        return NotFound(f"{what}: not found", where=where, hint=hint)
    if resp.status in (401, 403):  # whatever the caller guessed: this is a permission problem
        hint = "does the VM's service account have the role for this (docs/agent.md, IAM)?"
    return FleetError(f"{what}: HTTP {resp.status} {text}".strip(), where=where, hint=hint)


# --------------------------------------------------------------------------- crc32c


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C = _crc_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as Secret Manager's `dataCrc32c` and Cloud Storage's crc32c."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


# --------------------------------------------------------------------------- metadata server


class Metadata:
    """The GCE metadata server: GCE_METADATA_HOST if set, else metadata.google.internal."""

    def __init__(
        self,
        http: Http | None = None,
        host: str | None = None,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.host = host or settings.load(environ).metadata_host or METADATA_HOST
        self.base = f"http://{self.host}/computeMetadata/v1"
        self.http = http or Http(proxies=False)
        self._clock = clock
        self._token: tuple[str, float] | None = None

    def _get(self, path: str) -> str | None:
        resp = self.http.request(
            "GET", f"{self.base}/{path}", headers={"Metadata-Flavor": "Google"}, what="metadata"
        )
        if resp.status == 404:
            return None
        if resp.status != 200:
            raise _fail(resp, f"metadata {path}", self.host)
        return resp.body.decode()

    def attribute(self, key: str) -> str | None:
        """An instance attribute (the template's metadata), None when absent."""
        return self._get(f"instance/attributes/{urllib.parse.quote(key, safe='')}")

    def project_attribute(self, key: str) -> str | None:
        """A project-wide attribute (the project's common instance metadata: the fleet lock)."""
        return self._get(f"project/attributes/{urllib.parse.quote(key, safe='')}")

    def _required(self, path: str) -> str:
        value = self._get(path)
        if not value:
            raise FleetError(f"metadata {path}: not served", where=self.host)
        return value.strip()

    def instance_name(self) -> str:
        return self._required("instance/name")

    def zone(self) -> str:
        """The zone's name (the server answers projects/NUMBER/zones/ZONE)."""
        return self._required("instance/zone").rsplit("/", 1)[-1]

    def project_id(self) -> str:
        return self._required("project/project-id")

    def instance_id(self) -> str:
        """The instance's numeric id (the `gce_instance` resource's instance_id)."""
        return self._required("instance/id")

    def token(self) -> str:
        """The default service account's access token, cached until shortly before it expires."""
        now = self._clock()
        if self._token and now < self._token[1]:
            return self._token[0]
        raw = self._required("instance/service-accounts/default/token")
        try:
            data = json.loads(raw)
            token, expires = str(data["access_token"]), float(data.get("expires_in", 0))
        except (ValueError, KeyError, TypeError):
            raise FleetError("the service account token answer is not understood", where=self.host) from None
        self._token = (token, now + max(0.0, expires - TOKEN_MARGIN))
        return token

    def put_guest(self, key: str, value: str) -> None:
        """Write guest attribute fleet/<key> (the Compute API's getGuestAttributes reads it)."""
        path = f"instance/guest-attributes/{GUEST_NAMESPACE}/{urllib.parse.quote(key, safe='')}"
        resp = self.http.request(
            "PUT",
            f"{self.base}/{path}",
            headers={"Metadata-Flavor": "Google"},
            body=value.encode(),
            what="guest attribute",
        )
        if resp.status != 200:
            raise _fail(resp, f"guest attribute {key}", self.host, hint="is enable-guest-attributes set?")


class _Authorized:
    def __init__(self, http: Http, token: Callable[[], str], endpoint: str) -> None:
        self.http = http
        self.token = token
        self.endpoint = endpoint.rstrip("/")

    def _call(self, method: str, url: str, what: str, body: bytes | None = None, **headers: str) -> Response:
        return self.http.request(
            method, url, headers={"Authorization": f"Bearer {self.token()}", **headers}, body=body, what=what
        )


# --------------------------------------------------------------------------- Cloud Storage


def _object_name(name: str) -> str:
    return urllib.parse.quote(name, safe="")


class Storage(_Authorized):
    """Cloud Storage's JSON API (the release store)."""

    def __init__(self, http: Http, token: Callable[[], str], endpoint: str | None = None) -> None:
        super().__init__(http, token, endpoint or STORAGE_ENDPOINT)

    def read(self, bucket: str, name: str) -> bytes:
        where = f"gs://{bucket}/{name}"
        url = f"{self.endpoint}/download/storage/v1/b/{_object_name(bucket)}/o/{_object_name(name)}?alt=media"
        resp = self._call("GET", url, "read from the release store")
        if resp.status != 200:
            raise _fail(resp, "read", where)
        return resp.body

    def metadata(self, bucket: str, name: str) -> dict[str, Any]:
        where = f"gs://{bucket}/{name}"
        url = f"{self.endpoint}/storage/v1/b/{_object_name(bucket)}/o/{_object_name(name)}"
        resp = self._call("GET", url, "read object metadata")
        if resp.status != 200:
            raise _fail(resp, "object metadata", where)
        data = _json(resp, where)
        return data if isinstance(data, dict) else {}

    def create(self, bucket: str, name: str, data: bytes, content_type: str = "application/json") -> None:
        """A new object, never an overwrite (ifGenerationMatch=0)."""
        where = f"gs://{bucket}/{name}"
        query = urllib.parse.urlencode({"uploadType": "media", "name": name, "ifGenerationMatch": "0"})
        url = f"{self.endpoint}/upload/storage/v1/b/{_object_name(bucket)}/o?{query}"
        resp = self._call("POST", url, "write to the release store", data, **{"Content-Type": content_type})
        if resp.status == 412:
            raise AlreadyExists("the object exists already", where=where)
        if resp.status != 200:
            raise _fail(resp, "write", where)


# --------------------------------------------------------------------------- Secret Manager


class SecretManager(_Authorized):
    def __init__(self, http: Http, token: Callable[[], str], endpoint: str | None = None) -> None:
        super().__init__(http, token, endpoint or SECRETMANAGER_ENDPOINT)

    def access(self, version: str) -> str:
        """The value of `projects/P/secrets/S/versions/N`, its checksum checked when the API sends one."""
        resp = self._call("GET", f"{self.endpoint}/v1/{version}:access", "read a secret")
        if resp.status != 200:
            raise _fail(resp, "access", version, hint="does the secret version exist and is it enabled?")
        payload = (_json(resp, version) or {}).get("payload") or {}
        try:
            data = base64.b64decode(payload.get("data", ""), validate=True)
        except ValueError:
            raise FleetError("the secret payload is not base64", where=version) from None
        want = payload.get("dataCrc32c")
        if want is not None and int(want) != crc32c(data):
            raise FleetError("the secret payload fails its CRC32C check", where=version)
        try:
            return data.decode()
        except UnicodeDecodeError:
            raise FleetError("the secret value is not UTF-8 text", where=version) from None


# --------------------------------------------------------------------------- Cloud Monitoring


class Monitoring(_Authorized):
    """Cloud Monitoring's REST API: projects.timeSeries.create (the agent's health metric)."""

    def __init__(self, http: Http, token: Callable[[], str], endpoint: str | None = None) -> None:
        super().__init__(http, token, endpoint or healthmetric.MONITORING_ENDPOINT)

    def write(self, project: str, body: Mapping[str, Any]) -> None:
        """POST the body to projects/PROJECT/timeSeries; the API answers 200 with an empty object."""
        where = f"projects/{project}/timeSeries"
        url = healthmetric.create_url(self.endpoint, project)
        data = json.dumps(body, separators=(",", ":")).encode()
        resp = self._call(
            "POST", url, "write the health metric", data, **{"Content-Type": "application/json"}
        )
        if resp.status != 200:
            raise _fail(resp, "timeSeries.create", where, hint="roles/monitoring.metricWriter for the VM?")


# --------------------------------------------------------------------------- Compute


class Compute(_Authorized):
    def __init__(self, http: Http, token: Callable[[], str], endpoint: str | None = None) -> None:
        super().__init__(http, token, endpoint or COMPUTE_ENDPOINT)

    def members(self, mig: str) -> list[str]:
        """Instance names of `projects/P/zones/Z/instanceGroupManagers/N` (listManagedInstances)."""
        names: list[str] = []
        page = ""
        while True:
            query = f"?{urllib.parse.urlencode({'pageToken': page})}" if page else ""
            url = f"{self.endpoint}/{mig}/listManagedInstances{query}"
            headers = {"Content-Type": "application/json"}
            resp = self._call("POST", url, "list the MIG's members", b"", **headers)
            if resp.status != 200:
                raise _fail(resp, "listManagedInstances", mig)
            data = _json(resp, mig) or {}
            for item in data.get("managedInstances") or []:
                ref = str(item.get("instance") or "")
                if ref:
                    names.append(ref.rsplit("/", 1)[-1])
            page = str(data.get("nextPageToken") or "")
            if not page:
                return names

    def labels(self, project: str, zone: str, instance: str) -> dict[str, str]:
        where = f"projects/{project}/zones/{zone}/instances/{instance}"
        resp = self._call("GET", f"{self.endpoint}/{where}", "read the instance")
        if resp.status != 200:
            raise _fail(resp, "instances.get", where)
        labels = (_json(resp, where) or {}).get("labels") or {}
        return {str(k): str(v) for k, v in labels.items()}
