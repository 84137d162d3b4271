"""The Google services a local VM reaches, served on the fleet network's gateway (this machine).

A GCE VM reaches the metadata server at metadata.google.internal and Google's APIs over the network;
a local instance container reaches the same wire formats here, each from a stand-in:

    metadata.google.internal:80   standins/metadata_server.py  (who calls = which container, by address)
    <gateway>:storage_port        standins/storage.py          (fake-gcs-server: the release store, and
                                  the stack's file bucket: STORAGE_EMULATOR_HOST on the VMs)
    <gateway>:secretmanager_port  standins/secretmanager_api.py
    <gateway>:<port>              standins/compute_api.py      (a second front of the fleet's Compute)
    <gateway>:monitoring_port     standins/metrics_api.py      (timeSeries.create: the health metric;
                                  its gRPC front on 127.0.0.1, named in metrics.json, is what the
                                  local monitor reads the series from)
    logging.googleapis.com:443    standins/logging_api.py      (Cloud Logging over gRPC + TLS: what
                                  Docker's gcplogs driver writes to; the VM trusts the fleet's local CA)

They run inside the fleet's Compute endpoint process (fleet/local/compute_docker.py), which knows
the members, so the metadata server answers each container as its own instance and the guest
attributes it writes are what the Compute API's getGuestAttributes returns.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleet.local import template
from fleet.local.config import FILES_BUCKET, LocalConfig

if TYPE_CHECKING:
    from standins.compute_state import ComputeBackend
    from standins.logging_api import Tls
    from standins.metadata_server import GuestAttributes, Identity


MEMBERS_TTL = 5.0  # seconds a member list answers the metadata server (each request asks who calls)
LOGGING_HOST = "logging.googleapis.com"  # an instance's /etc/hosts sends it to the gateway
LOGGING_PORT = 443  # gRPC over TLS, as the gcplogs driver dials it (no endpoint option)


def logging_tls(config: LocalConfig) -> Tls:
    """The fleet's local CA and the certificate for logging.googleapis.com it signed (made once)."""
    from standins.logging_api import make_tls

    directory = config.state_dir / "tls"
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:  # the endpoint and instance creation may race
        fcntl.flock(lock, fcntl.LOCK_EX)
        return make_tls(directory, (LOGGING_HOST,))


def local_ca(config: LocalConfig) -> Path:
    """The CA certificate each instance mounts and trusts (images/vm/fleet-init)."""
    return logging_tls(config).ca_cert


METRICS_FILE = "metrics.json"  # {"grpc": "127.0.0.1:PORT"}: where the written series are read


