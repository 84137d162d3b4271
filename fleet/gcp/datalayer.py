"""The managed data layer, checked: Cloud SQL for PostgreSQL (Dify's main database and the pgvector
one, which may be the same instance), Memorystore for Redis, the Cloud Storage bucket, and private
services access on the VPC. `check()` reads what exists and returns findings, each with the exact
`gcloud` command that creates or fixes it. It never changes anything: these services hold the fleet's
data, so creating them, turning off deletion protection or resizing them is the user's act, never the
side effect of an apply (docs/infra-data.md).

Use:  layer = fleet.inventory.datalayer.resolve(inventory)
      findings = check(layer, DataLayerClients(layer.endpoints, layer.project))
      fix_commands(findings)  # the commands to run, in order

Clients, and why:
- Cloud SQL Admin v1: google-auth's AuthorizedSession on the REST API (`instances.get`). The only
  Python GAPIC client (google-cloud-sql) is a 0.x preview; one GET does not justify it.
- Memorystore for Redis v1: google-cloud-redis (CloudRedisClient, REST transport), the maintained client.
- Cloud Storage: google-cloud-storage, already the release store's client.
- Private services access: google-cloud-compute (already a dependency): the network's peering with
  servicenetworking.googleapis.com (`networks.get` -> peerings) and its allocated range
  (`globalAddresses.list`, purpose VPC_PEERING). The Service Networking API would need the project
  number; Compute answers the same question with the project id.

Each API's endpoint can point at a local stand-in (`data_layer.endpoints` in the inventory;
standins/datalayer_api.py), reached with anonymous credentials; unset = Google's API with application
default credentials. Every call has a timeout and no retry loop: an unreachable API is a FleetError
naming the API, the endpoint and what to do, at once.

pgvector: Cloud SQL for PostgreSQL ships the `vector` extension, but it is enabled per database with
`CREATE EXTENSION vector` (Dify's migrations do it), which the Admin API cannot see. What is checked for
the pgvector instance is what is checked for the main one (version, HA, backups, PITR, deletion
protection, private IP, TLS) plus that PGVECTOR_HOST is its private IP; the extension itself is not.
"""

from __future__ import annotations

import builtins
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

from fleet.errors import FleetError

T = TypeVar("T")
Severity = Literal["error", "warning"]
HINT = "see docs/infra-data.md"
SQLADMIN = "https://sqladmin.googleapis.com"
SSL_ENFORCED = ("ENCRYPTED_ONLY", "TRUSTED_CLIENT_CERTIFICATE_REQUIRED")
PEERING = "servicenetworking-googleapis-com"  # the peering `gcloud services vpc-peerings connect` makes
POSTGRES_PORT = 5432
CREDENTIALS_HINT = (
    "run `gcloud auth application-default login`, or set data_layer.endpoints for local stand-ins"
)
_NETWORK = re.compile(r"(?:.*/)?projects/([^/]+)/global/networks/([^/]+)$")


@dataclass(frozen=True)
class Endpoints:
    """Local stand-ins per API (http://HOST:PORT); None = Google's API."""

    sqladmin: str | None = None
    redis: str | None = None
    storage: str | None = None
    compute: str | None = None


@dataclass(frozen=True)
class DataLayer:
    """What the inventory names (resolved: fleet/inventory/datalayer.py) and the app's view of it."""

    project: str
    region: str
    network: str
    sql_instance: str
    redis_instance: str
    bucket: str
    pgvector_instance: str | None = None  # None: the main instance holds pgvector too
    database_version: str = "POSTGRES_15"
    sql_tier: str = "db-custom-2-7680"
    redis_size_gb: int = 1
    redis_version: str = "redis_7_2"
    bucket_location: str | None = None  # None: the region
    psa_range: str | None = None
    psa_prefix_length: int = 16
    # DB_HOST, DB_PORT, PGVECTOR_HOST, PGVECTOR_PORT, REDIS_HOST, REDIS_PORT, REDIS_USE_SSL,
    # GOOGLE_STORAGE_BUCKET_NAME as the inventory's vars give them (only those present)
    app_vars: Mapping[str, str] = field(default_factory=dict)
    endpoints: Endpoints = field(default_factory=Endpoints)

    @property
    def network_path(self) -> str:
        return f"projects/{self.project}/global/networks/{self.network}"

    @property
    def range_name(self) -> str:
        """The allocated range to create when there is none (Google's conventional name)."""
        return self.psa_range or f"google-managed-services-{self.network}"

    def sql_instances(self) -> list[tuple[str, str]]:
        """(role, instance): main, and pgvector when it is another instance."""
        roles = [("main", self.sql_instance)]
        if self.pgvector_instance and self.pgvector_instance != self.sql_instance:
            roles.append(("pgvector", self.pgvector_instance))
        return roles


