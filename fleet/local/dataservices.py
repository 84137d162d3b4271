"""The local fleet's managed data layer: one data-services container per fleet (images/data/).

What Cloud SQL (main and pgvector) and Memorystore are to a GCE fleet, this container is to the local
one: PostgreSQL 17 with pgvector (the main database, the plugin daemon's, and the vector database with
`CREATE EXTENSION vector`; password auth by scram-sha-256, TLS offered) and Redis with AUTH on 6379 and a
TLS listener on 6378, both with the server certificate of the fleet's local CA (fleet/local/vmservices.py).
It sits on the fleet network at a fixed address (the subnet's last host), which the inventory writer puts
in DB_HOST, PGVECTOR_HOST and REDIS_HOST: a VM's containers reach it through the VM's network, as they
reach a private Cloud SQL IP. Nothing is published on this machine.

The passwords are the fleet's secrets DB_PASSWORD, PGVECTOR_PASSWORD and REDIS_PASSWORD, generated into
the inventory's local secret store (inventory/local/secrets/, git-ignored) like the others; the container
gets copies (0600) in its configuration directory under the fleet's state directory, mounted read-only,
never in its environment or an image. `local.up` creates it (or adopts the one this fleet made with the
same inputs; a changed password, certificate or image replaces it, and its data with it), `local.down`
removes it. Its data lives in the container: a new container is an empty database.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import shutil
from pathlib import Path
from typing import Any

from fleet.errors import FleetError
from fleet.local import dockercmd, execute
from fleet.local.config import LocalConfig
from fleet.waits import polling

OWNER_LABEL = "fleet.local.owner"  # as the instances': the state directory of the fleet that made it
ROLE_LABEL = "fleet.local.data"  # the fleet's container prefix
INPUTS_LABEL = "fleet.local.data.inputs"  # what it was made from (names, secrets, TLS, image)
PG_PORT = 5432
REDIS_PORT = 6379
REDIS_TLS_PORT = 6378
SECRETS = ("DB_PASSWORD", "PGVECTOR_PASSWORD", "REDIS_PASSWORD")
# roles and databases (the compose variables of the same names)
NAMES = {
    "DB_USERNAME": "dify",
    "DB_DATABASE": "dify",
    "DB_PLUGIN_DATABASE": "dify_plugin",
    "PGVECTOR_USER": "dify_vector",
    "PGVECTOR_DATABASE": "dify_vector",
}
READY_FILE = "/run/fleet-data/ready"
CONF_DIR = "data"  # under the fleet's state directory


def container_name(config: LocalConfig) -> str:
    return f"{config.container_prefix}-data"


def alias(config: LocalConfig) -> str:
    return f"{config.container_prefix}-data"


def address(config: LocalConfig) -> str:
    """The subnet's last host address: Docker hands instances the lowest free ones, so it stays free."""
    net = ipaddress.ip_network(config.subnet)
    last = net.broadcast_address - 1
    if last == ipaddress.ip_address(config.gateway):
        raise FleetError(f"subnet {config.subnet} has no room for the data services", where="local fleet")
    return str(last)


def inventory_vars(config: LocalConfig) -> dict[str, str]:
    """What the inventory sets so the stack uses this fleet's data services."""
    host = address(config)
    return {
        "DB_HOST": host,
        "DB_PORT": str(PG_PORT),
        "PGVECTOR_HOST": host,
        "PGVECTOR_PORT": str(PG_PORT),
        "REDIS_HOST": host,
        "REDIS_PORT": str(REDIS_PORT),
        **NAMES,
    }


def conf_dir(config: LocalConfig) -> Path:
    return config.state_dir / CONF_DIR


def write_conf(config: LocalConfig, secret_files: dict[str, Path], tls: tuple[Path, Path, Path]) -> str:
    """The container's configuration directory (names.env, secrets/, tls/); returns its digest."""
    directory = conf_dir(config)
    missing = [name for name in SECRETS if name not in secret_files]
    if missing:
        raise FleetError(f"no value for {', '.join(missing)}", where="local data services")
    (directory / "secrets").mkdir(parents=True, exist_ok=True, mode=0o700)
    (directory / "tls").mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)
    digest = hashlib.sha256()
    names = "".join(f"{k}={v}\n" for k, v in NAMES.items())
    _put(directory / "names.env", names.encode(), 0o644)
    digest.update(names.encode())
    for name in SECRETS:
        value = secret_files[name].read_bytes()
        _put(directory / "secrets" / name, value, 0o600)
        digest.update(name.encode() + b"\0" + value + b"\0")
    for source, target, mode in zip(
        tls, ("ca.crt", "server.crt", "server.key"), (0o644, 0o644, 0o600), strict=True
    ):
        value = source.read_bytes()
        _put(directory / "tls" / target, value, mode)
        digest.update(target.encode() + b"\0" + value + b"\0")
    return digest.hexdigest()[:16]


