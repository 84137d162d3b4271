"""`inventory/local/` for the local fleet, in the format of docs/inventory.md.

Host keys in known_hosts are read from inside each instance (never trust-on-first-use), so every
`fab` task can run against `--inventory local` with strict host-key checking.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fleet.errors import FleetError
from fleet.local import execute
from fleet.local.config import FILES_BUCKET, LocalConfig, merge_lb
from fleet.paths import COMPOSE_DIR

KEY_FILE = "id_ed25519"
GROUP = "local"
APP_DIR = "/opt/fleet/dify"

SCHEMA = COMPOSE_DIR / "env.schema.yaml"
REGISTRY = "fleet-registry:5000"
# compose variables for the local fleet: the stand-in images of the local registry, short health
# checks, and placeholder addresses for the managed data layer, which `write` replaces with the fleet's
# data services (fleet/local/dataservices.py: PostgreSQL + pgvector, Redis)
LOCAL_VARS = {
    "DIFY_VERSION": "1.0.0",
    "API_IMAGE": f"{REGISTRY}/dify-api",
    "WEB_IMAGE": f"{REGISTRY}/dify-web",
    "SANDBOX_IMAGE": f"{REGISTRY}/dify-sandbox",
    "SANDBOX_VERSION": "local",
    "PLUGIN_DAEMON_IMAGE": f"{REGISTRY}/dify-plugin-daemon",
    "PLUGIN_DAEMON_VERSION": "local",
    "NGINX_IMAGE": f"{REGISTRY}/nginx",
    "NGINX_VERSION": "local",
    "SSRF_PROXY_IMAGE": f"{REGISTRY}/squid",
    "SSRF_PROXY_VERSION": "local",
    # fast while a container starts (every 0.5 s until its first passing check, within the first
    # minute, so a switch or a boot is judged at once: Docker uses start_interval only while the
    # container is `starting`), slow once it is healthy: 6 checks x 4 instances every 2 s kept ~12
    # container execs a second running on an idle fleet; the LB and the monitor probe /health on their
    # own cadence anyway
    "HEALTHCHECK_INTERVAL": "15s",
    "HEALTHCHECK_TIMEOUT": "2s",
    "HEALTHCHECK_RETRIES": "3",
    "HEALTHCHECK_START_PERIOD": "60s",
    "HEALTHCHECK_START_INTERVAL": "500ms",
    "WORKER_STOP_GRACE_PERIOD": "5s",
    "DEPLOY_ENV": "DEVELOPMENT",
    "DB_HOST": "db.local.invalid",
    "REDIS_HOST": "redis.local.invalid",
    "PGVECTOR_HOST": "pgvector.local.invalid",
    "GOOGLE_STORAGE_BUCKET_NAME": FILES_BUCKET,
}
SECRETS_DIR = "secrets"
# short waits: the local fleet answers in milliseconds and tests must stay quick
LOCAL_ROLLOUT = {
    "canary": 1,
    "batch": "50%",
    "max_failures": 0,
    "drain_wait": 3,
    "min_ready": 1,
    "health_timeout": 45,
}
LOCAL_RUN = {"workers": 20, "command_timeout": 300}
# dify.migrations: the stand-ins migrate the fleet's real database (`flask upgrade-db`), so the phase works
# here (FLEET_LOCAL_MIGRATIONS=phase, LocalConfig.migrations). Off by default: with the phase, a rollback
# across 1.0.0/1.1.0 is refused without --force-schema-rollback and --strategy replace refuses a schema
# change, which the local fleet's scenarios and tests do not expect yet
LOCAL_DIFY = {"migrations": "off"}


@dataclass(frozen=True)
class HostEntry:
    """What the inventory needs to know about one instance."""

    name: str
    ssh_port: int
    http_port: int
    instance_id: str
    host_key: str  # "ssh-ed25519 AAAA..."
    roles: tuple[str, ...]


def ensure_client_key(config: LocalConfig) -> str:
    """The deploy user's key for the local fleet (generated once); returns the public key line."""
    config.inventory_dir.mkdir(parents=True, exist_ok=True)
    key = config.inventory_dir / KEY_FILE
    pub = key.with_name(KEY_FILE + ".pub")
    if not key.exists() or not pub.exists():
        key.unlink(missing_ok=True)
        pub.unlink(missing_ok=True)
        execute.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "deploy@fleet-local", "-f", str(key)]
        )
    os.chmod(key, 0o600)
    return pub.read_text().strip()