@dataclass(frozen=True)
class Finding:
    """One thing that is missing or not as required, and how to create or fix it."""

    resource: str  # e.g. cloudsql/dify-main, redis/dify-redis, bucket/B, network/N, vars
    property: str  # the API's field, e.g. settings.availabilityType
    expected: str
    actual: str
    severity: Severity
    commands: tuple[tuple[str, ...], ...] = ()  # argv of each command, run in order
    note: str = ""

    @builtins.property  # `property` is a field's name here
    def command(self) -> str:
        """The commands as one shell line (each value quoted)."""
        return " && ".join(shlex.join(argv) for argv in self.commands)

    def as_dict(self) -> dict[str, Any]:
        return {
            "resource": self.resource,
            "property": self.property,
            "expected": self.expected,
            "actual": self.actual,
            "severity": self.severity,
            "command": self.command,
            "note": self.note,
        }


class DataLayerReader(Protocol):
    """What check() reads; each returns the resource as the REST API spells it, None when absent."""

    def sql_instance(self, project: str, instance: str) -> dict[str, Any] | None: ...

    def redis_instance(self, project: str, region: str, instance: str) -> dict[str, Any] | None: ...

    def bucket(self, name: str) -> dict[str, Any] | None: ...

    def network(self, project: str, network: str) -> dict[str, Any] | None: ...

    def peering_ranges(self, project: str) -> list[dict[str, Any]]: ...


# ----------------------------------------------------------------------------------------- the check


def check(settings: DataLayer, clients: DataLayerReader) -> list[Finding]:
    """Every finding for the data layer `settings` names; [] when all exists as required."""
    findings: list[Finding] = []
    instances = {name: clients.sql_instance(settings.project, name) for _, name in settings.sql_instances()}
    for role, name in settings.sql_instances():
        findings += _check_sql(settings, role, name, instances[name])
    main = instances[settings.sql_instance]
    if len(instances) == 1 and main is not None:
        # one instance serves both: PGVECTOR_HOST/PGVECTOR_PORT must name it too
        findings += _check_host_vars(settings, "pgvector", settings.sql_instance, main)
    findings += _check_redis(
        settings, clients.redis_instance(settings.project, settings.region, settings.redis_instance)
    )
    findings += _check_bucket(settings, clients.bucket(settings.bucket))
    findings += _check_psa(settings, clients.network(settings.project, settings.network), clients)
    return findings


def has_errors(findings: Sequence[Finding]) -> bool:
    return any(f.severity == "error" for f in findings)


_FIX_ORDER = {"network": 0, "cloudsql": 1, "redis": 2, "bucket": 3}  # private services access first


def fix_commands(findings: Sequence[Finding]) -> list[str]:
    """The findings' distinct commands in the order to run them: private services access first (Cloud
    SQL and Memorystore need it on the network), then each instance's patches merged into one call (one
    restart, not one per property; a major version upgrade stays a call of its own)."""
    ordered = sorted(findings, key=lambda f: _FIX_ORDER.get(f.resource.split("/", 1)[0], len(_FIX_ORDER)))
    calls: list[tuple[str, ...]] = []
    flags: dict[tuple[str, ...], list[str]] = {}
    for finding in ordered:
        for argv in finding.commands:
            mergeable = argv[:4] == ("gcloud", "sql", "instances", "patch") and not argv[-1].startswith(
                "--database-version="
            )
            key = argv[:-1] if mergeable else argv
            if key not in flags:
                flags[key] = []
                calls.append(key)
            if mergeable and argv[-1] not in flags[key]:
                flags[key].append(argv[-1])
    return [shlex.join((*key, *flags[key])) for key in calls]


def _sql(*args: str, project: str) -> tuple[str, ...]:
    return ("gcloud", "sql", "instances", *args, f"--project={project}")