def metrics_endpoint(state_dir: Path) -> str | None:
    """The gRPC endpoint (host:port) of a running fleet's metrics stand-in, from its record."""
    try:
        return str(json.loads((state_dir / METRICS_FILE).read_text())["grpc"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


class VmServices:
    """Start and stop the VM-facing stand-ins of one local fleet."""

    def __init__(self, config: LocalConfig, state_dir: Path, guest: GuestAttributes) -> None:
        self.config = config
        self.state_dir = state_dir
        self.guest = guest
        self.backend: Any = None  # fleet.local.compute_docker.DockerCompute (it imports this module)
        self._started: list[Any] = []
        self.compute_url = ""
        self._lock = threading.Lock()
        self._members: dict[str, Any] = {}  # container address -> fleet.local.instances.Instance
        self._seen_at = 0.0
        self._refreshing = False

        self.logging: Any = None  # standins.logging_api.LocalLogging once started

    def metadata_items(self) -> dict[str, str]:
        """The built-in template's metadata (a fleet whose infra was not applied)."""
        return template.metadata(self.config, self.compute_url)

    def endpoint_items(self) -> dict[str, str]:
        """What is laid over an instance template's metadata: the stand-ins' endpoints."""
        return template.endpoint_overrides(self.config, self.compute_url)

    def identify(self, address: str) -> Identity | None:
        """The instance whose container has `address` on the fleet network (GCE knows the caller)."""
        from standins.metadata_server import Identity

        backend = self.backend
        if backend is None:
            return None
        with self._lock:
            seen_at = self._seen_at
            fresh = time.monotonic() - seen_at < MEMBERS_TTL
            members = self._members
        known = members.get(address)
        if known is None or backend.changed_since(known.name, seen_at):
            # a new VM, or one recreated since the list was read (same name and often the same
            # address, but a new instance id that it must be told from its first request): ask Docker
            members = self._refresh(backend)
        elif not fresh:
            # a known VM is answered from the last list while Docker is asked again in the background:
            # Docker can stall for the length of another container's restart (tens of seconds), and
            # GCE's metadata server never keeps a VM waiting for that
            self._refresh_later(backend)
        rec = members.get(address)
        if rec is not None:
            project = backend.project(self.config.project)
            items = {i["key"]: i.get("value", "") for i in project["commonInstanceMetadata"].get("items", [])}
            # the instance template the VM was created from: its metadata, service account and scopes
            attributes, account, scopes = backend.instance_metadata(rec)
            return Identity(
                project_id=self.config.project,
                numeric_project_id=str(project["id"]),
                zone=self.config.zone,
                name=rec.name,
                id=rec.instance_id,
                attributes=attributes,
                project_attributes=items,
                service_account_email=account,
                **({"scopes": scopes} if scopes else {}),
            )
        return None

    def _refresh(self, backend: Any) -> dict[str, Any]:
        members = {rec.ip: rec for rec in backend.fleet.instances() if rec.ip}
        with self._lock:
            self._members, self._seen_at = members, time.monotonic()
        return members

    def _refresh_later(self, backend: Any) -> None:
        with self._lock:
            if self._refreshing:
                return
            self._refreshing = True

        def run() -> None:
            try:
                self._refresh(backend)
            except Exception:  # noqa: S110  the next request asks again
                pass
            finally:
                with self._lock:
                    self._refreshing = False

        threading.Thread(target=run, name="vm-members", daemon=True).start()

    def start(self, backend: ComputeBackend) -> VmServices:
        from standins.compute_api import ComputeApi
        from standins.logging_api import LocalLogging
        from standins.metadata_server import MetadataServer
        from standins.metrics_api import LocalMetrics
        from standins.secretmanager_api import LocalSecretManager
        from standins.storage import StorageServer

        self.backend = backend
        gateway = self.config.gateway
        try:
            compute = ComputeApi(backend, host=gateway).start()
            self._started.append(compute)
            self.compute_url = compute.url
            metadata = MetadataServer(
                self.identify, self.guest, gateway, 80, token_file=self.state_dir / "metadata-tokens.json"
            ).start()
            self._started.append(metadata)
            # a write must carry a token the metadata server issued (the VM's service account).
            # Only for a fleet whose containers log there: the sink is a gRPC server, and this process
            # forks docker commands all day (gRPC prints a warning at each fork while it serves)
            if self.config.log_driver == "gcplogs":
                self.logging = LocalLogging(
                    gateway,
                    LOGGING_PORT,
                    tls=logging_tls(self.config).server_pair(),
                    token_owner=metadata.token_owner,
                ).start()
                self._started.append(self.logging)
            self._started.append(
                LocalSecretManager(
                    port=self.config.secretmanager_port,
                    host=gateway,
                    state=self.state_dir / "secretmanager.json",
                ).start()
            )
            storage = StorageServer(
                self.state_dir / "storage",
                host=gateway,
                port=self.config.storage_port,
                log=self.state_dir / "storage.log",
            ).start()
            self._started.append(storage)
            storage.create_bucket(self.config.bucket)
            storage.create_bucket(FILES_BUCKET)  # the stack's files and plugin packages
            metrics = LocalMetrics(rest_host=gateway, rest_port=self.config.monitoring_port).start()
            self._started.append(metrics)
            record = self.state_dir / METRICS_FILE
            record.write_text(json.dumps({"grpc": metrics.endpoint, "rest": metrics.rest_url}))
        except Exception:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for service in reversed(self._started):
            with contextlib.suppress(Exception):
                service.stop()
        self._started.clear()
