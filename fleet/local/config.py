"""Where the local fleet keeps its state and which names/ports it uses (one place, overridable)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleet.errors import FleetError
from fleet.paths import PROJECT_ROOT

if TYPE_CHECKING:
    from fleet.inventory.schema import LBSettings

LOG_DRIVERS = ("json-file", "gcplogs")
MIGRATIONS = ("off", "phase")
# the fleet's file bucket (GOOGLE_STORAGE_BUCKET_NAME; plugins under it too), in the Cloud Storage
# stand-in next to the release store's bucket (fleet/local/vmservices.py makes both)
FILES_BUCKET = "fleet-local-files"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")

# The local fleet's backend service and health checks, written into its inventory (`lb`) and handed to
# its haproxy (fleet/local/lb.py) and its MIG's autohealer (fleet/local/compute_docker.py): the same
# settings `infra` derives the GCP backend service and health checks from, with waits of seconds.
# session_affinity NONE: the load generator (fleet/scenarios/loadgen.py) is one client on 127.0.0.1, and
# under CLIENT_IP every one of its requests would go to one instance (docs/local-fleet.md).
LOCAL_LB: dict[str, Any] = {
    "check_interval": 1,  # readiness (/health): haproxy's inter, rise, fall
    "healthy_threshold": 2,
    "unhealthy_threshold": 2,
    "draining_timeout": 10,
    "session_affinity": "NONE",
    # liveness (/nginx-health): the MIG's autohealing. 6 x 5 s: a dead nginx is recreated ~30 s after it
    # died. Not shorter: a switch that changes nginx's config recreates it with the release's other
    # containers, and on this (loaded, 2-core) machine nginx was seen down for more than 10 s during
    # one (docs/local-fleet.md)
    "liveness": {
        "path": "/nginx-health",
        "check_interval": 5,
        "timeout": 3,
        "healthy_threshold": 2,
        "unhealthy_threshold": 6,
        "initial_delay": 120,
    },
}


def merge_lb(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """LOCAL_LB with `overrides` on top (`liveness` merged key by key)."""
    merged = {**LOCAL_LB, **{k: v for k, v in overrides.items() if k != "liveness"}}
    merged["liveness"] = {**LOCAL_LB["liveness"], **dict(overrides.get("liveness") or {})}
    return merged


def check_name(value: str, what: str) -> str:
    """Names end up in docker argv and haproxy config: keep them to a safe alphabet."""
    if not _NAME.fullmatch(value):
        raise FleetError(
            f"invalid {what} {value!r}",
            where="local fleet",
            hint="use lowercase letters, digits, '.', '_' or '-' (at most 63 characters)",
        )
    return value


def check_port(value: int, what: str) -> int:
    if not isinstance(value, int) or not 1 <= value <= 65535:
        raise FleetError(f"invalid {what} {value!r}", where="local fleet", hint="a TCP port in 1..65535")
    return value


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return check_port(int(raw), name)
    except ValueError:
        raise FleetError(f"{name}={raw!r} is not a number", where="environment") from None


MAX_SOCKET_PATH = 97  # haproxy's limit for `stats socket` (sun_path minus its own suffix)


@dataclass(frozen=True)
class LocalConfig:
    """Everything that names a local-fleet resource. Defaults are the documented contract."""

    root: Path = PROJECT_ROOT
    name: str = "local"  # a second fleet (e.g. the benchmark's) uses another name, prefix, ports
    container_prefix: str = "fleet-local"  # containers fleet-local-1, fleet-local-2, ...
    host_prefix: str = "local"  # inventory hosts local-1, local-2, ...
    network: str = "fleet-local"
    subnet: str = "10.213.0.0/24"
    ssh_base: int = 2200  # local-N -> 127.0.0.1:(2200+N)
    http_base: int = 8100  # local-N -> 127.0.0.1:(8100+N)
    lb_port: int = 8080
    registry_name: str = "fleet-registry"
    registry_host_port: int = 15000  # the host pushes to 127.0.0.1:15000, instances pull fleet-registry:5000
    backend: str = "app"
    project: str = "local-project"
    zone: str = "europe-west1-b"  # a real-looking zone: the functions and the stand-in take GCE names only
    labels: dict[str, str] = field(default_factory=lambda: {"fleet.local": "1"})
    # what a VM reaches on the fleet network's gateway (this machine), as a GCE VM reaches Google:
    # the metadata server (port 80, as metadata.google.internal), Cloud Storage, Secret Manager
    storage_port: int = 4443
    secretmanager_port: int = 8085
    monitoring_port: int = 8086  # the Monitoring REST front (the agents' health metric)
    # the stack's LOG_DRIVER in the fleet's inventory: json-file, or gcplogs (Docker's Cloud Logging
    # driver, writing to the fleet's local Cloud Logging on the gateway; docs/logging.md)
    log_driver: str = "json-file"
    # overrides of LOCAL_LB (e.g. {"session_affinity": "CLIENT_IP", "liveness": {"initial_delay": 30}})
    lb: dict[str, Any] = field(default_factory=dict)
    # the MIG applies its autohealing policy (liveness check, recreate). Off unless asked for: a fleet
    # whose instances serve nothing yet (before the first deploy) would be recreated over and over
    autohealing: bool = False
    # dify.migrations in the fleet's inventory: "phase" (a rollout across a schema revision migrates the
    # fleet's database once, rollbacks across it are guarded) or "off" (docs/local-fleet.md)
    migrations: str = "off"

    def __post_init__(self) -> None:
        for value, what in (
            (self.name, "fleet name"),
            (self.container_prefix, "container prefix"),
            (self.host_prefix, "host prefix"),
            (self.network, "network name"),
            (self.registry_name, "registry name"),
            (self.backend, "backend name"),
        ):
            check_name(value, what)
        for port, what in (
            (self.ssh_base, "ssh base port"),
            (self.http_base, "http base port"),
            (self.lb_port, "LB port"),
            (self.registry_host_port, "registry port"),
            (self.storage_port, "storage port"),
            (self.secretmanager_port, "secret manager port"),
            (self.monitoring_port, "monitoring port"),
        ):
            check_port(port, what)
        if self.log_driver not in LOG_DRIVERS:
            raise FleetError(
                f"invalid log driver {self.log_driver!r}",
                where="local fleet",
                hint="json-file or gcplogs (FLEET_LOCAL_LOG_DRIVER)",
            )
        if self.migrations not in MIGRATIONS:
            raise FleetError(
                f"invalid migrations setting {self.migrations!r}",
                where="local fleet",
                hint="phase or off (FLEET_LOCAL_MIGRATIONS)",
            )
        if self.lb:  # refuse bad overrides at once (no overrides: no pydantic needed, see lb_settings)
            self.lb_settings  # noqa: B018

    @property
    def lb_settings(self) -> LBSettings:
        """The fleet's `lb` settings (LOCAL_LB with this fleet's overrides), validated by the schema."""
        # imported here: the engine's set-up (fleet.local.engine) runs with Debian's python3, no pydantic
        from pydantic import ValidationError

        from fleet.inventory.schema import LBSettings

        try:
            return LBSettings.model_validate({"kind": "haproxy", **merge_lb(self.lb)})
        except ValidationError as exc:
            first = exc.errors()[0]
            raise FleetError(
                f"invalid local LB setting {'.'.join(str(p) for p in first['loc'])}: {first['msg']}",
                where="local fleet (LocalConfig.lb)",
                hint="the keys and values of the inventory's `lb` section (docs/inventory.md)",
            ) from None

    @classmethod
    def from_env(cls, root: Path | None = None) -> LocalConfig:
        """Ports can be moved with FLEET_LOCAL_{SSH_BASE,HTTP_BASE,LB_PORT,REGISTRY_PORT} when taken;
        FLEET_LOCAL_LOG_DRIVER=gcplogs sends the stack's logs to the fleet's local Cloud Logging.
        FLEET_LOCAL_AUTOHEALING=1 turns the MIG's autohealing on, FLEET_LOCAL_SESSION_AFFINITY sets the
        LB's (NONE, CLIENT_IP, GENERATED_COOKIE), FLEET_LOCAL_MIGRATIONS=phase the migration phase."""
        lb: dict[str, Any] = {}
        affinity = os.environ.get("FLEET_LOCAL_SESSION_AFFINITY", "")
        if affinity:
            lb["session_affinity"] = affinity
        healing = os.environ.get("FLEET_LOCAL_AUTOHEALING", "")
        if healing not in ("", "0", "1"):
            raise FleetError(f"FLEET_LOCAL_AUTOHEALING={healing!r} is not 0 or 1", where="environment")
        return cls(
            log_driver=os.environ.get("FLEET_LOCAL_LOG_DRIVER") or "json-file",
            lb=lb,
            autohealing=healing == "1",
            migrations=os.environ.get("FLEET_LOCAL_MIGRATIONS") or "off",
            root=root or PROJECT_ROOT,
            ssh_base=_env_int("FLEET_LOCAL_SSH_BASE", 2200),
            http_base=_env_int("FLEET_LOCAL_HTTP_BASE", 8100),
            lb_port=_env_int("FLEET_LOCAL_LB_PORT", 8080),
            registry_host_port=_env_int("FLEET_LOCAL_REGISTRY_PORT", 15000),
        )

    @property
    def gateway(self) -> str:
        """This machine's address on the fleet network: where the VMs' Google services listen."""
        import ipaddress

        return str(next(ipaddress.ip_network(self.subnet).hosts()))

    @property
    def storage_endpoint(self) -> str:
        return f"http://{self.gateway}:{self.storage_port}"

    @property
    def secretmanager_endpoint(self) -> str:
        return f"http://{self.gateway}:{self.secretmanager_port}"

    @property
    def monitoring_endpoint(self) -> str:
        return f"http://{self.gateway}:{self.monitoring_port}"

    @property
    def bucket(self) -> str:
        """The fleet's release store bucket (Cloud Storage names: lowercase, digits, '-')."""
        return f"{self.name}-fleet-store".lower().replace("_", "-")

    @property
    def store_url(self) -> str:
        return f"gs://{self.bucket}/fleets/{self.name}"

    @property
    def fleet_dir(self) -> Path:
        return self.root / ".fleet"

    @property
    def state_dir(self) -> Path:
        return self.root / ".fleet" / self.name

    @property
    def inventory_dir(self) -> Path:
        """inventory/local/ for the default fleet (git-ignored); other fleets keep theirs in state_dir."""
        if self.name == "local":
            return self.root / "inventory" / "local"
        return self.state_dir / "inventory"

    @property
    def images_src(self) -> Path:
        return self.root / "images"

    @property
    def tarball_dir(self) -> Path:
        """Shared by every fleet of this checkout: the stand-in images are the same for all (built in
        the one engine), so a second fleet mounts the tarball the first saved instead of writing its
        own 270 MB copy (~5 s each)."""
        return self.fleet_dir / "images"

    @property
    def lb_dir(self) -> Path:
        return self.state_dir / "lb"

    @property
    def stats_socket(self) -> Path:
        path = self.lb_dir / "haproxy.sock"
        # a Unix socket path is limited (haproxy: 97 bytes); say so instead of "haproxy rejected its config"
        if len(str(path)) > MAX_SOCKET_PATH:
            raise FleetError(
                f"the LB's stats socket path is {len(str(path))} bytes, "
                f"over the {MAX_SOCKET_PATH} a Unix socket allows: {path}",
                where="local fleet",
                hint="run from a checkout (or state root) with a shorter path",
            )
        return path

    @property
    def registry_ref(self) -> str:
        """How instances (and compose files) name the registry."""
        return f"{self.registry_name}:5000"

    def container_name(self, index: int) -> str:
        return f"{self.container_prefix}-{index}"

    def host_name(self, index: int) -> str:
        return f"{self.host_prefix}-{index}"

    def index_of(self, name: str) -> int:
        """Accept `local-3`, `fleet-local-3` or `3`; the index is the instance's identity."""
        text = name.strip()
        for prefix in (self.container_prefix + "-", self.host_prefix + "-"):
            if text.startswith(prefix):
                text = text[len(prefix) :]
                break
        if not text.isdigit() or int(text) < 1:
            raise FleetError(
                f"no such local instance name {name!r}",
                where="local fleet",
                hint=f"use {self.host_prefix}-N or {self.container_prefix}-N (N >= 1)",
            )
        return int(text)
