"""The local fleet's "VMs": one container each, with sshd and its own Docker engine.

Docker is the source of truth for which instances exist (containers labelled with their index);
every change rewrites `inventory/local/` and updates the LB, and touches no other instance.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import secrets
import socket
import subprocess
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fleet.errors import FleetError
from fleet.local import dockercmd, execute, inventory_writer, registry, vmservices
from fleet.local.config import LocalConfig
from fleet.local.lb import LbServer, LoadBalancer
from fleet.local.progress import Progress, Quiet
from fleet.local.vmservices import LOGGING_HOST
from fleet.waits import Deadline, polling

INDEX_LABEL = "fleet.local.instance"
TEMPLATE_LABEL = "fleet.local.template"  # the instance template the MIG made the instance from
OWNER_LABEL = "fleet.local.owner"  # the state directory of the checkout whose fleet made the instance
DISK_LABEL = "fleet.local.disk"  # on an instance's Docker disk (volume): the fleet's container prefix
DISK_MOUNT = "/var/lib/docker"
KEYS_ENV = "FLEET_SSH_AUTHORIZED_KEYS"  # the deploy key the instance authorizes (set at creation)
READY_SCRIPT = "test -e /run/fleet/ready && cat /etc/ssh/ssh_host_ed25519_key.pub"
TARBALL_IN_INSTANCE = "/var/lib/fleet/images"


@dataclass
class Instance:
    """One instance as the tool sees it (docker state + what the inventory says)."""

    index: int
    name: str  # inventory host name, e.g. local-1 (also its GCE-style instance name)
    container: str  # e.g. fleet-local-1
    container_id: str
    ssh_port: int
    http_port: int
    state: str  # docker's: running, exited, created, restarting, paused, dead
    host_key: str  # "ssh-ed25519 AAAA..." read from inside the instance
    instance_id: str  # stable numeric id (changes when the instance is recreated, as on GCE)
    ip: str = ""
    created: str = ""
    started: str = ""  # docker's State.StartedAt: the last boot (a reset reboots: same instance, new boot)
    roles: list[str] = field(default_factory=list)
    template: str = ""  # URL of the instance template it was created from ("" = the built-in one)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def instance_id_of(container_id: str) -> str:
    """A GCE-like numeric id derived from the container id: stable for the container's life."""
    return str(int(container_id[:15], 16))


