"""Pure builders of every docker command the local fleet runs (argv lists, validated values).

Nothing here executes anything: `execute` runs what these return, so each command can be read and
unit-tested as data.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fleet.errors import FleetError

DOCKER = "docker"
VM_CA_PATH = "/etc/fleet/local-ca.crt"  # where an instance finds the local CA (images/vm/fleet-init)
_REF = re.compile(r"^[a-z0-9][a-z0-9._/:-]{0,254}$")
_CONTAINER = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$")
_LABEL_KEY = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")

# Instances need most capabilities for their own dockerd, but `--privileged` fails on this kind of
# machine (no CAP_SYS_RESOURCE to hand out); these are the flags measured to work.
INSTANCE_SECURITY = (
    "--cap-add",
    "ALL",
    "--cap-drop",
    "SYS_RESOURCE",
    "--security-opt",
    "seccomp=unconfined",
    "--security-opt",
    "apparmor=unconfined",
    "--security-opt",
    "systempaths=unconfined",
)


def check_ref(ref: str) -> str:
    if not _REF.fullmatch(ref) or ".." in ref:
        raise FleetError(f"invalid image reference {ref!r}", where="local images")
    return ref


def check_container(name: str) -> str:
    if not _CONTAINER.fullmatch(name):
        raise FleetError(f"invalid container/volume/network name {name!r}", where="local fleet")
    return name


def _labels(labels: Mapping[str, str]) -> list[str]:
    out: list[str] = []
    for key, value in labels.items():
        if not _LABEL_KEY.fullmatch(key) or "\n" in value:
            raise FleetError(f"invalid label {key!r}={value!r}", where="local fleet")
        out += ["--label", f"{key}={value}"]
    return out


def _env(env: Mapping[str, str]) -> list[str]:
    out: list[str] = []
    for key, value in env.items():
        if not _ENV_KEY.fullmatch(key) or "\n" in value:
            raise FleetError(f"invalid environment variable {key!r}", where="local fleet")
        out += ["-e", f"{key}={value}"]
    return out


def server_version() -> list[str]:
    return [DOCKER, "version", "--format", "{{.Server.Version}}"]


def image_label(ref: str, label: str) -> list[str]:
    """Prints the label's value ('<no value>' when unset); fails when the image is missing."""
    check_ref(ref)
    return [DOCKER, "image", "inspect", "--format", f'{{{{index .Config.Labels "{label}"}}}}', ref]


def image_exists(ref: str) -> list[str]:
    return [DOCKER, "image", "inspect", "--format", "{{.Id}}", check_ref(ref)]


def build(
    context: Path,
    tag: str,
    *,
    dockerfile: Path | None = None,
    build_args: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    extra_tags: Sequence[str] = (),
) -> list[str]:
    """Legacy builder, host network: apt inside a build reaches the mirror the host reaches."""
    argv = [DOCKER, "build", "--network", "host", "--force-rm", "-t", check_ref(tag)]
    for extra in extra_tags:
        argv += ["-t", check_ref(extra)]
    if dockerfile is not None:
        argv += ["-f", str(dockerfile)]
    for key, value in (build_args or {}).items():
        if not _ENV_KEY.fullmatch(key):
            raise FleetError(f"invalid build arg {key!r}", where="local images")
        argv += ["--build-arg", f"{key}={value}"]
    argv += _labels(labels or {})
    argv.append(str(context))
    return argv


def import_rootfs(tag: str, changes: Sequence[str] = ()) -> list[str]:
    """`docker import` from stdin (a tar stream of the rootfs)."""
    argv = [DOCKER, "import"]
    for change in changes:
        argv += ["--change", change]
    return [*argv, "-", check_ref(tag)]


def tar_dir(directory: Path) -> list[str]:
    return ["tar", "--numeric-owner", "-C", str(directory), "-c", "."]


def tag(source: str, target: str) -> list[str]:
    return [DOCKER, "tag", check_ref(source), check_ref(target)]


def push(ref: str) -> list[str]:
    return [DOCKER, "push", "--quiet", check_ref(ref)]


