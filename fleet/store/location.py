"""Where a fleet's store is (inventory `store:`), and a Cloud Storage client for it."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from fleet import settings
from fleet.commands.agent import STORE_URL_PATTERN
from fleet.errors import FleetError

if TYPE_CHECKING:
    import google.cloud.storage as storage

    from fleet.inventory import Inventory

T = TypeVar("T")
HINT = "see docs/release-store.md"


@dataclass
class Store:
    """One fleet's store: objects under gs://bucket/prefix/. `endpoint` set = a local stand-in."""

    bucket: str
    prefix: str  # fleets/<fleet>
    endpoint: str | None = None
    project: str | None = None
    _client: Any = field(default=None, repr=False, compare=False)

    @property
    def fleet(self) -> str:
        return self.prefix.rsplit("/", 1)[-1]

    @property
    def url(self) -> str:
        return f"gs://{self.bucket}/{self.prefix}"

    def name(self, rel: str) -> str:
        """The object name of `rel` (e.g. desired.json) in this fleet's prefix."""
        return f"{self.prefix}/{rel}"

    def client(self) -> storage.Client:
        if self._client is None:
            self._client = make_client(self.endpoint, self.project)
        return self._client

    def blob(self, rel: str) -> storage.Blob:
        return self.client().bucket(self.bucket).blob(self.name(rel))

    def call(self, what: str, fn: Callable[[], T], rel: str = "") -> T:
        """Run one Cloud Storage call; its failures become a FleetError naming the object. Callers
        handle PreconditionFailed and NotFound themselves where those mean something."""
        from google.api_core import exceptions
        from requests import exceptions as http

        where = f"{self.url}/{rel}" if rel else self.url
        try:
            return fn()
        except (exceptions.PreconditionFailed, exceptions.NotFound):
            raise
        except exceptions.Forbidden as exc:
            raise FleetError(
                f"cannot {what}: permission denied ({exc.message})",
                where=where,
                hint="operators need roles/storage.objectAdmin on the bucket; " + HINT,
            ) from None
        except exceptions.GoogleAPIError as exc:
            raise FleetError(f"cannot {what}: {exc}", where=where, hint=HINT) from None
        except (http.ConnectionError, http.Timeout) as exc:
            raise FleetError(
                f"cannot {what}: the store is unreachable ({type(exc).__name__})",
                where=where,
                hint=f"check the network and the endpoint ({self.endpoint or 'storage.googleapis.com'})",
            ) from None


def parse(
    url: str, endpoint: str | None = None, project: str | None = None, where: str = "store.url"
) -> Store:
    """A Store from gs://BUCKET/fleets/<fleet> (validated: the names reach object paths)."""
    if not isinstance(url, str) or not re.fullmatch(STORE_URL_PATTERN, url):
        raise FleetError(f"{url!r} is not gs://BUCKET/fleets/<fleet>", where=where, hint=HINT)
    bucket, _, prefix = url.removeprefix("gs://").partition("/")
    return Store(bucket, prefix, check_endpoint(endpoint, where), project)


def check_endpoint(value: str | None, where: str = "store.endpoint") -> str | None:
    """A local stand-in's http(s)://host:port on a loopback or private address; anything else is refused,
    so no credential-less client is ever pointed at the internet."""
    if not value:
        return None
    parts = urlsplit(value)
    ok = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.path in ("", "/")
    if ok:
        try:
            port = parts.port
            host = parts.hostname or ""
            ok = port is not None and (
                host == "localhost"
                or ipaddress.ip_address(host).is_loopback
                or ipaddress.ip_address(host).is_private
            )
        except ValueError:
            ok = False
    if not ok:
        raise FleetError(
            f"{value!r} is not a local stand-in endpoint (http://HOST:PORT on a loopback or private address)",
            where=where,
            hint="unset it (and FLEET_STORAGE_ENDPOINT) for the real Cloud Storage",
        )
    return value.rstrip("/")


def from_inventory(inv: Inventory) -> Store | None:
    """The inventory's store (fleet-wide: every host must name the same), or None without `store:`."""
    where = f"inventory {inv.name}"
    found: dict[tuple[str, str | None], list[str]] = {}
    project = None
    for host in inv.hosts.values():
        s = host.settings.store
        project = project or host.settings.gce.project
        key = (s.url, s.endpoint) if s else ("", None)
        found.setdefault(key, []).append(host.name)
    if not inv.hosts:  # a MIG inventory with no member yet: the defaults still say where the store is
        raw = (inv.defaults.get("data") or {}).get("store")
        if raw:
            found[(str(raw.get("url")), raw.get("endpoint"))] = ["defaults"]
        project = ((inv.defaults.get("data") or {}).get("gce") or {}).get("project")
    if len(found) > 1:
        listed = "; ".join(f"{k[0] or 'no store'}: {', '.join(v[:3])}" for k, v in found.items())
        raise FleetError(
            f"hosts disagree on the release store ({listed})",
            where=where,
            hint="the store is fleet-wide: set `store:` in defaults.yaml",
        )
    if not found or next(iter(found))[0] == "":
        return None
    url, endpoint = next(iter(found))
    return parse(url, settings.load().storage_endpoint_for(endpoint), project, where=f"{where}: store.url")


def make_client(endpoint: str | None, project: str | None) -> storage.Client:
    """A local endpoint: anonymous credentials (the stand-in checks none); else application default
    credentials against storage.googleapis.com."""
    import google.cloud.storage as storage

    if endpoint:
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(
            project=project or "local",
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": endpoint},
        )
    try:
        return storage.Client(project=project)
    except Exception as exc:  # google.auth.exceptions.DefaultCredentialsError and friends
        raise FleetError(
            f"no Google credentials for Cloud Storage: {exc}",
            where="release store",
            hint="run `gcloud auth application-default login`, or set store.endpoint for a local stand-in",
        ) from None