def port_free(port: int) -> bool:
    """Can a listener bind it? (SO_REUSEADDR like docker-proxy: old connections in TIME_WAIT don't count.)"""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def ssh_banner(port: int, timeout: float = 2.0) -> bool:
    """sshd answers through the published port (what every client will use)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            return sock.recv(64).startswith(b"SSH-2.0-")
    except OSError:
        return False


def _published(info: dict[str, Any], container_port: str) -> int:
    bindings = (info.get("HostConfig") or {}).get("PortBindings") or {}
    entries = bindings.get(container_port) or []
    return int(entries[0]["HostPort"]) if entries else 0


class LocalFleet:
    """Create, change and inspect the local fleet. Mutations are serialised across processes."""

    def __init__(self, config: LocalConfig | None = None, progress: Progress | None = None) -> None:
        self.config = config or LocalConfig.from_env()
        self.progress = progress or Quiet()
        self.lb = LoadBalancer(self.config)
        self._thread_lock = threading.RLock()
        self._depth = 0

    # ---------------------------------------------------------------- paths
    @property
    def inventory_dir(self) -> Path:
        return self.config.inventory_dir

    @property
    def known_hosts(self) -> Path:
        return self.config.inventory_dir / "known_hosts"

    @property
    def key_file(self) -> Path:
        return self.config.inventory_dir / inventory_writer.KEY_FILE

    @property
    def _state_path(self) -> Path:
        return self.config.state_dir / "state.json"

    # ---------------------------------------------------------------- locking and state cache
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._thread_lock:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            self.config.state_dir.mkdir(parents=True, exist_ok=True)
            with open(self.config.state_dir / "fleet.rollout.lock", "w") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                self._depth = 1
                try:
                    yield
                finally:
                    self._depth = 0

    def _load_keys(self) -> dict[str, str]:
        """Host keys by container id (a cache: keys are re-read from an instance when missing)."""
        try:
            data = json.loads(self._state_path.read_text())
            return {str(k): str(v) for k, v in data.get("host_keys", {}).items()}
        except (OSError, ValueError, AttributeError):
            return {}

    def _save_keys(self, keys: dict[str, str]) -> None:
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self._state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"version": 1, "host_keys": keys}, indent=2, sort_keys=True))
        tmp.replace(self._state_path)

    # ---------------------------------------------------------------- docker views
    def _inspect(self) -> dict[int, dict[str, Any]]:
        """Instance containers by index, as `docker inspect` reports them."""
        names = [n for n in execute.run(dockercmd.list_containers(INDEX_LABEL)).stdout.split() if n]
        if not names:
            return {}
        proc = execute.run(dockercmd.inspect_containers(names), check=False)
        out: dict[int, dict[str, Any]] = {}
        for info in json.loads(proc.stdout or "[]"):
            labels = (info.get("Config") or {}).get("Labels") or {}
            if labels.get("fleet.local.prefix", self.config.container_prefix) != self.config.container_prefix:
                continue
            try:
                out[int(labels[INDEX_LABEL])] = info
            except (KeyError, ValueError):
                continue
        return out

    def _record(self, index: int, info: dict[str, Any], keys: dict[str, str]) -> Instance:
        cid = info["Id"]
        networks = (info.get("NetworkSettings") or {}).get("Networks") or {}
        return Instance(
            index=index,
            name=self.config.host_name(index),
            container=info["Name"].lstrip("/"),
            container_id=cid,
            ssh_port=_published(info, "22/tcp"),
            http_port=_published(info, "80/tcp"),
            state=info["State"]["Status"],
            host_key=keys.get(cid, ""),
            instance_id=instance_id_of(cid),
            ip=(networks.get(self.config.network) or {}).get("IPAddress", ""),
            created=info.get("Created", ""),
            started=(info.get("State") or {}).get("StartedAt", ""),
            template=((info.get("Config") or {}).get("Labels") or {}).get(TEMPLATE_LABEL, ""),
        )

    def instances(self) -> list[Instance]:
        """Every instance that exists (running or not), lowest index first; roles assigned."""
        keys = self._load_keys()
        records = [self._record(i, info, keys) for i, info in sorted(self._inspect().items())]
        for n, rec in enumerate(records):
            rec.roles = ["app", "beat"] if n == 0 else ["app"]
        return records

    def instance(self, name: str) -> Instance:
        index = self.config.index_of(name)
        for rec in self.instances():
            if rec.index == index:
                return rec
        raise FleetError(
            f"no local instance {self.config.host_name(index)}",
            where="local fleet",
            hint="`fab local.status` lists the instances",
        )

    # ---------------------------------------------------------------- building blocks
    def _ports(self, index: int, prefer: tuple[int, int] | None = None) -> tuple[int, int]:
        """local-N -> (ssh_base+N, http_base+N); a taken port moves up by 100 until free."""
        if prefer is not None and all(port_free(p) for p in prefer):
            return prefer
        for step in range(0, 2000, 100):
            ssh, http = self.config.ssh_base + index + step, self.config.http_base + index + step
            if ssh <= 65535 and http <= 65535 and port_free(ssh) and port_free(http):
                return ssh, http
        raise FleetError(
            f"no free port pair for instance {index}",
            where="127.0.0.1",
            hint="set FLEET_LOCAL_SSH_BASE / FLEET_LOCAL_HTTP_BASE to a free range",
        )

    def _spec(
        self, index: int, pubkey: str, ports: tuple[int, int] | None = None, template: str = ""
    ) -> dockercmd.InstanceSpec:
        from fleet.local.images import fleet_vm_ref

        ssh, http = self._ports(index, ports)
        name = self.config.container_name(index)
        return dockercmd.InstanceSpec(
            name=name,
            hostname=self.config.host_name(index),
            image=fleet_vm_ref(self.config),
            network=self.config.network,
            ssh_port=ssh,
            http_port=http,
            # a new name for every disk: a removed instance's disk is deleted in the background
            # (several seconds of files), and the next instance of that name need not wait for it
            docker_volume=f"{name}-docker-{secrets.token_hex(4)}",
            tarball_dir=self.config.tarball_dir,
            env={KEYS_ENV: pubkey},
            # as on GCE: the metadata server and Cloud Logging (gcplogs) by their names, here the
            # fleet network's gateway where fleet/local/vmservices.py serves them
            extra_hosts={"metadata.google.internal": self.config.gateway, LOGGING_HOST: self.config.gateway},
            ca_cert=vmservices.local_ca(self.config),
            labels={
                **self.config.labels,
                INDEX_LABEL: str(index),
                "fleet.local.prefix": self.config.container_prefix,
                "fleet.local.host": self.config.host_name(index),
                OWNER_LABEL: str(self.config.state_dir),
                **({TEMPLATE_LABEL: template} if template else {}),
            },
        )

    def _create(
        self, index: int, pubkey: str, ports: tuple[int, int] | None = None, template: str = ""
    ) -> None:
        spec = self._spec(index, pubkey, ports, template)
        self.config.tarball_dir.mkdir(parents=True, exist_ok=True)
        execute.run(dockercmd.volume_create(spec.docker_volume, self._disk_labels), timeout=60)
        proc = execute.run(dockercmd.run_instance(spec), check=False, timeout=120)
        if proc.returncode != 0:
            execute.run(dockercmd.rm_force([spec.name]), check=False)
            self._discard_disks([spec.docker_volume])
            raise execute.CommandError(
                dockercmd.run_instance(spec),
                proc.returncode,
                proc.stderr,
                hint="a port may have been taken meanwhile; retry, or move the port ranges",
            )

    def _foreign(self, info: dict[str, Any], pubkey: str) -> str:
        """Why an instance container with this fleet's name is not this checkout's to adopt ("" when
        it is): made by another checkout, or authorizing another deploy key than the inventory's."""
        config = info.get("Config") or {}
        owner = (config.get("Labels") or {}).get(OWNER_LABEL)
        if owner is not None and owner != str(self.config.state_dir):
            return f"made by the fleet in {owner}"
        keys = next((e.split("=", 1)[1] for e in config.get("Env") or [] if e.startswith(KEYS_ENV + "=")), "")
        if keys.strip() != pubkey.strip():
            return f"authorizes another deploy key than {self.key_file}"
        return ""

    def _destroy(self, index: int) -> None:
        self._destroy_many([index])

    def _destroy_many(self, indices: Sequence[int]) -> None:
        """Remove these instance containers now; their disks go in the background."""
        names = [self.config.container_name(i) for i in indices]
        if not names:
            return
        proc = execute.run(dockercmd.inspect_containers(names), check=False)
        disks = [f"{n}-docker" for n in names]  # the fixed name instances had before
        for info in json.loads(proc.stdout or "[]"):
            mounts = info.get("Mounts") or []
            disks += [m["Name"] for m in mounts if m.get("Destination") == DISK_MOUNT and m.get("Name")]
        execute.run(dockercmd.rm_force(names), check=False, timeout=180)
        self._discard_disks(disks)

    @property
    def _disk_labels(self) -> dict[str, str]:
        return {**self.config.labels, DISK_LABEL: self.config.container_prefix}

    def _discard_disks(self, names: Sequence[str]) -> None:
        """Delete these disks (volumes no container uses any more) in a process of their own: deleting
        an instance's Docker disk takes ~6 s of file removal, which no caller needs to wait for. Disks
        a killed deletion left behind are found again by `_leftover_disks`."""
        if not names:
            return
        self.config.fleet_dir.mkdir(parents=True, exist_ok=True)
        log = str(self.config.fleet_dir / "disks.log")
        execute.spawn_detached(dockercmd.volume_rm(sorted(set(names))), log)

    def _leftover_disks(self) -> list[str]:
        """This fleet's disks that no instance uses (a deletion that was killed, a crash)."""
        label = f"{DISK_LABEL}={self.config.container_prefix}"
        return [n for n in execute.run(dockercmd.dangling_volumes(label), check=False).stdout.split() if n]

    def _wait_ready(self, indices: Sequence[int], timeout: float = 90.0) -> dict[int, str]:
        """Wait until each instance's sshd and inner dockerd answer; returns their host keys."""

        def one(index: int) -> str:
            name = self.config.container_name(index)
            argv = dockercmd.exec_sh(name, READY_SCRIPT)
            deadline = Deadline(timeout)
            key = ""
            for _ in polling(deadline, 0.15):
                proc = execute.run(argv, check=False, timeout=30)
                if proc.returncode == 0 and proc.stdout.startswith("ssh-ed25519 "):
                    key = " ".join(proc.stdout.split()[:2])
                    break
            port = _published(
                json.loads(execute.run(dockercmd.inspect_containers([name])).stdout)[0], "22/tcp"
            )
            if key:
                for _ in polling(deadline, 0.1):
                    if ssh_banner(port):
                        return key
            logs = execute.run([dockercmd.DOCKER, "logs", "--tail", "20", name], check=False)
            tail = logs.stdout + logs.stderr
            raise FleetError(
                f"instance not ready after {timeout:.0f} s (sshd + inner dockerd)\n{tail}",
                where=name,
                hint=f"docker exec {name} tail /var/log/dockerd.log /var/log/sshd.log",
            )

        with ThreadPoolExecutor(max(1, min(8, len(indices)))) as pool:
            return dict(zip(indices, pool.map(one, indices), strict=True))

    def _publish(self, fresh_keys: dict[int, str] | None = None) -> list[Instance]:
        """Record keys, rewrite the inventory and LB membership from what exists now."""
        infos = self._inspect()
        keys = self._load_keys()
        for index, key in (fresh_keys or {}).items():
            if index in infos:
                keys[infos[index]["Id"]] = key
        missing = [
            i for i, info in infos.items() if info["Id"] not in keys and info["State"]["Status"] == "running"
        ]
        if missing:
            for index, key in self._wait_ready(missing).items():
                keys[infos[index]["Id"]] = key
        keys = {cid: k for cid, k in keys.items() if any(info["Id"] == cid for info in infos.values())}
        self._save_keys(keys)
        records = self.instances()
        entries = [
            inventory_writer.HostEntry(
                r.name, r.ssh_port, r.http_port, r.instance_id, r.host_key, tuple(r.roles)
            )
            for r in records
            if r.host_key
        ]
        from fleet.local import compute_endpoint

        inventory_writer.write(
            self.config, entries, compute_endpoint=compute_endpoint.endpoint_url(self.config)
        )
        self.lb.sync([LbServer(r.name, r.http_port) for r in records])
        return records

    def _prepare(self, build: bool) -> str:
        """Engine, images (cached), registry and network; returns the deploy public key."""
        from fleet.local import images
        from fleet.local.engine import ensure_engine

        ensure_engine(self.config)
        if build:
            images.build_all(self.config, self.progress)
        else:
            registry.ensure_running(self.config, images.REGISTRY_IMAGE)
            images.pin_vm_image(self.config, only_if_missing=True)
        registry.ensure_network(self.config)
        return inventory_writer.ensure_client_key(self.config)

    # ---------------------------------------------------------------- operations
    def up(self, n: int = 3, *, build: bool = True, shrink: bool = True) -> list[Instance]:
        """Bring the fleet to exactly `n` running instances; returns when sshd and dockerd answer.

        With `shrink=False` instances beyond `n` are kept (another user of the fleet may own them).
        """
        if not isinstance(n, int) or not 1 <= n <= 200:
            raise FleetError(f"instances must be 1..200, got {n!r}", where="local.up")
        with self._locked():
            pubkey = self._prepare(build)
            self._data_services()
            # the fleet's Compute side first, made by infra.apply: new members come from its template
            self.start_compute(size=n)
            template = self._mig_template()
            self._discard_disks(self._leftover_disks())
            existing = self._inspect()
            foreign = {i: why for i, info in existing.items() if (why := self._foreign(info, pubkey))}
            if foreign:
                # same container names, another owner: adopting them would give an inventory whose key
                # they refuse (CI: "authentication failed" on every host of a fleet left by an earlier run)
                with self.progress.step(
                    f"replace {len(foreign)} instance(s) this fleet cannot adopt: "
                    + "; ".join(f"{self.config.host_name(i)}: {why}" for i, why in sorted(foreign.items()))
                ):
                    self._destroy_many(sorted(foreign))
                    for index in foreign:
                        del existing[index]
            extra = sorted(existing)[n:] if shrink else []
            keep = sorted(existing)[:n]
            for index in extra:
                self.lb.start()
                with contextlib.suppress(FleetError):
                    self.lb.remove(self.config.host_name(index))
                self._destroy(index)
            stopped = [i for i in keep if existing[i]["State"]["Status"] != "running"]
            free = [i for i in range(1, 1000) if i not in existing][: n - len(keep)]
            with self.progress.step(f"start {len(free)} new and {len(stopped)} stopped instance(s)"):
                for index in stopped:
                    execute.run(dockercmd.start(self.config.container_name(index)), timeout=60)
                if free:
                    with ThreadPoolExecutor(min(4, len(free))) as pool:
                        list(pool.map(lambda i: self._create(i, pubkey, template=template), free))
            with self.progress.step(f"wait for sshd and dockerd in {n} instance(s)"):
                keys = self._wait_ready([*keep, *free])
            records = self._publish(keys)
            booted = [self.config.host_name(i) for i in (*stopped, *free)]
            if booted:
                # as the MIG's VMs do at every boot: the template's startup script, i.e. the agent
                # (bootstraps; and serves the fleet's desired release when one was published)
                with self.progress.step(f"startup script in {len(booted)} instance(s)"):
                    self._startup(booted)
            return records

    def _data_services(self) -> str:
        """The fleet's PostgreSQL + pgvector and Redis (fleet/local/dataservices.py), once per fleet:
        created, or adopted when this fleet made it with the same passwords, certificate and image."""
        from fleet.local import dataservices, images

        refs = inventory_writer.ensure_secrets(self.config, dataservices.SECRETS)
        files = {name: self.config.inventory_dir / ref["file"] for name, ref in refs.items()}
        with self.progress.step("data services (PostgreSQL 17 + pgvector, Redis)"):
            done = dataservices.ensure(self.config, files, images.DATA_IMAGE)
            self.progress.note(f"{dataservices.container_name(self.config)}: {done}")
        return done

    def _startup(self, names: Sequence[str]) -> None:
        from fleet.local import template

        errors: list[str] = []

        def one(name: str) -> None:
            try:
                template.run_startup_script(self, name, lambda _line: None)
            except FleetError as exc:
                errors.append(exc.render())

        with ThreadPoolExecutor(min(4, len(names))) as pool:
            list(pool.map(one, names))
        if errors:
            raise FleetError(
                "startup script failed in " + "; ".join(errors),
                where="local fleet",
                hint="the instances exist; `fab status --no-ssh` shows what their agents report",
            )

    def start_compute(self, size: int | None = None) -> str:
        """The fleet's Compute endpoint (fleet/local/compute_docker.py), started unless it runs, and its
        Compute side applied with `infra.apply` (fleet/local/infrasetup.py); its URL. The LB takes the
        backend service's settings as read back from the endpoint."""
        from fleet.local import compute_endpoint, infrasetup, storesetup

        with self.progress.step("compute endpoint"):
            url = compute_endpoint.ensure_endpoint(self.config)
        with self.progress.step("infra.apply (instance template, health checks, MIG, backend service)"):
            infrasetup.apply(self.config, size if size is not None else max(1, len(self._inspect())))
            self.lb.configure(infrasetup.backend_config(self.config))
        with self.progress.step("agent in the release store"):
            storesetup.publish_agent(self.config)
        return url

    def _mig_template(self) -> str:
        from fleet.local import infrasetup

        return infrasetup.mig_template(self.config)

    def add_instance(self) -> Instance:
        """One more instance at the lowest free index; the others are not touched."""
        with self._locked():
            pubkey = self._prepare(build=False)
            existing = self._inspect()
            index = next(i for i in range(1, 10000) if i not in existing)
            self._create(index, pubkey, template=self._mig_template())
            keys = self._wait_ready([index])
            return self._by_index(self._publish(keys), index)

    def add_instances(self, indices: Sequence[int], template: str = "") -> list[Instance]:
        """Instances at exactly these free numbers, created in parallel (the local MIG's resize)."""
        wanted = sorted(set(indices))
        if not wanted or any(not isinstance(i, int) or i < 1 for i in wanted):
            raise FleetError(f"invalid instance numbers {list(indices)!r}", where="local fleet")
        with self._locked():
            pubkey = self._prepare(build=False)
            taken = [self.config.host_name(i) for i in wanted if i in self._inspect()]
            if taken:
                raise FleetError(f"instance(s) {', '.join(taken)} already exist", where="local fleet")
            with ThreadPoolExecutor(min(4, len(wanted))) as pool:
                list(pool.map(lambda i: self._create(i, pubkey, template=template), wanted))
            records = self._publish(self._wait_ready(wanted))
            return [self._by_index(records, i) for i in wanted]

    def remove_instance(self, name: str) -> None:
        """Take one instance out of the LB, then delete it and its disk."""
        index = self.config.index_of(name)
        with self._locked():
            self.instance(name)  # clear error when it does not exist
            if self.lb.running() and self.config.host_name(index) in self.lb.servers():
                self.lb.remove(self.config.host_name(index))
            self._destroy(index)
            self._publish()

    def recreate_instance(self, name: str, template: str | None = None) -> Instance:
        """A new container (new disk, NEW host key) with the same name and ports, like a MIG recreate,
        from `template` (the MIG's current one; default: the one the old instance was made from)."""
        index = self.config.index_of(name)
        with self._locked():
            old = self.instance(name)
            pubkey = inventory_writer.ensure_client_key(self.config)
            self._destroy(index)
            self._create(
                index, pubkey, (old.ssh_port, old.http_port), old.template if template is None else template
            )
            keys = self._wait_ready([index])
            return self._by_index(self._publish(keys), index)

    def restart_instance(self, name: str) -> Instance:
        """`docker restart`: a clean reboot (same disk and host key); returns when ready again."""
        index = self.config.index_of(name)
        with self._locked():
            self.instance(name)
            execute.run(dockercmd.restart(self.config.container_name(index), timeout=20), timeout=120)
            keys = self._wait_ready([index])
            return self._by_index(self._publish(keys), index)

    def stop_instance(self, name: str) -> Instance:
        """Power off (the container stays, like a TERMINATED VM; the LB will mark it DOWN)."""
        index = self.config.index_of(name)
        with self._locked():
            self.instance(name)
            execute.run(dockercmd.stop(self.config.container_name(index), timeout=20), timeout=120)
            return self._by_index(self._publish(), index)

    def start_instance(self, name: str) -> Instance:
        index = self.config.index_of(name)
        with self._locked():
            self.instance(name)
            execute.run(dockercmd.start(self.config.container_name(index)), timeout=60)
            keys = self._wait_ready([index])
            return self._by_index(self._publish(keys), index)

    def refresh(self) -> list[Instance]:
        """Rewrite inventory/local/ and the LB membership from what exists (after a manual change)."""
        with self._locked():
            return self._publish()

    def down(self) -> None:
        """Remove every instance, the LB, the Compute endpoint (its labels and metadata go too), the
        registry container (its data stays) and the network.

        The registry container stays while another fleet's instances exist (it is shared). A stopped
        Docker engine is started first: the fleet's containers, disks and network outlive it, and a
        later `up` would otherwise find them."""
        import shutil

        from fleet.local import compute_endpoint, dataservices
        from fleet.local.engine import ensure_engine

        compute_endpoint.stop_endpoint(self.config)
        if shutil.which("docker") is None:  # no engine was ever here: nothing of the fleet in Docker
            inventory_writer.remove(self.config)
            self._state_path.unlink(missing_ok=True)
            return
        ensure_engine(self.config)
        with self._locked():
            self._destroy_many(sorted(self._inspect()))
            self._discard_disks(self._leftover_disks())
            dataservices.remove(self.config)
            self.lb.stop()
            self.lb.backend_path.unlink(missing_ok=True)  # the backend service went with the endpoint
            others = [n for n in execute.run(dockercmd.list_containers(INDEX_LABEL)).stdout.split() if n]
            if others:  # another fleet (e.g. the benchmark's) still pulls from the registry
                registry.detach(self.config)
            else:
                registry.remove(self.config)
            execute.run(dockercmd.network_rm(self.config.network), check=False)
            inventory_writer.remove(self.config)
            self._state_path.unlink(missing_ok=True)

    def _by_index(self, records: list[Instance], index: int) -> Instance:
        for rec in records:
            if rec.index == index:
                return rec
        raise FleetError(f"instance {index} vanished", where="local fleet")

    # ---------------------------------------------------------------- inside instances
    def exec(
        self,
        name: str,
        argv: Sequence[str],
        *,
        user: str | None = None,
        check: bool = True,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """Run argv inside an instance through docker (a console, not SSH: for setup and tests)."""
        container = self.config.container_name(self.config.index_of(name))
        return execute.run(dockercmd.exec_(container, argv, user=user), check=check, timeout=timeout)

    def load_images(self, names: Sequence[str] | None = None) -> None:
        """`docker load` the stand-in tarball inside instances (fast path where pull is not under test)."""
        from fleet.local.images import TARBALL

        targets = (
            [self.config.host_name(self.config.index_of(n)) for n in names]
            if names
            else [r.name for r in self.instances() if r.state == "running"]
        )
        path = f"{TARBALL_IN_INSTANCE}/{TARBALL}"
        with ThreadPoolExecutor(max(1, min(4, len(targets)))) as pool:
            list(
                pool.map(
                    lambda n: self.exec(n, ["docker", "load", "--quiet", "--input", path], timeout=300),
                    targets,
                )
            )

    def status(self) -> dict[str, Any]:
        """Instances with the LB's view of each, plus LB, registry and data services (for `local.status`)."""
        from fleet.local import dataservices

        records = self.instances()
        servers = self.lb.servers() if self.lb.running() else {}
        reg = registry.container_state(self.config)
        return {
            "instances": [
                {**r.to_dict(), "lb": servers[r.name].raw if r.name in servers else None} for r in records
            ],
            "lb": {
                "running": self.lb.running(),
                "frontend": self.lb.frontend,
                "stats_socket": str(self.config.stats_socket),
                "servers": {name: s.raw for name, s in servers.items()},
            },
            "registry": {
                "running": bool(reg and reg["status"] == "running"),
                "ref": self.config.registry_ref,
            },
            "compute": self.compute_status(),
            "data": dataservices.status(self.config),
            "inventory": str(self.config.inventory_dir),
        }

    def compute_status(self) -> dict[str, Any]:
        """The Compute endpoint: URL, whether it answers, the MIG it serves (docs/gce.md)."""
        from fleet.local import compute_endpoint

        running = compute_endpoint.running_endpoint(self.config)
        return {
            "running": running is not None,
            "url": compute_endpoint.endpoint_url(self.config),
            "mig": f"{self.config.project}/{self.config.zone}/{compute_endpoint.mig_name(self.config)}",
        }