def sql_create(s: DataLayer, name: str) -> tuple[str, ...]:
    return (
        *_sql("create", name, project=s.project),
        f"--region={s.region}",
        f"--database-version={s.database_version}",
        f"--tier={s.sql_tier}",
        "--availability-type=REGIONAL",
        "--backup-start-time=03:00",
        "--enable-point-in-time-recovery",
        "--deletion-protection",
        f"--network={s.network_path}",
        "--no-assign-ip",
        "--ssl-mode=ENCRYPTED_ONLY",
    )


def _check_sql(s: DataLayer, role: str, name: str, inst: dict[str, Any] | None) -> list[Finding]:
    resource = f"cloudsql/{name}"
    if inst is None:
        return [
            Finding(
                resource,
                "instance",
                f"{s.database_version} ({role})",
                "missing",
                "error",
                (sql_create(s, name),),
                note="then set DB_HOST/PGVECTOR_HOST to its private IP"
                if role == "main"
                else "then set PGVECTOR_HOST to its private IP",
            )
        ]
    settings = inst.get("settings") or {}
    backup = settings.get("backupConfiguration") or {}
    ip = settings.get("ipConfiguration") or {}
    found: list[Finding] = []

    def add(prop: str, expected: str, actual: Any, flag: str | None, note: str = "") -> None:
        patch = ((*_sql("patch", name, project=s.project), flag),) if flag else ()
        found.append(Finding(resource, prop, expected, _show(actual), "error", patch, note))

    if inst.get("state") not in (None, "RUNNABLE"):
        found.append(
            Finding(
                resource,
                "state",
                "RUNNABLE",
                str(inst.get("state")),
                "warning",
                (),
                f"see `gcloud sql operations list --instance={name} --project={s.project}` "
                "(SUSPENDED: billing or a policy; MAINTENANCE: wait)",
            )
        )
    version = str(inst.get("databaseVersion") or "")
    if version != s.database_version:
        upgrade = _major(version) < _major(s.database_version)
        add(
            "databaseVersion",
            s.database_version,
            version,
            f"--database-version={s.database_version}" if upgrade else None,
            "an in-place major version upgrade: take a backup first"
            if upgrade
            else "a major version cannot go down: restore into a new instance, "
            "or set data_layer.database_version",
        )
    if settings.get("availabilityType") != "REGIONAL":
        add(
            "settings.availabilityType",
            "REGIONAL",
            settings.get("availabilityType"),
            "--availability-type=REGIONAL",
            "restarts the instance",
        )
    if backup.get("enabled") is not True:
        add(
            "settings.backupConfiguration.enabled", "true", backup.get("enabled"), "--backup-start-time=03:00"
        )
    if backup.get("pointInTimeRecoveryEnabled") is not True:
        add(
            "settings.backupConfiguration.pointInTimeRecoveryEnabled",
            "true",
            backup.get("pointInTimeRecoveryEnabled"),
            "--enable-point-in-time-recovery",
        )
    if settings.get("deletionProtectionEnabled") is not True:
        add(
            "settings.deletionProtectionEnabled",
            "true",
            settings.get("deletionProtectionEnabled"),
            "--deletion-protection",
        )
    # a public IP: ipv4Enabled true, or (the field left out) a PRIMARY address in ipAddresses
    public = [a.get("ipAddress") for a in inst.get("ipAddresses") or [] if a.get("type") == "PRIMARY"]
    if ip.get("ipv4Enabled") is True or (ip.get("ipv4Enabled") is None and public):
        add(
            "settings.ipConfiguration.ipv4Enabled",
            "false",
            ip.get("ipv4Enabled"),
            "--no-assign-ip",
            "removes the public IP",
        )
    if _network_of(ip.get("privateNetwork")) != (s.project, s.network):
        add(
            "settings.ipConfiguration.privateNetwork",
            s.network_path,
            ip.get("privateNetwork"),
            f"--network={s.network_path}",
            "needs private services access on the network (see network findings)",
        )
    ssl_mode = ip.get("sslMode")
    if not (ssl_mode in SSL_ENFORCED or (not ssl_mode and ip.get("requireSsl") is True)):
        actual = ssl_mode or f"requireSsl={_show(ip.get('requireSsl'))}"
        add("settings.ipConfiguration.sslMode", "ENCRYPTED_ONLY", actual, "--ssl-mode=ENCRYPTED_ONLY")
    return found + _check_host_vars(s, role, name, inst)