def save(refs: Sequence[str], output: Path) -> list[str]:
    return [DOCKER, "save", "-o", str(output), *(check_ref(r) for r in refs)]


def rmi_ids(ids: Sequence[str]) -> list[str]:
    for image_id in ids:
        if not re.fullmatch(r"^(sha256:)?[0-9a-f]{12,64}$", image_id):
            raise FleetError(f"invalid image id {image_id!r}", where="local images")
    return [DOCKER, "rmi", "--force", *ids]


def image_ids(
    *, label: str | None = None, repository: str | None = None, dangling: bool = False
) -> list[str]:
    """Ids of images with a label, or of one repository (only untagged ones with `dangling`)."""
    argv = [DOCKER, "images", "--filter=dangling=true" if dangling else "--all", "--quiet", "--no-trunc"]
    if label is not None:
        argv += ["--filter", f"label={label}"]
    if repository is not None:
        argv.append(check_ref(repository))
    return argv


def network_inspect(name: str) -> list[str]:
    return [DOCKER, "network", "inspect", "--format", "{{.Id}}", check_container(name)]


def network_create(
    name: str, subnet: str, labels: Mapping[str, str], gateway: str | None = None
) -> list[str]:
    """The gateway (this machine on that network) is where the VMs' metadata server and APIs listen."""
    if not re.fullmatch(r"^\d{1,3}(\.\d{1,3}){3}/\d{1,2}$", subnet):
        raise FleetError(f"invalid subnet {subnet!r}", where="local fleet")
    extra = ["--gateway", str(ipaddress.ip_address(gateway))] if gateway else []
    return [DOCKER, "network", "create", "--subnet", subnet, *extra, *_labels(labels), check_container(name)]


def network_connect(network: str, container: str, alias: str) -> list[str]:
    return [
        DOCKER,
        "network",
        "connect",
        "--alias",
        check_container(alias),
        check_container(network),
        check_container(container),
    ]


def network_disconnect(network: str, container: str) -> list[str]:
    return [DOCKER, "network", "disconnect", "--force", check_container(network), check_container(container)]


def network_rm(name: str) -> list[str]:
    return [DOCKER, "network", "rm", check_container(name)]


def volume_rm(names: Sequence[str]) -> list[str]:
    return [DOCKER, "volume", "rm", "--force", *(check_container(n) for n in names)]


def volume_create(name: str, labels: Mapping[str, str]) -> list[str]:
    return [DOCKER, "volume", "create", *_labels(labels), check_container(name)]


def dangling_volumes(label: str) -> list[str]:
    """Names of the volumes carrying `label` (key=value) that no container uses."""
    return [DOCKER, "volume", "ls", "--quiet", "--filter", "dangling=true", "--filter", f"label={label}"]


def rm_force(names: Sequence[str], volumes: bool = True) -> list[str]:
    flags = ["--force", "--volumes"] if volumes else ["--force"]
    return [DOCKER, "rm", *flags, *(check_container(n) for n in names)]


def restart(name: str, timeout: int = 10) -> list[str]:
    return [DOCKER, "restart", "--time", str(int(timeout)), check_container(name)]


def stop(name: str, timeout: int = 10) -> list[str]:
    return [DOCKER, "stop", "--time", str(int(timeout)), check_container(name)]


def start(name: str) -> list[str]:
    return [DOCKER, "start", check_container(name)]


def inspect_containers(names: Sequence[str]) -> list[str]:
    """JSON array of container details (ids, state, labels, env) for many containers at once."""
    return [DOCKER, "container", "inspect", *(check_container(n) for n in names)]


def list_containers(label: str) -> list[str]:
    return [DOCKER, "ps", "--all", "--filter", f"label={label}", "--format", "{{.Names}}"]


def exec_(name: str, argv: Sequence[str], *, user: str | None = None, interactive: bool = False) -> list[str]:
    """Run argv inside a container (no shell unless argv itself is `sh -c SCRIPT`)."""
    cmd = [DOCKER, "exec"]
    if interactive:
        cmd.append("-i")
    if user is not None:
        cmd += ["--user", check_container(user)]
    return [*cmd, check_container(name), *argv]


