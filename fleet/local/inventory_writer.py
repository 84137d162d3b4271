"""`inventory/local/` for the local fleet, in the format of docs/inventory.md.

Host keys in known_hosts are read from inside each instance (never trust-on-first-use), so every
`fab` task can run against `--inventory local` with strict host-key checking.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fleet.errors import FleetError
from fleet.local import execute
from fleet.local.config import REPO_ROOT, LocalConfig

KEY_FILE = "id_ed25519"
GROUP = "local"
APP_DIR = "/opt/fleet/dify"

SCHEMA = REPO_ROOT / "compose" / "env.schema.yaml"
REGISTRY = "fleet-registry:5000"
# compose variables for the local fleet: the stand-in images of the local registry, short health
# checks, and placeholder addresses for the managed data layer (the stand-ins never connect to it)
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
    "HEALTHCHECK_INTERVAL": "2s",
    "HEALTHCHECK_TIMEOUT": "2s",
    "HEALTHCHECK_RETRIES": "3",
    "HEALTHCHECK_START_PERIOD": "30s",
    "HEALTHCHECK_START_INTERVAL": "1s",
    "WORKER_STOP_GRACE_PERIOD": "5s",
    "DEPLOY_ENV": "DEVELOPMENT",
    "DB_HOST": "db.local.invalid",
    "REDIS_HOST": "redis.local.invalid",
    "PGVECTOR_HOST": "pgvector.local.invalid",
    "GOOGLE_STORAGE_BUCKET_NAME": "fleet-local-files",
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


def defaults_doc(
    config: LocalConfig,
    variables: dict[str, str] | None = None,
    secret_refs: dict[str, dict[str, str]] | None = None,
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
            },
            "vars": dict(LOCAL_VARS if variables is None else variables),
            "rollout": dict(LOCAL_ROLLOUT),
            "run": dict(LOCAL_RUN),
        }
    }
    if secret_refs:
        doc["data"]["secrets"] = dict(secret_refs)
    return doc


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


def write(config: LocalConfig, hosts: Sequence[HostEntry]) -> Path:
    """Rewrite the whole inventory (each file atomically); returns its directory."""
    directory = config.inventory_dir
    directory.mkdir(parents=True, exist_ok=True)
    _write(directory / "hosts.yaml", _yaml(hosts_doc(hosts, config)))
    _write(directory / "groups.yaml", _yaml(groups_doc()))
    schema = schema_variables()
    refs = ensure_secrets(config, required_secrets(schema))
    _write(directory / "defaults.yaml", _yaml(defaults_doc(config, local_vars(schema), refs)))
    _write(directory / "known_hosts", known_hosts_text(hosts))
    return directory


def remove(config: LocalConfig) -> None:
    """Forget the fleet's hosts (the client key stays, so the next `up` reuses it)."""
    for name in ("hosts.yaml", "groups.yaml", "defaults.yaml", "known_hosts"):
        (config.inventory_dir / name).unlink(missing_ok=True)