def _check_host_vars(s: DataLayer, role: str, name: str, inst: dict[str, Any]) -> list[Finding]:
    """DB_HOST/DB_PORT (main) or PGVECTOR_HOST/PGVECTOR_PORT (pgvector) against the instance."""
    prefix = "DB" if role == "main" else "PGVECTOR"
    private = [a.get("ipAddress") for a in inst.get("ipAddresses") or [] if a.get("type") == "PRIVATE"]
    found = []
    host = s.app_vars.get(f"{prefix}_HOST")
    if host is not None and private and host not in private:
        found.append(_var_finding(f"{prefix}_HOST", private[0], host, f"the private IP of cloudsql/{name}"))
    port = s.app_vars.get(f"{prefix}_PORT")
    if port is not None and port != str(POSTGRES_PORT):
        found.append(
            _var_finding(f"{prefix}_PORT", str(POSTGRES_PORT), port, f"cloudsql/{name} listens on 5432")
        )
    return found


def _var_finding(name: str, expected: str, actual: str, why: str) -> Finding:
    return Finding(
        "vars",
        name,
        expected,
        actual,
        "error",
        (),
        note=f"set vars.{name}: {expected} in the inventory ({why}), then deploy",
    )


def redis_create(s: DataLayer, name: str | None = None) -> tuple[str, ...]:
    return (
        "gcloud",
        "redis",
        "instances",
        "create",
        name or s.redis_instance,
        f"--project={s.project}",
        f"--region={s.region}",
        "--tier=standard",
        f"--size={s.redis_size_gb}",
        f"--redis-version={s.redis_version}",
        f"--network={s.network_path}",
        "--connect-mode=private-service-access",
        "--enable-auth",
        "--transit-encryption-mode=server-authentication",
    )


def _check_redis(s: DataLayer, inst: dict[str, Any] | None) -> list[Finding]:
    resource = f"redis/{s.redis_instance}"
    if inst is None:
        return [
            Finding(
                resource,
                "instance",
                "STANDARD_HA, AUTH, TLS",
                "missing",
                "error",
                (redis_create(s),),
                note="then set REDIS_HOST/REDIS_PORT (6378 with TLS), REDIS_USE_SSL: true and REDIS_PASSWORD "
                "(gcloud redis instances get-auth-string)",
            )
        ]
    replacement = f"{s.redis_instance[:36].rstrip('-')}-new"  # Memorystore ids: at most 40 characters
    immutable = (
        f"fixed at creation: create {replacement} with this command, move the data, point REDIS_HOST "
        f"at it, set data_layer.redis_instance: {replacement}, then delete {s.redis_instance}"
    )
    recreate = (redis_create(s, replacement),)
    found = []
    if inst.get("state") not in (None, "READY", "STATE_UNSPECIFIED"):
        found.append(
            Finding(
                resource,
                "state",
                "READY",
                str(inst.get("state")),
                "warning",
                (),
                "an operation or maintenance is under way, or the instance is suspended: "
                f"see `gcloud redis instances describe {s.redis_instance} --region={s.region}`",
            )
        )
    if inst.get("tier") != "STANDARD_HA":
        found.append(
            Finding(resource, "tier", "STANDARD_HA", _show(inst.get("tier")), "error", recreate, immutable)
        )
    if inst.get("authEnabled") is not True:
        update = (
            "gcloud",
            "redis",
            "instances",
            "update",
            s.redis_instance,
            f"--project={s.project}",
            f"--region={s.region}",
            "--enable-auth",
        )
        found.append(
            Finding(
                resource,
                "authEnabled",
                "true",
                _show(inst.get("authEnabled")),
                "error",
                (update,),
                "then put the AUTH string (gcloud redis instances get-auth-string) in REDIS_PASSWORD",
            )
        )
    if inst.get("transitEncryptionMode") != "SERVER_AUTHENTICATION":
        found.append(
            Finding(
                resource,
                "transitEncryptionMode",
                "SERVER_AUTHENTICATION",
                _show(inst.get("transitEncryptionMode")),
                "error",
                recreate,
                immutable,
            )
        )
    if inst.get("connectMode") != "PRIVATE_SERVICE_ACCESS":
        found.append(
            Finding(
                resource,
                "connectMode",
                "PRIVATE_SERVICE_ACCESS",
                _show(inst.get("connectMode")),
                "error",
                recreate,
                immutable,
            )
        )
    if _network_of(inst.get("authorizedNetwork")) != (s.project, s.network):
        found.append(
            Finding(
                resource,
                "authorizedNetwork",
                s.network_path,
                _show(inst.get("authorizedNetwork")),
                "error",
                recreate,
                immutable,
            )
        )
    host, port = str(inst.get("host") or ""), str(inst.get("port") or "")
    if "REDIS_HOST" in s.app_vars and host and s.app_vars["REDIS_HOST"] != host:
        found.append(_var_finding("REDIS_HOST", host, s.app_vars["REDIS_HOST"], f"the address of {resource}"))
    if "REDIS_PORT" in s.app_vars and port and s.app_vars["REDIS_PORT"] != port:
        found.append(_var_finding("REDIS_PORT", port, s.app_vars["REDIS_PORT"], f"the port of {resource}"))
    if "REDIS_USE_SSL" in s.app_vars:
        tls = inst.get("transitEncryptionMode") == "SERVER_AUTHENTICATION"
        use_ssl = s.app_vars["REDIS_USE_SSL"].strip().lower() in ("true", "1", "yes")
        if use_ssl != tls:
            expected = "true" if tls else "false"
            found.append(
                _var_finding(
                    "REDIS_USE_SSL", expected, s.app_vars["REDIS_USE_SSL"], f"{resource}'s transit encryption"
                )
            )
    return found