def _put(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(tmp, mode)
    tmp.replace(path)


def inspect(config: LocalConfig) -> dict[str, Any] | None:
    proc = execute.run(dockercmd.inspect_containers([container_name(config)]), check=False)
    if proc.returncode != 0:
        return None
    found = json.loads(proc.stdout or "[]")
    return found[0] if found else None


def adoptable(info: dict[str, Any], config: LocalConfig, inputs: str) -> str:
    """Why this fleet cannot keep the existing container ("" when it can): another fleet's, or made from
    other inputs (a changed password, certificate or image)."""
    labels = (info.get("Config") or {}).get("Labels") or {}
    owner = labels.get(OWNER_LABEL)
    if owner != str(config.state_dir):
        return f"made by the fleet in {owner}" if owner else "not made by a local fleet"
    if labels.get(INPUTS_LABEL) != inputs:
        return "its passwords, certificate or image changed"
    return ""


def spec(config: LocalConfig, image: str, inputs: str) -> dockercmd.DataSpec:
    return dockercmd.DataSpec(
        name=container_name(config),
        image=image,
        network=config.network,
        address=address(config),
        alias=alias(config),
        conf_dir=conf_dir(config),
        labels={
            **config.labels,
            ROLE_LABEL: config.container_prefix,
            OWNER_LABEL: str(config.state_dir),
            INPUTS_LABEL: inputs,
        },
    )


def ensure(config: LocalConfig, secret_files: dict[str, Path], image: str, *, timeout: float = 120.0) -> str:
    """Start the fleet's data services unless they run as wanted; returns what was done
    ("adopted", "started", "created" or "replaced: <why>"). The fleet network must exist."""
    from fleet.local.vmservices import logging_tls

    tls = logging_tls(config)
    image_id = execute.run(dockercmd.image_exists(image)).stdout.strip()
    conf = write_conf(config, secret_files, (tls.ca_cert, tls.cert, tls.key))
    inputs = hashlib.sha256(f"{conf}\n{image_id}".encode()).hexdigest()[:16]
    info = inspect(config)
    done = "created"
    if info is not None:
        why = adoptable(info, config, inputs)
        if why:
            execute.run(dockercmd.rm_force([container_name(config)]), timeout=60)
            done = f"replaced: {why}"
        elif (info.get("State") or {}).get("Status") == "running":
            done = "adopted"
        else:
            execute.run(dockercmd.start(container_name(config)), timeout=60)
            done = "started"
    if done.startswith(("created", "replaced")):
        execute.run(dockercmd.run_data(spec(config, image, inputs)), timeout=120)
    wait_ready(config, timeout)
    return done


def wait_ready(config: LocalConfig, timeout: float = 120.0) -> None:
    name = container_name(config)
    state: dict[str, Any] = {}
    for _ in polling(timeout, 0.3):
        proc = execute.run(dockercmd.exec_(name, ["test", "-e", READY_FILE]), check=False, timeout=30)
        if proc.returncode == 0:
            return
        info = inspect(config)
        state = (info or {}).get("State") or {}
        # restarted (PID 1 exited: the restart policy runs it again) or stopped: its log says why
        if info is None or state.get("Status") in ("exited", "dead") or int(info.get("RestartCount") or 0):
            break
    logs = execute.run([dockercmd.DOCKER, "logs", "--tail", "30", name], check=False)
    raise FleetError(
        f"the data services did not become ready ({state.get('Status', 'no container')})",
        where=name,
        hint="its log ends:\n" + (logs.stdout + logs.stderr).strip()[-2000:],
    )


def remove(config: LocalConfig) -> None:
    """Remove the fleet's data services (and their data) and their configuration directory."""
    execute.run(dockercmd.rm_force([container_name(config)]), check=False, timeout=60)
    shutil.rmtree(conf_dir(config), ignore_errors=True)


def status(config: LocalConfig) -> dict[str, Any] | None:
    info = inspect(config)
    if info is None:
        return None
    return {
        "container": container_name(config),
        "state": (info.get("State") or {}).get("Status", ""),
        "address": address(config),
        "postgres": f"{address(config)}:{PG_PORT}",
        "redis": f"{address(config)}:{REDIS_PORT}",
        "redis_tls": f"{address(config)}:{REDIS_TLS_PORT}",
    }
