"""The inventory's schema: one strict pydantic model per section, defaults in one place.

Every section forbids unknown keys so that a typo is an error, not a silent default. The same models
validate each file's layer (dumped with exclude_unset, so a default never overrides an inherited value)
and give every host its typed view of the merged data (`FleetHost.settings`): a default declared here is
the default everywhere, and code reads attributes, not dotted strings. A field whose absence means
something (derived from other settings, or "not configured") stays `None`.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator, model_validator

from fleet.commands.agent import STORE_URL_PATTERN
from fleet.commands.release import DEFAULT_PROJECT, DEFAULT_ROOT

# Values that reach an ssh or gcloud argv never start with '-' (they would be read as options) and
# hold no whitespace or newline. pydantic's patterns match whole strings (no trailing newline).
HOSTNAME_PATTERN = r"^[A-Za-z0-9_:][A-Za-z0-9_.:%-]{0,252}$"  # a DNS name, IPv4 or IPv6 address
USERNAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$"
ALIAS_PATTERN = r"^[A-Za-z0-9_:\[][A-Za-z0-9_.:%\[\]-]{0,254}$"  # a known_hosts name, `[host]:port` too
GCE_PROJECT_PATTERN = r"^(?:[a-z0-9][a-z0-9.-]*:)?[a-z0-9][a-z0-9-]{0,62}$"
GCE_LOCATION_PATTERN = r"^[a-z][a-z0-9-]{0,62}$"
GCE_NAME_PATTERN = r"^[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _null_is_unset(cls, raw: Any) -> Any:
        """`key: null` in YAML means "not set here": the inherited value or the default applies."""
        if isinstance(raw, dict):
            return {k: v for k, v in raw.items() if v is not None}
        return raw


class JumpProxy(_Strict):
    jump: StrictStr = Field(
        pattern=r"^([A-Za-z0-9_][A-Za-z0-9_.-]*@)?[A-Za-z0-9_][A-Za-z0-9_.-]*(:[0-9]{1,5})?$"
    )


class CommandProxy(_Strict):
    command: StrictStr = Field(min_length=1)


class SSHSettings(_Strict):
    key_file: StrictStr | None = None
    proxy: Literal["none", "iap"] | JumpProxy | CommandProxy = "none"
    host_key_alias: StrictStr | None = Field(default=None, pattern=ALIAS_PATTERN)
    connect_timeout: float = Field(default=10.0, gt=0)
    keepalive: StrictInt = Field(default=15, ge=0)
    connect_retries: StrictInt = Field(default=2, ge=0, le=10)
    # argv replacing `gcloud compute start-iap-tunnel` (same arguments; the local fleet's stand-in)
    iap_command: list[StrictStr] | None = Field(default=None, min_length=1)
    # known_hosts only, or also the instance's guest attributes (default for MIG members;
    # fleet/ssh/hostkeys.py)
    host_keys: Literal["known_hosts", "guest_attributes"] | None = None


class GCESettings(_Strict):
    project: StrictStr | None = Field(default=None, pattern=GCE_PROJECT_PATTERN)
    zone: StrictStr | None = Field(default=None, pattern=GCE_LOCATION_PATTERN)
    region: StrictStr | None = Field(default=None, pattern=GCE_LOCATION_PATTERN)
    instance: StrictStr | None = Field(default=None, pattern=GCE_NAME_PATTERN)
    instance_id: StrictStr | None = Field(default=None, pattern=r"^[0-9]+$")
    migs: list[dict[str, StrictStr]] = Field(default_factory=list)
    api_endpoint: StrictStr | None = None
    # a local Secret Manager stand-in (http://host:port); unset = secretmanager.googleapis.com
    secretmanager_endpoint: StrictStr | None = None
    # hosts from the MIGs' members (fleet/inventory/mig.py): auto = when hosts.yaml lists none
    discovery: Literal["auto", "mig", "off"] | None = None
    member_groups: list[StrictStr] | None = None  # groups every MIG member belongs to
    beat: Literal["first", "none"] | None = None  # `first`: the first member by name gets role beat


class AppSettings(_Strict):
    dir: StrictStr = Field(default=DEFAULT_ROOT, pattern=r"^/[A-Za-z0-9_./-]*$")
    project: StrictStr = Field(default=DEFAULT_PROJECT, pattern=r"^[a-z0-9][a-z0-9_-]*$")
    http_port: StrictInt = Field(default=80, ge=1, le=65535)
    keep_releases: StrictInt = Field(default=5, ge=2)  # releases kept on the host after a deploy
    min_free_mb: StrictInt = Field(default=512, ge=0)  # free disk a deploy needs before it uploads


class LivenessCheck(_Strict):
    """MIG autohealing's health check: nginx's own path, never drain-aware, conservative thresholds.

    Readiness (the LB's check) is `/health` with `lb.check_interval` and the thresholds beside it; it
    answers 503 while a host is drained, so autohealing must never use it (a rollout's drain would make
    the MIG recreate the host). Liveness fails only when nginx itself is gone.
    """

    path: StrictStr = Field(default="/nginx-health", pattern=r"^/[!-~]*$")
    check_interval: StrictInt = Field(default=10, ge=1, le=300)
    timeout: StrictInt = Field(default=5, ge=1, le=300)
    healthy_threshold: StrictInt = Field(default=2, ge=1, le=10)
    unhealthy_threshold: StrictInt = Field(default=6, ge=1, le=10)
    initial_delay: StrictInt = Field(default=300, ge=0, le=3600)  # autoHealingPolicies.initialDelaySec


class LBSettings(_Strict):
    kind: Literal["haproxy", "gcp", "none"] = "none"
    server: StrictStr | None = None
    address: StrictStr | None = None  # where the LB reaches this host (informational; the local fleet)
    stats_socket: StrictStr | None = None
    backend: StrictStr | None = None
    frontend: StrictStr | None = None
    # the LB's health check, from which rollout waits are derived (see fleet/rollout/pacing.py)
    check_interval: float = Field(default=5.0, gt=0)
    healthy_threshold: StrictInt = Field(default=2, ge=1)
    unhealthy_threshold: StrictInt = Field(default=2, ge=1)
    draining_timeout: float = Field(default=10.0, ge=0)
    # the backend service's session affinity (the local haproxy balances by source for CLIENT_IP)
    session_affinity: Literal["NONE", "CLIENT_IP", "GENERATED_COOKIE"] = "CLIENT_IP"
    liveness: LivenessCheck = Field(default_factory=LivenessCheck)


class SecretSource(_Strict):
    env: StrictStr | None = None
    file: StrictStr | None = None
    # NAME (in gce.project), projects/P/secrets/S, either with /versions/N|latest (fleet/release/secrets.py)
    secret_manager: StrictStr | None = None


class RolloutSettings(_Strict):
    # ssh: hosts updated in place over SSH; replace: the MIG recreates them from the release's template
    strategy: Literal["ssh", "replace"] = "ssh"
    canary: StrictInt = Field(default=1, ge=0)
    batch: StrictStr | StrictInt = "25%"
    max_failures: StrictStr | StrictInt = "0"
    on_failure: Literal["rollback", "pause", "continue"] = "rollback"
    # unset = derived from the LB's health check (fleet/rollout/pacing.py)
    drain_wait: float | None = Field(default=None, ge=0)
    min_ready: float | None = Field(default=None, ge=0)
    health_timeout: float | None = Field(default=None, gt=0)
    lock_ttl: float | None = Field(default=None, gt=0)


class RunSettings(_Strict):
    workers: StrictInt | None = Field(default=None, ge=1, le=1000)
    command_timeout: float | None = Field(default=None, gt=0)


# data.monitoring: Cloud Monitoring wiring and the functions' deployment (fleet/alerting/policies.py,
# fleet/alerting/functions_deploy.py; docs/monitoring.md). Fleet-wide, except uptime.per_instance per host.
class MonitoringUptime(_Strict):
    lb_url: StrictStr | None = Field(
        default=None, pattern=r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[!-~]*)?$"
    )
    per_instance: bool = False
    path: StrictStr = Field(default="/health", pattern=r"^/[!-~]*$")
    port: StrictInt | None = Field(default=None, ge=1, le=65535)  # unset: the host's app.http_port
    period: Literal[60, 300, 600, 900] = 60
    timeout: StrictInt = Field(default=10, ge=1, le=60)
    failing_locations: StrictInt = Field(default=2, ge=1, le=6)
    duration: StrictInt = Field(default=60, ge=0, le=86400)
    # an instance still failing this long opens a second incident: autoheal escalates reset -> recreate
    escalate_after: StrictInt = Field(default=300, ge=60, le=86400)
    regions: list[Literal["USA", "EUROPE", "SOUTH_AMERICA", "ASIA_PACIFIC"]] | None = None


class MonitoringInstanceHealth(_Strict):
    """What triggers function autohealing per instance (docs/selfheal.md, "Which layer heals what").
    auto: uptime checks where a host has uptime.per_instance on (it has a public IP), else the
    agent's health metric when the fleet has MIGs (gce.migs), else nothing."""

    source: Literal["auto", "uptime", "agent-metric", "none"] = "auto"
    # agent-metric: seconds the metric must stay below 1 (failing) before an incident opens
    duration: StrictInt = Field(default=120, ge=0, le=86400, multiple_of=60)
    # agent-metric: seconds without a point before "stopped reporting" opens (Monitoring: >= 120)
    absent_for: StrictInt = Field(default=300, ge=120, le=84600, multiple_of=60)


class MonitoringCpu(_Strict):
    high: float | None = Field(default=None, gt=0, le=1)
    low: float | None = Field(default=None, ge=0, lt=1)
    duration: StrictInt = Field(default=300, ge=0, le=86400)


class MonitoringLatency(_Strict):
    high: float | None = Field(default=None, gt=0)  # milliseconds
    percentile: Literal[50, 95, 99] = 99
    url_map: StrictStr | None = Field(default=None, pattern=r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
    duration: StrictInt = Field(default=300, ge=0, le=86400)


class MonitoringQueue(_Strict):
    metric: StrictStr | None = Field(default=None, pattern=r"^[a-z0-9.-]+\.googleapis\.com/[A-Za-z0-9_/.-]+$")
    resource_type: StrictStr = Field(default="gce_instance", pattern=r"^[a-z][a-z0-9_]*$")
    high: float | None = Field(default=None, ge=0)
    low: float | None = Field(default=None, ge=0)
    duration: StrictInt = Field(default=300, ge=0, le=86400)


class MonitoringScale(_Strict):
    migs: list[StrictStr] | None = None  # unset: every MIG of gce.migs
    step: StrictInt = Field(default=1, ge=1)
    min: StrictInt = Field(default=1, ge=0)
    max: StrictInt = Field(default=10, ge=1)
    cpu: MonitoringCpu | None = None
    latency: MonitoringLatency | None = None
    queue_depth: MonitoringQueue | None = None


class MonitoringFunctions(_Strict):
    region: StrictStr | None = Field(default=None, pattern=r"^[a-z]+-[a-z]+[0-9]+$")
    runtime: StrictStr = Field(default="python312", pattern=r"^python3[0-9]{1,2}$")
    service_account: StrictStr | None = Field(default=None, pattern=r"^[a-z][a-z0-9-]{4,61}@[a-z0-9.-]+$")
    trigger_service_account: StrictStr | None = Field(
        default=None, pattern=r"^[a-z][a-z0-9-]{4,61}@[a-z0-9.-]+$"
    )
    name_prefix: StrictStr | None = Field(default=None, pattern=r"^[a-z][a-z0-9-]{0,30}$")
    max_instances: StrictInt = Field(default=1, ge=1, le=1000)
    concurrency: StrictInt = Field(default=1, ge=1, le=1000)
    memory: StrictStr | None = Field(default=None, pattern=r"^[0-9]+(Mi|Gi|MB|GB)$")
    timeout: StrictInt | None = Field(default=None, ge=1, le=540)
    ingress: Literal["all", "internal-only", "internal-and-gclb"] = "internal-only"
    env: dict[StrictStr, StrictStr | StrictInt | float | bool] = Field(default_factory=dict)
    secrets: dict[StrictStr, StrictStr] = Field(default_factory=dict)


class MonitoringSettings(_Strict):
    project: StrictStr | None = Field(default=None, pattern=r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
    project_number: StrictStr | None = Field(default=None, pattern=r"^[0-9]{1,20}$")
    fleet: StrictStr | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    endpoint: StrictStr | None = None  # local Monitoring stand-in (loopback host:port); unset = the real API
    pubsub_endpoint: StrictStr | None = None  # local Pub/Sub stand-in; unset = PUBSUB_EMULATOR_HOST or real
    alerts_topic: StrictStr = Field(default="fleet-alerts", pattern=r"^[A-Za-z][A-Za-z0-9_.~+%-]{2,254}$")
    events_topic: StrictStr = Field(default="fleet-events", pattern=r"^[A-Za-z][A-Za-z0-9_.~+%-]{2,254}$")
    auto_close: StrictInt = Field(default=1800, ge=1800, le=604800)
    uptime: MonitoringUptime = Field(default_factory=MonitoringUptime)
    instance_health: MonitoringInstanceHealth = Field(default_factory=MonitoringInstanceHealth)
    scale: MonitoringScale | None = None
    functions: MonitoringFunctions | None = None


class StoreSettings(_Strict):
    """Where the fleet's release store lives (docs/release-store.md); no section = no store."""

    url: StrictStr  # gs://BUCKET/fleets/<fleet>
    endpoint: StrictStr | None = None  # local Cloud Storage stand-in (http://host:port); unset = the real API

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.fullmatch(STORE_URL_PATTERN, value):
            raise ValueError(
                f"{value!r} is not gs://BUCKET/fleets/<fleet> (bucket: 3-63 of a-z 0-9 _ -; "
                "fleet: a-z 0-9 _ -, starting with a letter or digit)"
            )
        return value


# data.data_layer: the managed data services the fleet uses and `infra` checks but never creates
# (fleet/gcp/datalayer.py; docs/infra-data.md). Fleet-wide: set it in defaults.yaml.
SQL_INSTANCE_PATTERN = r"^[a-z](?:[-a-z0-9]{0,77}[a-z0-9])?$"  # Cloud SQL instance id
REDIS_INSTANCE_PATTERN = r"^[a-z](?:[-a-z0-9]{0,38}[a-z0-9])?$"  # Memorystore: 1-40 characters
BUCKET_PATTERN = r"^[a-z0-9][a-z0-9_-]{1,61}[a-z0-9]$"  # a Cloud Storage bucket (no domain-named ones)
LOCAL_ENDPOINT_PATTERN = r"^https?://[A-Za-z0-9.:\[\]-]+:[0-9]{1,5}/?$"


class DataLayerEndpoints(_Strict):
    """Local stand-ins (http://HOST:PORT) for the APIs the check reads; unset = Google's."""

    sqladmin: StrictStr | None = Field(default=None, pattern=LOCAL_ENDPOINT_PATTERN)
    redis: StrictStr | None = Field(default=None, pattern=LOCAL_ENDPOINT_PATTERN)
    storage: StrictStr | None = Field(default=None, pattern=LOCAL_ENDPOINT_PATTERN)
    compute: StrictStr | None = Field(default=None, pattern=LOCAL_ENDPOINT_PATTERN)


class DataLayerSettings(_Strict):
    """Cloud SQL (main + pgvector), Memorystore for Redis, the bucket and private services access.

    The names say what must exist; the properties checked are fixed (regional, backups with PITR,
    deletion protection, private IP only, TLS; Standard tier, AUTH, in-transit encryption; versioning,
    uniform access). Fields marked "create only" shape the printed create commands, nothing else.
    """

    project: StrictStr | None = Field(default=None, pattern=GCE_PROJECT_PATTERN)  # unset: gce.project
    region: StrictStr | None = Field(default=None, pattern=GCE_LOCATION_PATTERN)  # unset: gce.region/zone's
    network: StrictStr = Field(default="default", pattern=GCE_NAME_PATTERN)  # the VPC the VMs are on
    sql_instance: StrictStr = Field(pattern=SQL_INSTANCE_PATTERN)  # Dify's main database (DB_HOST)
    pgvector_instance: StrictStr | None = Field(
        default=None, pattern=SQL_INSTANCE_PATTERN
    )  # unset: sql_instance
    database_version: StrictStr = Field(default="POSTGRES_15", pattern=r"^POSTGRES_[0-9]{1,2}$")
    sql_tier: StrictStr = Field(default="db-custom-2-7680", pattern=r"^db-[a-z0-9-]{1,60}$")  # create only
    redis_instance: StrictStr = Field(pattern=REDIS_INSTANCE_PATTERN)
    redis_size_gb: StrictInt = Field(default=1, ge=1, le=300)  # create only
    redis_version: StrictStr = Field(default="redis_7_2", pattern=r"^redis_[0-9]+_[0-9x]+$")  # create only
    bucket: StrictStr | None = Field(
        default=None, pattern=BUCKET_PATTERN
    )  # unset: vars.GOOGLE_STORAGE_BUCKET_NAME
    bucket_location: StrictStr | None = Field(
        default=None, pattern=r"^[A-Za-z][A-Za-z0-9-]{1,40}$"
    )  # unset: region
    # the allocated range of private services access; unset: any VPC_PEERING range on the network
    psa_range: StrictStr | None = Field(default=None, pattern=GCE_NAME_PATTERN)
    psa_prefix_length: StrictInt = Field(default=16, ge=8, le=29)  # create only
    endpoints: DataLayerEndpoints = Field(default_factory=DataLayerEndpoints)


# data.infra: the Compute side that `fab infra.apply` owns (fleet/gcp/infra.py; docs/infra.md). Fleet-wide:
# it is read from defaults.yaml only. Names left unset are derived from the MIG's name.
class InfraNetwork(_Strict):
    name: StrictStr | None = Field(default=None, pattern=GCE_NAME_PATTERN)  # default <mig>-vpc
    create: bool = True  # False: adopt an existing network of that name (never changed, never pruned)


class InfraSubnet(_Strict):
    name: StrictStr | None = Field(default=None, pattern=GCE_NAME_PATTERN)  # default <mig>-subnet
    create: bool = True  # False: adopt an existing subnet (its CIDR is then checked, not set)
    cidr: StrictStr = "10.10.0.0/24"

    @field_validator("cidr")
    @classmethod
    def _cidr(cls, value: str) -> str:
        try:
            net = ipaddress.IPv4Network(value, strict=True)
        except ValueError as exc:
            raise ValueError(f"{value!r} is not an IPv4 CIDR with its host bits zero ({exc})") from None
        if not net.is_private or not 8 <= net.prefixlen <= 29:
            raise ValueError(f"{value!r}: a private range (RFC 1918) from /8 to /29 (e.g. 10.10.0.0/24)")
        return value


class InfraNames(_Strict):
    """Resource names; each defaults to `<mig>-<suffix>` (docs/infra.md lists them)."""

    router: StrictStr | None = Field(default=None, pattern=GCE_NAME_PATTERN)
    nat: StrictStr | None = Field(default=None, pattern=GCE_NAME_PATTERN)
    template_prefix: StrictStr | None = Field(default=None, pattern=r"^[a-z][-a-z0-9]{0,44}$")
    readiness_check: StrictStr | None = Field(default=None, pattern=GCE_NAME_PATTERN)
    liveness_check: StrictStr | None = Field(default=None, pattern=GCE_NAME_PATTERN)
    backend_service: StrictStr | None = Field(default=None, pattern=GCE_NAME_PATTERN)  # default lb.backend
    url_map: StrictStr | None = Field(default=None, pattern=GCE_NAME_PATTERN)
    proxy: StrictStr | None = Field(default=None, pattern=GCE_NAME_PATTERN)
    forwarding_rule: StrictStr | None = Field(default=None, pattern=GCE_NAME_PATTERN)
    certificate_prefix: StrictStr | None = Field(default=None, pattern=r"^[a-z][-a-z0-9]{0,44}$")
    firewall_prefix: StrictStr | None = Field(default=None, pattern=r"^[a-z][-a-z0-9]{0,44}$")


class InfraSettings(_Strict):
    project: StrictStr | None = Field(default=None, pattern=GCE_PROJECT_PATTERN)  # default gce.project
    region: StrictStr = Field(pattern=r"^[a-z]+-[a-z]+[0-9]+$")
    zones: list[StrictStr] = Field(min_length=2)  # the regional MIG's distribution zones (>= 2)
    mig: StrictStr | None = Field(
        default=None, pattern=GCE_NAME_PATTERN
    )  # default: the regional gce.migs entry
    base_instance_name: StrictStr | None = Field(default=None, pattern=r"^[a-z][-a-z0-9]{0,57}$")
    size: StrictInt = Field(default=2, ge=0, le=1000)  # the MIG's size when created (never changed after)
    network: InfraNetwork = Field(default_factory=InfraNetwork)
    subnet: InfraSubnet = Field(default_factory=InfraSubnet)
    machine_type: StrictStr = Field(default="e2-standard-4", pattern=r"^[a-z][a-z0-9-]{0,62}$")
    image: StrictStr = Field(
        default="projects/debian-cloud/global/images/family/debian-13",
        pattern=r"^projects/[a-z][-a-z0-9]{0,62}/global/images/(family/)?[a-z][-a-z0-9]{0,62}$",
    )
    disk_size_gb: StrictInt = Field(default=50, ge=10, le=65536)
    disk_type: Literal["pd-standard", "pd-balanced", "pd-ssd"] = "pd-balanced"
    service_account: StrictStr = Field(
        pattern=r"^[a-z][a-z0-9-]{4,61}@[a-z0-9.-]+\.iam\.gserviceaccount\.com$"
    )
    scopes: list[StrictStr] = Field(
        default_factory=lambda: ["https://www.googleapis.com/auth/cloud-platform"], min_length=1
    )
    domains: list[StrictStr] = Field(default_factory=list)  # given: HTTPS with a Google-managed certificate
    tag: StrictStr | None = Field(
        default=None, pattern=GCE_NAME_PATTERN
    )  # network tag; default the MIG's name
    metadata: dict[StrictStr, StrictStr] = Field(default_factory=dict)  # extra template metadata (ssh-keys)
    autohealing: bool = True  # False: the MIG gets no autoHealingPolicies (nothing recreates a dead VM)
    names: InfraNames = Field(default_factory=InfraNames)

    @field_validator("zones")
    @classmethod
    def _zones(cls, value: list[str]) -> list[str]:
        for zone in value:
            if not re.fullmatch(r"[a-z]+-[a-z]+[0-9]+-[a-z]", zone):
                raise ValueError(f"{zone!r} is not a zone (e.g. europe-west1-b)")
        if len(set(value)) != len(value):
            raise ValueError("zones are listed twice")
        return value

    @field_validator("domains")
    @classmethod
    def _domains(cls, value: list[str]) -> list[str]:
        for domain in value:
            if not re.fullmatch(r"(?=.{1,253}$)([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\.)+[a-z]{2,63}", domain):
                raise ValueError(f"{domain!r} is not a lowercase DNS name (e.g. dify.example.com)")
        return value

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, value: list[str]) -> list[str]:
        for scope in value:
            if not re.fullmatch(r"https://www\.googleapis\.com/auth/[a-z0-9._-]+", scope):
                raise ValueError(f"{scope!r} is not an OAuth scope URL (https://www.googleapis.com/auth/...)")
        return value

    @model_validator(mode="after")
    def _zones_in_region(self) -> InfraSettings:
        outside = [z for z in self.zones if z.rsplit("-", 1)[0] != self.region]
        if outside:
            raise ValueError(f"zones {', '.join(outside)} are not in region {self.region}")
        return self


# data.dify: the application's configuration beyond compose/env.schema.yaml (fleet/release/passthrough.py,
# fleet/release/pairing.py, fleet/release/budget.py; docs/compose.md). Kept in its own section.
ENV_NAME_PATTERN = r"^[A-Z][A-Z0-9_]{0,127}$"


class DifySettings(_Strict):
    """Upstream Dify variables passed through, the image pairing override, the connection budget's inputs."""

    # NAME: value for upstream variables that compose/env.schema.yaml does not declare; names are checked
    # against compose/upstream-env.yaml (secrets go under data.secrets, never here)
    env_extra: dict[StrictStr, StrictStr | StrictInt | float | bool] = Field(default_factory=dict)
    # true: render sandbox / plugin-daemon tags that compose/releases.yaml does not pair with DIFY_VERSION
    allow_unpaired_images: bool = False
    # the Cloud SQL instances' max_connections flag (unset: the budget is shown without a limit)
    db_max_connections: StrictInt | None = Field(default=None, ge=1, le=262143)
    pgvector_max_connections: StrictInt | None = Field(default=None, ge=1, le=262143)
    # instances the fleet may grow to (unset: monitoring.scale.max, else the inventory's host count)
    max_instances: StrictInt | None = Field(default=None, ge=1, le=10000)
    # phase: a rollout whose release changes the schema revision (compose/releases.yaml) migrates once,
    # before the canary, after a restore point (docs/rollout.md); off: the operator migrates
    migrations: Literal["phase", "off"] = "phase"
    # the one-off container's command (in the api service, entrypoint replaced): Dify's own by default
    migration_command: list[StrictStr] = Field(default_factory=lambda: ["flask", "upgrade-db"], min_length=1)
    # seconds the migration may take before the rollout gives up on it
    migration_timeout: StrictInt = Field(default=1800, ge=10, le=86400)

    @field_validator("env_extra")
    @classmethod
    def _names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in value:
            if not re.fullmatch(ENV_NAME_PATTERN, name):
                raise ValueError(f"{name!r} is not an upper-case environment variable name")
        return value


class Data(_Strict):
    """A host's `data`: one layer of it as written, or (as `FleetHost.settings`) the merged whole."""

    ssh: SSHSettings = Field(default_factory=SSHSettings)
    gce: GCESettings = Field(default_factory=GCESettings)
    app: AppSettings = Field(default_factory=AppSettings)
    roles: list[StrictStr] | None = None
    lb: LBSettings = Field(default_factory=LBSettings)
    vars: dict[StrictStr, StrictStr | StrictInt | float | bool] = Field(default_factory=dict)
    secrets: dict[StrictStr, SecretSource] = Field(default_factory=dict)
    rollout: RolloutSettings = Field(default_factory=RolloutSettings)
    run: RunSettings = Field(default_factory=RunSettings)
    monitoring: MonitoringSettings | None = None  # None: the fleet has no monitoring configured
    store: StoreSettings | None = None  # None: the fleet has no release store
    data_layer: DataLayerSettings | None = None  # None: no managed data services to check
    infra: InfraSettings | None = None  # None: infra.plan/apply have nothing to do (docs/infra.md)
    dify: DifySettings = Field(default_factory=DifySettings)  # pass-through, pairing, connection budget


class Defaults(_Strict):
    hostname: StrictStr | None = Field(default=None, pattern=HOSTNAME_PATTERN)
    port: StrictInt | None = Field(default=None, ge=1, le=65535)
    username: StrictStr | None = Field(default=None, pattern=USERNAME_PATTERN)
    data: Data | None = None


class GroupSpec(Defaults):
    groups: list[StrictStr] | None = None


class HostSpec(GroupSpec):
    pass