def schema_variables(path: Path = SCHEMA) -> dict[str, dict[str, Any]] | None:
    """compose/env.schema.yaml's variables, or None when it is absent/unreadable (vars then pass as-is)."""
    try:
        data = yaml.safe_load(path.read_text())
        variables = data["variables"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
    return {str(k): dict(v or {}) for k, v in variables.items()} if isinstance(variables, dict) else None


def local_vars(schema: dict[str, dict[str, Any]] | None) -> dict[str, str]:
    """LOCAL_VARS limited to what the compose schema declares (the bundle refuses undeclared vars)."""
    if schema is None:
        return dict(LOCAL_VARS)
    return {k: v for k, v in LOCAL_VARS.items() if k in schema and not schema[k].get("secret")}


def data_vars(config: LocalConfig, schema: dict[str, dict[str, Any]] | None) -> dict[str, str]:
    """Where the stack finds the fleet's data services (hosts, ports, roles, databases)."""
    from fleet.local import dataservices

    wanted = dataservices.inventory_vars(config)
    return {
        k: v for k, v in wanted.items() if schema is None or (k in schema and not schema[k].get("secret"))
    }


def storage_vars(config: LocalConfig, schema: dict[str, dict[str, Any]] | None) -> dict[str, str]:
    """Where the stack's Google storage clients find the fleet's Cloud Storage stand-in (a fleet with
    its Google services: fleet/local/vmservices.py serves it on the gateway, the file bucket made)."""
    wanted = {"STORAGE_EMULATOR_HOST": config.storage_endpoint, "GOOGLE_STORAGE_BUCKET_NAME": FILES_BUCKET}
    return {k: v for k, v in wanted.items() if schema is None or k in schema}


def required_secrets(schema: dict[str, dict[str, Any]] | None) -> list[str]:
    """Secrets the stack cannot start without (no default, not derived from others)."""
    if schema is None:
        return []
    return [k for k, v in schema.items() if v.get("secret") and "default" not in v and not v.get("derived")]


def ensure_secrets(config: LocalConfig, names: Sequence[str]) -> dict[str, dict[str, str]]:
    """Random local values, one file each (generated once, git-ignored); returns inventory references."""
    directory = config.inventory_dir / SECRETS_DIR
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    refs: dict[str, dict[str, str]] = {}
    for name in names:
        path = directory / name
        if not path.exists():
            path.write_text(secrets.token_hex(24) + "\n")
            os.chmod(path, 0o600)
        refs[name] = {"file": f"{SECRETS_DIR}/{name}"}
    return refs


def hosts_doc(hosts: Sequence[HostEntry], config: LocalConfig) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for host in sorted(hosts, key=lambda h: (len(h.name), h.name)):
        doc[host.name] = {
            "hostname": "127.0.0.1",
            "port": host.ssh_port,
            "username": "deploy",
            "groups": [GROUP],
            "data": {
                "gce": {
                    "project": config.project,
                    "zone": config.zone,
                    "instance": host.name,
                    "instance_id": host.instance_id,
                },
                "roles": list(host.roles),
                # app.http_port (defaults: 80) is where nginx listens INSIDE the instance; the LB
                # reaches it through the port published on this machine:
                "lb": {"server": host.name, "address": f"127.0.0.1:{host.http_port}"},
            },
        }
    return doc


def groups_doc() -> dict[str, Any]:
    return {GROUP: {"data": {}}}


def gce_doc(config: LocalConfig, compute_endpoint: str) -> dict[str, Any]:
    """The local Compute endpoint's project, zone and MIG (fleet/local/compute_docker.py)."""
    from fleet.local.compute_endpoint import mig_name

    mig = {"project": config.project, "zone": config.zone, "name": mig_name(config)}
    return {
        "project": config.project,
        "zone": config.zone,
        "api_endpoint": compute_endpoint,
        "secretmanager_endpoint": config.secretmanager_endpoint,
        "migs": [mig],
    }


def defaults_doc(
    config: LocalConfig,
    variables: dict[str, str] | None = None,
    secret_refs: dict[str, dict[str, str]] | None = None,
    compute_endpoint: str | None = None,
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "data": {
            "ssh": {
                "key_file": KEY_FILE,
                "proxy": "none",
                "connect_timeout": 10,
                "keepalive": 15,
                "connect_retries": 2,
            },
            "app": {"dir": APP_DIR, "project": "dify", "http_port": 80},
            "lb": {
                "kind": "haproxy",
                "stats_socket": str(config.stats_socket),
                "backend": config.backend,
                "frontend": f"http://127.0.0.1:{config.lb_port}",
                # the backend service and its two health checks (readiness for the LB, liveness for
                # the MIG's autohealing): what the fleet's haproxy and MIG are configured from
                **merge_lb(config.lb),
            },
            "vars": dict(LOCAL_VARS if variables is None else variables),
            "rollout": dict(LOCAL_ROLLOUT),
            "run": dict(LOCAL_RUN),
            "dify": {**LOCAL_DIFY, "migrations": config.migrations},
        }
    }
    if secret_refs:
        doc["data"]["secrets"] = dict(secret_refs)
    if compute_endpoint:
        doc["data"]["gce"] = gce_doc(config, compute_endpoint)
        doc["data"]["store"] = {"url": config.store_url, "endpoint": config.storage_endpoint}
    return doc


def mig_defaults_doc(
    config: LocalConfig, static_defaults: dict[str, Any], compute_endpoint: str
) -> dict[str, Any]:
    """`inventory/local/mig/`: the same fleet seen the production way. Hosts are the MIG's members,
    reached through the IAP stand-in (fleet/local/iap_tunnel.py) under `compute.<instance-id>`, with
    host keys from guest attributes only (its known_hosts pins nothing)."""
    from fleet.local.compute_endpoint import state_dir

    data = dict(static_defaults["data"])
    data["ssh"] = {
        **data["ssh"],
        "key_file": f"../{KEY_FILE}",
        "proxy": "iap",
        "iap_command": [
            sys.executable,
            "-m",
            "fleet.local.iap_tunnel",
            "--state-dir",
            str(state_dir(config)),
        ],
        "host_keys": "guest_attributes",
    }
    data["gce"] = {**gce_doc(config, compute_endpoint), "member_groups": [GROUP], "beat": "first"}
    data["roles"] = ["app"]  # and `beat` on the first member (gce.beat)
    if "secrets" in data:
        data["secrets"] = {
            k: ({"file": f"../{v['file']}"} if "file" in v else dict(v)) for k, v in data["secrets"].items()
        }
    return {"port": 22, "username": "deploy", "data": data}


INFRA_DIR = "infra"
SERVICE_ACCOUNT = "fleet-vm@{project}.iam.gserviceaccount.com"


def infra_defaults_doc(config: LocalConfig, compute_endpoint: str, size: int) -> dict[str, Any]:
    """`inventory/local/infra/`: the fleet's Compute side as `fab infra.plan/apply` reads it, with the
    local fleet's names and settings. The MIG is regional (infra makes regional MIGs); its members all
    live in the fleet's one zone, the second zone of its distribution policy is never used."""
    from fleet.local import template
    from fleet.local.compute_endpoint import mig_name

    region = config.zone.rsplit("-", 1)[0]
    other = next(f"{region}-{c}" for c in "bcd" if f"{region}-{c}" != config.zone)
    mig = mig_name(config)
    # resource names: Compute's rules (a fleet may be named `a_b` or `1x`; its resources may not)
    base = re.sub(r"[^a-z0-9-]", "-", config.name.lower())
    base = base if base[:1].isalpha() else f"f{base}"
    return {
        "username": "deploy",
        "data": {
            "app": {"dir": APP_DIR, "project": "dify", "http_port": 80},
            "roles": ["app"],
            # the backend service and health checks infra creates; the fleet's haproxy and MIG read
            # them back from the endpoint (fleet/local/fromapi.py)
            "lb": {"kind": "gcp", "backend": config.backend, **merge_lb(config.lb)},
            "gce": {
                "project": config.project,
                "api_endpoint": compute_endpoint,
                "migs": [{"project": config.project, "region": region, "name": mig}],
                "beat": "first",
            },
            "store": {"url": config.store_url, "endpoint": config.storage_endpoint},
            "infra": {
                "region": region,
                "zones": [config.zone, other],
                "mig": mig,
                "base_instance_name": config.host_prefix,
                "size": size,
                "subnet": {"cidr": config.subnet},
                "service_account": SERVICE_ACCOUNT.format(project=config.project),
                "autohealing": config.autohealing,
                "metadata": template.infra_metadata(),
                "names": {
                    "template_prefix": f"{base}-template",
                    "readiness_check": f"{base}-readiness",
                    "liveness_check": f"{base}-liveness",
                },
            },
        },
    }


def write_infra(config: LocalConfig, compute_endpoint: str, size: int) -> Path:
    """Rewrite `infra/` of the fleet's inventory; returns its directory."""
    directory = config.inventory_dir / INFRA_DIR
    directory.mkdir(parents=True, exist_ok=True)
    _write(directory / "defaults.yaml", _yaml(infra_defaults_doc(config, compute_endpoint, size)))
    _write(directory / "hosts.yaml", _yaml({}))
    return directory


def known_hosts_text(hosts: Sequence[HostEntry]) -> str:
    lines = []
    for host in sorted(hosts, key=lambda h: h.ssh_port):
        parts = host.host_key.split()
        if len(parts) < 2 or parts[0] != "ssh-ed25519":
            raise FleetError(f"unexpected host key {host.host_key[:40]!r}", where=host.name)
        lines.append(f"[127.0.0.1]:{host.ssh_port} {parts[0]} {parts[1]}")
    return "\n".join(lines) + ("\n" if lines else "")


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _yaml(doc: dict[str, Any]) -> str:
    header = "# generated by the local fleet (fleet/local); rewritten on every change, do not edit\n"
    return header + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)