def exec_sh(name: str, script: str, *, user: str | None = None) -> list[str]:
    """A shell script inside a container; callers build `script` with shlex.quote'd values."""
    return exec_(name, ["sh", "-c", script], user=user)


@dataclass(frozen=True)
class InstanceSpec:
    """A "VM": everything `docker run` needs to create one instance container."""

    name: str
    hostname: str
    image: str
    network: str
    ssh_port: int
    http_port: int
    docker_volume: str
    tarball_dir: Path | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    # /etc/hosts entries: metadata.google.internal -> the fleet network's gateway, as on GCE
    extra_hosts: Mapping[str, str] = field(default_factory=dict)
    # the local CA the fleet's Google API stand-ins (TLS) are signed by: the VM trusts it (fleet-init)
    ca_cert: Path | None = None


def run_instance(spec: InstanceSpec) -> list[str]:
    """Ports on 127.0.0.1 only; /run is a tmpfs (clean after a "reboot", like a VM's)."""
    argv = [
        DOCKER,
        "run",
        "--detach",
        "--name",
        check_container(spec.name),
        "--hostname",
        check_container(spec.hostname),
        "--network",
        check_container(spec.network),
        "--network-alias",
        spec.hostname,
        *INSTANCE_SECURITY,
        "--tmpfs",
        "/run:rw,exec,nosuid,mode=755,size=256m",
        "--volume",
        f"{check_container(spec.docker_volume)}:/var/lib/docker",
        "--publish",
        f"127.0.0.1:{int(spec.ssh_port)}:22",
        "--publish",
        f"127.0.0.1:{int(spec.http_port)}:80",
        "--stop-timeout",
        "20",
    ]
    if spec.tarball_dir is not None:
        argv += ["--volume", f"{spec.tarball_dir}:/var/lib/fleet/images:ro"]
    if spec.ca_cert is not None:
        argv += ["--volume", f"{spec.ca_cert}:{VM_CA_PATH}:ro"]
    for host, address in sorted(spec.extra_hosts.items()):
        argv += ["--add-host", f"{check_container(host)}:{ipaddress.ip_address(address)}"]
    argv += _env(spec.env)
    argv += _labels(spec.labels)
    argv.append(check_ref(spec.image))
    return argv


def run_registry(
    name: str, image: str, network: str, host_port: int, volume: str, labels: Mapping[str, str]
) -> list[str]:
    return [
        DOCKER,
        "run",
        "--detach",
        "--name",
        check_container(name),
        "--network",
        check_container(network),
        "--network-alias",
        name,
        "--publish",
        f"127.0.0.1:{int(host_port)}:5000",
        "--volume",
        f"{check_container(volume)}:/var/lib/docker-registry",
        "--restart",
        "unless-stopped",
        *_labels(labels),
        check_ref(image),
    ]


@dataclass(frozen=True)
class DataSpec:
    """The fleet's data-services container (fleet/local/dataservices.py): a fixed address on the fleet
    network, its configuration (names, secrets, TLS) mounted read-only, no published port."""

    name: str
    image: str
    network: str
    address: str
    alias: str
    conf_dir: Path
    labels: Mapping[str, str] = field(default_factory=dict)


DATA_CONF_MOUNT = "/fleet/data"


def run_data(spec: DataSpec) -> list[str]:
    return [
        DOCKER,
        "run",
        "--detach",
        "--name",
        check_container(spec.name),
        "--hostname",
        check_container(spec.alias),
        "--network",
        check_container(spec.network),
        "--ip",
        str(ipaddress.ip_address(spec.address)),
        "--network-alias",
        check_container(spec.alias),
        "--volume",
        f"{spec.conf_dir}:{DATA_CONF_MOUNT}:ro",
        "--restart",
        "unless-stopped",
        "--stop-timeout",
        "20",
        *_labels(spec.labels),
        check_ref(spec.image),
    ]
