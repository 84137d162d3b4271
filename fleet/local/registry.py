"""The local image registry: instances `docker compose pull` from it as production hosts would.

Debian's docker-registry runs as container `fleet-registry` on the fleet network (instances reach it
as fleet-registry:5000, listed as insecure in their daemon.json); this machine pushes to it through
127.0.0.1:<registry_host_port>, which Docker trusts without TLS.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from fleet.errors import FleetError
from fleet.local import dockercmd, execute
from fleet.local.config import LocalConfig
from fleet.waits import wait_until

VOLUME = "fleet-registry-data"
MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)


def ensure_network(config: LocalConfig) -> None:
    """The user-defined network on which instances and the registry find each other by name."""
    if execute.run(dockercmd.network_inspect(config.network), check=False).returncode == 0:
        return
    proc = execute.run(
        dockercmd.network_create(config.network, config.subnet, config.labels, config.gateway), check=False
    )
    if proc.returncode != 0 and "already exists" not in proc.stderr:
        raise execute.CommandError(
            dockercmd.network_create(config.network, config.subnet, config.labels, config.gateway),
            proc.returncode,
            proc.stderr,
            hint=f"another network may use {config.subnet}: `docker network ls`",
        )


def split_ref(ref: str, config: LocalConfig) -> tuple[str, str]:
    """`fleet-registry:5000/dify-api:1.0.0` -> ("dify-api", "1.0.0")."""
    prefix = config.registry_ref + "/"
    if not ref.startswith(prefix) or ":" not in ref[len(prefix) :]:
        raise FleetError(f"{ref!r} is not an image of the local registry", where="local images")
    repo, tag = ref[len(prefix) :].rsplit(":", 1)
    return repo, tag


def push_ref(ref: str, config: LocalConfig) -> str:
    """The name this machine pushes under (same repository and tag, reached through loopback)."""
    repo, tag = split_ref(ref, config)
    return f"127.0.0.1:{config.registry_host_port}/{repo}:{tag}"


def _url(config: LocalConfig, path: str) -> str:
    return f"http://127.0.0.1:{config.registry_host_port}{path}"


def answers(config: LocalConfig) -> bool:
    try:
        with urllib.request.urlopen(_url(config, "/v2/"), timeout=2) as resp:  # noqa: S310 - loopback
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def manifest_digest(config: LocalConfig, repo: str, tag: str) -> str | None:
    """The digest the registry holds for repo:tag, or None."""
    req = urllib.request.Request(  # noqa: S310 - loopback
        _url(config, f"/v2/{repo}/manifests/{tag}"), method="HEAD", headers={"Accept": MANIFEST_TYPES}
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310
            return resp.headers.get("Docker-Content-Digest")
    except (urllib.error.URLError, OSError):
        return None


def tags(config: LocalConfig, repo: str) -> list[str]:
    try:
        with urllib.request.urlopen(_url(config, f"/v2/{repo}/tags/list"), timeout=5) as resp:  # noqa: S310
            return list(json.load(resp).get("tags") or [])
    except (urllib.error.URLError, OSError, ValueError):
        return []


def container_state(config: LocalConfig) -> dict[str, Any] | None:
    proc = execute.run(dockercmd.inspect_containers([config.registry_name]), check=False)
    if proc.returncode != 0:
        return None
    info = json.loads(proc.stdout)[0]
    networks = sorted(((info.get("NetworkSettings") or {}).get("Networks") or {}).keys())
    return {"image": info["Image"], "status": info["State"]["Status"], "networks": networks}


def attach(config: LocalConfig) -> None:
    """Make the registry reachable as fleet-registry:5000 on this fleet's network too."""
    state = container_state(config)
    if state is not None and config.network not in state["networks"]:
        proc = execute.run(
            dockercmd.network_connect(config.network, config.registry_name, config.registry_name), check=False
        )
        if proc.returncode != 0 and "already exists" not in proc.stderr:
            raise execute.CommandError(["docker", "network", "connect"], proc.returncode, proc.stderr)


def ensure_running(config: LocalConfig, image: str, *, wait: float = 30.0) -> None:
    """Start (or replace, when its image changed) the registry container and wait until it answers."""
    ensure_network(config)
    image_id = execute.run(dockercmd.image_exists(image)).stdout.strip()
    state = container_state(config)
    if state is not None and (state["image"] != image_id or state["status"] != "running"):
        if state["image"] == image_id and state["status"] in ("exited", "created"):
            execute.run(dockercmd.start(config.registry_name))
        else:
            execute.run(dockercmd.rm_force([config.registry_name], volumes=False))
            state = None
    if state is None:
        execute.run(
            dockercmd.run_registry(
                config.registry_name, image, config.network, config.registry_host_port, VOLUME, config.labels
            ),
            hint=f"is 127.0.0.1:{config.registry_host_port} free? move it with FLEET_LOCAL_REGISTRY_PORT",
        )
    attach(config)
    wait_until(
        lambda: answers(config),
        wait,
        0.1,
        what=f"registry did not answer on 127.0.0.1:{config.registry_host_port} within {wait:.0f} s",
        where=config.registry_name,
        hint=f"docker logs {config.registry_name}",
    )


def is_pushed(config: LocalConfig, ref: str) -> bool:
    """True when the registry holds exactly this machine's image for ref (digest recorded at push)."""
    repo, tag = split_ref(ref, config)
    digest = manifest_digest(config, repo, tag)
    if digest is None:
        return False
    proc = execute.run(
        [dockercmd.DOCKER, "image", "inspect", "--format", "{{json .RepoDigests}}", dockercmd.check_ref(ref)],
        check=False,
    )
    if proc.returncode != 0:
        return False
    wanted = f"127.0.0.1:{config.registry_host_port}/{repo}@{digest}"
    return wanted in json.loads(proc.stdout or "[]")


def push(config: LocalConfig, ref: str) -> None:
    target = push_ref(ref, config)
    execute.run(dockercmd.tag(ref, target))
    execute.run(dockercmd.push(target), timeout=600)


def detach(config: LocalConfig) -> None:
    execute.run(dockercmd.network_disconnect(config.network, config.registry_name), check=False)


def remove(config: LocalConfig, *, data: bool = False) -> None:
    execute.run(dockercmd.rm_force([config.registry_name], volumes=False), check=False)
    if data:
        execute.run(dockercmd.volume_rm([VOLUME]), check=False)