MIG_DIR = "mig"
MIG_HOSTS = (
    "# generated by the local fleet (fleet/local); rewritten on every change, do not edit\n"
    "# No hosts here: they are the members of the MIG in defaults.yaml (gce.migs), read from the\n"
    "# local Compute endpoint. A host listed here overrides the settings of the member of that name.\n"
    "{}\n"
)
MIG_KNOWN_HOSTS = (
    "# generated by the local fleet: empty on purpose. Host keys come from each instance's guest\n"
    "# attributes (hostkeys/) through the Compute API. A line here pins a key explicitly under\n"
    "# compute.<instance-id>; one that disagrees with what the instance publishes is refused.\n"
)


def write(config: LocalConfig, hosts: Sequence[HostEntry], compute_endpoint: str | None = None) -> Path:
    """Rewrite the whole inventory (each file atomically); returns its directory. With the fleet's
    Compute endpoint, defaults.yaml names it (gce) and `mig/` is the MIG-discovered view."""
    directory = config.inventory_dir
    directory.mkdir(parents=True, exist_ok=True)
    _write(directory / "hosts.yaml", _yaml(hosts_doc(hosts, config)))
    _write(directory / "groups.yaml", _yaml(groups_doc()))
    schema = schema_variables()
    refs: dict[str, dict[str, str]] = ensure_secrets(config, required_secrets(schema))
    if compute_endpoint:
        # the fleet has its Google services (fleet/local/vmservices.py): secrets live in Secret Manager,
        # where the VMs' agent reads them, and the inventory points at the release store
        from fleet.local import storesetup

        refs = storesetup.push_secrets(config, {k: directory / v["file"] for k, v in refs.items()})
    variables = local_vars(schema)
    variables.update(data_vars(config, schema))
    if compute_endpoint:
        variables.update(storage_vars(config, schema))
    if config.log_driver != "json-file":  # json-file is the stack's default
        variables["LOG_DRIVER"] = config.log_driver
    defaults = defaults_doc(config, variables, refs, compute_endpoint)
    _write(directory / "defaults.yaml", _yaml(defaults))
    _write(directory / "known_hosts", known_hosts_text(hosts))
    if compute_endpoint:
        mig = directory / MIG_DIR
        mig.mkdir(exist_ok=True)
        _write(mig / "hosts.yaml", MIG_HOSTS)
        _write(mig / "groups.yaml", _yaml(groups_doc()))
        _write(mig / "defaults.yaml", _yaml(mig_defaults_doc(config, defaults, compute_endpoint)))
        if not (mig / "known_hosts").exists():
            _write(mig / "known_hosts", MIG_KNOWN_HOSTS)
    return directory


def remove(config: LocalConfig) -> None:
    """Forget the fleet's hosts (the client key stays, so the next `up` reuses it)."""
    for name in ("hosts.yaml", "groups.yaml", "defaults.yaml", "known_hosts"):
        (config.inventory_dir / name).unlink(missing_ok=True)
        for sub in (MIG_DIR, INFRA_DIR):
            (config.inventory_dir / sub / name).unlink(missing_ok=True)
    for sub in (MIG_DIR, INFRA_DIR):
        with contextlib.suppress(OSError):
            (config.inventory_dir / sub).rmdir()