def _check_bucket(s: DataLayer, bucket: dict[str, Any] | None) -> list[Finding]:
    resource = f"bucket/{s.bucket}"
    url = f"gs://{s.bucket}"
    location = (s.bucket_location or s.region).upper()
    update = ("gcloud", "storage", "buckets", "update", url, f"--project={s.project}")
    found = []
    app_bucket = s.app_vars.get("GOOGLE_STORAGE_BUCKET_NAME")
    if app_bucket is not None and app_bucket != s.bucket:
        found.append(
            _var_finding("GOOGLE_STORAGE_BUCKET_NAME", s.bucket, app_bucket, "the bucket data_layer names")
        )
    if bucket is None:
        create = (
            "gcloud",
            "storage",
            "buckets",
            "create",
            url,
            f"--project={s.project}",
            f"--location={location.lower()}",
            "--uniform-bucket-level-access",
            "--public-access-prevention",
        )
        return [
            *found,
            Finding(
                resource,
                "bucket",
                f"in {location}, versioned, uniform access",
                "missing",
                "error",
                (create, (*update, "--versioning")),
            ),
        ]
    versioning = (bucket.get("versioning") or {}).get("enabled")
    if versioning is not True:
        found.append(
            Finding(
                resource,
                "versioning.enabled",
                "true",
                _show(versioning),
                "error",
                ((*update, "--versioning"),),
            )
        )
    uniform = ((bucket.get("iamConfiguration") or {}).get("uniformBucketLevelAccess") or {}).get("enabled")
    if uniform is not True:
        found.append(
            Finding(
                resource,
                "iamConfiguration.uniformBucketLevelAccess.enabled",
                "true",
                _show(uniform),
                "error",
                ((*update, "--uniform-bucket-level-access"),),
                "object ACLs stop applying: grant access through IAM on the bucket",
            )
        )
    actual_location = str(bucket.get("location") or "").upper()
    if actual_location != location:
        found.append(
            Finding(
                resource,
                "location",
                location,
                actual_location or "(none)",
                "warning",
                (),
                "a bucket's location is fixed: create a bucket in the region and copy the objects, "
                "or set data_layer.bucket_location if this one is intended",
            )
        )
    return found


