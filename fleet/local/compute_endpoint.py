"""The local Compute endpoint as a process: where its state lives, start, find and stop it.

The endpoint itself (fleet/local/compute_docker.py) acts on the fleet's instances; this module only
manages the process, so the fleet (instances, inventory writer) can start it without importing it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fleet.errors import FleetError
from fleet.local import execute
from fleet.local.config import LocalConfig
from fleet.waits import polling

PORT_ENV = "FLEET_LOCAL_COMPUTE_PORT"
DEFAULT_PORT = 8089  # the default fleet's endpoint; other fleets take any free port


def mig_name(config: LocalConfig) -> str:
    return f"{config.name}-mig"


# --------------------------------------------------------------------------- the endpoint process


def state_dir(config: LocalConfig) -> Path:
    return config.state_dir / "compute"


def endpoint_file(config: LocalConfig) -> Path:
    return state_dir(config) / "endpoint.json"


def _config_file(config: LocalConfig) -> Path:
    return state_dir(config) / "config.json"


def save_config(config: LocalConfig) -> Path:
    """The fleet's LocalConfig for the endpoint process and the IAP stand-in (they run apart from us)."""
    path = _config_file(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = asdict(config) | {"root": str(config.root)}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True))
    tmp.replace(path)
    return path


def load_config(directory: Path) -> LocalConfig:
    path = directory / "config.json"
    try:
        doc = json.loads(path.read_text())
        doc["root"] = Path(doc["root"])
        return LocalConfig(**doc)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FleetError(
            f"cannot read the local fleet's config: {exc}",
            where=str(path),
            hint="is the local fleet up? `fab local.up` writes it",
        ) from None


def _is_endpoint(pid: int) -> bool:
    """A live (not zombie) process running this module."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z" and b"fleet.local.compute_docker" in cmdline


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def running_endpoint(config: LocalConfig) -> dict[str, Any] | None:
    """{pid, port, url} of this fleet's endpoint process when it runs and answers."""
    try:
        info = json.loads(endpoint_file(config).read_text())
        pid, port = int(info["pid"]), int(info["port"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if _is_endpoint(pid) and _answers(port):
        return {"pid": pid, "port": port, "url": f"http://127.0.0.1:{port}"}
    return None


def endpoint_port(config: LocalConfig) -> int | None:
    try:
        return int(json.loads(endpoint_file(config).read_text())["port"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def endpoint_url(config: LocalConfig) -> str | None:
    """The endpoint's URL as recorded (without probing: called on every inventory rewrite)."""
    port = endpoint_port(config)
    return None if port is None else f"http://127.0.0.1:{port}"


def preferred_port(config: LocalConfig) -> int:
    raw = os.environ.get(PORT_ENV, "")
    if raw:
        try:
            port = int(raw)
        except ValueError:
            raise FleetError(f"{PORT_ENV}={raw!r} is not a number", where="environment") from None
        if not 0 <= port <= 65535:
            raise FleetError(f"{PORT_ENV}={port} is not a TCP port", where="environment")
        return port
    return DEFAULT_PORT if config.name == "local" else 0


def ensure_endpoint(config: LocalConfig, timeout: float = 15.0) -> str:
    """Start this fleet's Compute endpoint process unless it runs; returns its URL. A running one is
    kept whatever the fleet's settings now: its MIG's autohealing policy and its LB's settings come
    from the resources `infra.apply` patches (fleet/local/infrasetup.py), which it picks up as they
    change, so `FLEET_LOCAL_AUTOHEALING=1 fab local.up` needs no restart."""
    found = running_endpoint(config)
    if found is not None:
        save_config(config)
        return str(found["url"])
    port = preferred_port(config) or (endpoint_port(config) or 0)  # keep the URL the inventory names
    stop_endpoint(config, forget=False)  # one that runs but does not answer
    directory = state_dir(config)
    directory.mkdir(parents=True, exist_ok=True)
    save_config(config)
    argv = [
        sys.executable,
        "-m",
        "fleet.local.compute_docker",
        "--state-dir",
        str(directory),
        "--port",
        str(port),
    ]
    pid = execute.spawn_detached(argv, str(directory / "compute.log"), env={"PYTHONPATH": str(config.root)})
    for _ in polling(timeout, 0.05):
        found = running_endpoint(config)
        if found is not None and found["pid"] == pid:
            return str(found["url"])
        if not _alive(pid):
            break
    tail = ""
    with contextlib.suppress(OSError):
        tail = "\n".join((directory / "compute.log").read_text().splitlines()[-10:])
    raise FleetError(
        f"the local Compute endpoint did not start\n{tail}".rstrip(),
        where=str(directory),
        hint=f"see {directory / 'compute.log'}; move it with {PORT_ENV}=PORT",
    )


def stop_endpoint(config: LocalConfig, *, forget: bool = True) -> None:
    """Stop the endpoint process (by its recorded pid); with `forget`, drop its port, labels and metadata."""
    try:
        pid = int(json.loads(endpoint_file(config).read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        pid = 0
    if pid and _is_endpoint(pid):
        for sig in (signal.SIGTERM, signal.SIGKILL):
            os.kill(pid, sig)
            for _ in polling(5, 0.05):
                if not _is_endpoint(pid):
                    break
            if not _is_endpoint(pid):
                break
    if forget:  # else the record stays: a restart takes the same port, the inventory stays right
        # like deleting the project: its labels, metadata, release store, secrets and guest attributes
        endpoint_file(config).unlink(missing_ok=True)
        for name in ("state.json", "resources.json", "secretmanager.json", "guest-attributes.json"):
            (state_dir(config) / name).unlink(missing_ok=True)
        shutil.rmtree(state_dir(config) / "storage", ignore_errors=True)