def _check_psa(s: DataLayer, network: dict[str, Any] | None, clients: DataLayerReader) -> list[Finding]:
    resource = f"network/{s.network}"
    if network is None:
        return [
            Finding(
                resource,
                "network",
                "exists",
                "missing",
                "error",
                (),
                "the VPC is the Compute side's (fab infra.plan / infra.apply); "
                "private services access needs it first",
            )
        ]
    found = []
    ranges = [
        a
        for a in clients.peering_ranges(s.project)
        if a.get("purpose") == "VPC_PEERING"
        and _network_of(a.get("network")) == (s.project, s.network)
        and (s.psa_range is None or a.get("name") == s.psa_range)
    ]
    range_name = str(ranges[0].get("name")) if ranges else s.range_name
    if not ranges:
        create = (
            "gcloud",
            "compute",
            "addresses",
            "create",
            s.range_name,
            f"--project={s.project}",
            "--global",
            "--purpose=VPC_PEERING",
            f"--prefix-length={s.psa_prefix_length}",
            f"--network={s.network}",
        )
        found.append(
            Finding(
                resource, "globalAddresses[purpose=VPC_PEERING]", s.range_name, "missing", "error", (create,)
            )
        )
    peerings = [p for p in network.get("peerings") or [] if p.get("name") == PEERING]
    if not peerings or peerings[0].get("state") != "ACTIVE":
        connect = (
            "gcloud",
            "services",
            "vpc-peerings",
            "connect",
            f"--project={s.project}",
            "--service=servicenetworking.googleapis.com",
            f"--ranges={range_name}",
            f"--network={s.network}",
        )
        actual = f"state {peerings[0].get('state')}" if peerings else "missing"
        found.append(Finding(resource, f"peerings[{PEERING}]", "ACTIVE", actual, "error", (connect,)))
    return found


def _show(value: Any) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _major(version: str) -> int:
    m = re.fullmatch(r"POSTGRES_([0-9]+)", version)
    return int(m.group(1)) if m else 0


def _network_of(value: Any) -> tuple[str, str] | None:
    m = _NETWORK.match(str(value or ""))
    return (m.group(1), m.group(2)) if m else None


# ------------------------------------------------------------------------------------------- clients


class DataLayerClients:
    """The real clients, one per API, each pointed at its endpoint (DataLayer.endpoints)."""

    def __init__(self, endpoints: Endpoints, project: str, timeout: float = 30.0) -> None:
        self.endpoints = endpoints
        self.project = project
        self.timeout = timeout
        self._made: dict[str, Any] = {}

    def _once(self, key: str, make: Callable[[], T]) -> T:
        if key not in self._made:
            self._made[key] = make()
        return self._made[key]

    def _credentials(self, endpoint: str | None, api: str) -> Any:
        if endpoint:
            from google.auth.credentials import AnonymousCredentials

            return AnonymousCredentials()
        import google.auth
        from google.auth.exceptions import DefaultCredentialsError

        try:
            credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
        except DefaultCredentialsError as exc:
            raise FleetError(
                f"no Google credentials for {api}: {exc}",
                where="data layer check",
                hint=CREDENTIALS_HINT,
            ) from None
        return credentials

    def _call(
        self, api: str, endpoint: str | None, what: str, fn: Callable[[], T], needs: str | None = None
    ) -> T:
        """One API call; its failures become a FleetError naming the API, the resource and the endpoint.
        `needs`: the permission a write needs (a denied write is not a missing viewer role)."""
        from google.api_core import exceptions as gexc
        from google.auth import exceptions as auth_exc
        from requests import exceptions as http

        where = f"{api} ({endpoint or 'Google'})"
        try:
            return fn()
        except auth_exc.DefaultCredentialsError as exc:
            raise FleetError(
                f"no Google credentials for {api}: {exc}",
                where=where,
                hint=CREDENTIALS_HINT,
            ) from None
        except (http.ConnectionError, http.Timeout, auth_exc.TransportError) as exc:
            raise FleetError(
                f"cannot read {what}: {api} is unreachable ({type(exc).__name__})",
                where=where,
                hint=f"check the network and the endpoint ({endpoint or 'the Google API'}); {HINT}",
            ) from None
        except gexc.Forbidden as exc:
            if needs:
                raise FleetError(
                    f"cannot write {what}: permission denied ({exc.message})",
                    where=where,
                    hint=f"the operator needs {needs} on the project; {HINT}",
                ) from None
            raise FleetError(
                f"cannot read {what}: permission denied ({exc.message})",
                where=where,
                hint="the operator needs the viewer role of this API on the project "
                "(roles/cloudsql.viewer, roles/redis.viewer, storage.buckets.get on the bucket, "
                "roles/compute.networkViewer)"
                + (
                    "; Cloud SQL answers 403 too for an instance id it does not know in a project "
                    "you cannot list: check data_layer.project"
                    if api == "Cloud SQL Admin"
                    else ""
                )
                + f"; {HINT}",
            ) from None
        except gexc.GoogleAPICallError as exc:
            raise FleetError(f"cannot read {what}: {exc}", where=where, hint=HINT) from None

    # Cloud SQL Admin v1 (REST, AuthorizedSession)
    def sql_instance(self, project: str, instance: str) -> dict[str, Any] | None:
        from google.api_core import exceptions as gexc

        endpoint = self.endpoints.sqladmin
        base = (endpoint or SQLADMIN).rstrip("/")

        def session() -> Any:
            from google.auth.transport.requests import AuthorizedSession

            return AuthorizedSession(self._credentials(endpoint, "Cloud SQL Admin"))

        def get() -> dict[str, Any] | None:
            resp = self._once("sql", session).get(
                f"{base}/v1/projects/{project}/instances/{instance}", timeout=self.timeout
            )
            if resp.status_code == 404:
                return None
            if resp.status_code >= 400:
                raise gexc.from_http_response(resp)
            body: dict[str, Any] = resp.json()
            return body

        return self._call("Cloud SQL Admin", endpoint, f"instance {project}/{instance}", get)

    # Memorystore for Redis v1 (google-cloud-redis, REST transport)
    def redis_instance(self, project: str, region: str, instance: str) -> dict[str, Any] | None:
        from google.api_core import exceptions as gexc

        endpoint = self.endpoints.redis

        def client() -> Any:
            from google.cloud import redis_v1

            options = {"api_endpoint": endpoint} if endpoint else None
            return redis_v1.CloudRedisClient(
                transport="rest",
                credentials=self._credentials(endpoint, "Memorystore"),
                client_options=options,
            )

        name = f"projects/{project}/locations/{region}/instances/{instance}"

        def get() -> dict[str, Any] | None:
            from google.cloud import redis_v1

            try:
                inst = self._once("redis", client).get_instance(name=name, retry=None, timeout=self.timeout)
            except gexc.NotFound:
                return None
            as_dict: dict[str, Any] = redis_v1.Instance.to_dict(
                inst, preserving_proto_field_name=False, use_integers_for_enums=False
            )
            return as_dict

        return self._call("Memorystore for Redis", endpoint, name, get)

    # Cloud Storage (google-cloud-storage)
    def bucket(self, name: str) -> dict[str, Any] | None:
        from google.api_core import exceptions as gexc

        endpoint = self.endpoints.storage

        def client() -> Any:
            import google.cloud.storage as storage  # untyped: `from google.cloud import` trips mypy

            options = {"api_endpoint": endpoint} if endpoint else None
            return storage.Client(
                project=self.project,
                credentials=self._credentials(endpoint, "Cloud Storage"),
                client_options=options,
            )

        def get() -> dict[str, Any] | None:
            try:
                b = self._once("storage", client).get_bucket(name, retry=None, timeout=self.timeout)
            except gexc.NotFound:
                return None
            return {
                "name": b.name,
                "location": b.location,
                "versioning": {"enabled": bool(b.versioning_enabled)},
                "iamConfiguration": {
                    "uniformBucketLevelAccess": {
                        "enabled": bool(b.iam_configuration.uniform_bucket_level_access_enabled)
                    }
                },
            }

        return self._call("Cloud Storage", endpoint, f"bucket gs://{name}", get)

    # Compute (google-cloud-compute): the network's peerings and the allocated ranges
    def _compute(self, name: str) -> Any:
        from fleet.gcp.compute import Compute

        compute = self._once("compute", lambda: Compute(self.endpoints.compute, call_timeout=self.timeout))
        return compute.client(name)

    def network(self, project: str, network: str) -> dict[str, Any] | None:
        from google.api_core import exceptions as gexc

        def get() -> dict[str, Any] | None:
            try:
                net = self._compute("NetworksClient").get(
                    project=project, network=network, timeout=self.timeout
                )
            except gexc.NotFound:
                return None
            as_dict: dict[str, Any] = type(net).to_dict(net, preserving_proto_field_name=False)
            return as_dict

        return self._call("Compute", self.endpoints.compute, f"network {project}/{network}", get)

    def peering_ranges(self, project: str) -> list[dict[str, Any]]:
        def get() -> list[dict[str, Any]]:
            pager = self._compute("GlobalAddressesClient").list(
                request={"project": project, "filter": 'purpose = "VPC_PEERING"'}, timeout=self.timeout
            )
            return [type(a).to_dict(a, preserving_proto_field_name=False) for a in pager]

        return self._call("Compute", self.endpoints.compute, f"global addresses of {project}", get)
