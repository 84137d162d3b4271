"""The stand-ins keep no state on the VM's disk (images/standin/standin.py): the api stores an uploaded
file in the fleet's file bucket, and the plugin daemon the plugin packages the api hands it in the bucket
PLUGIN_STORAGE_* names, over the Cloud Storage JSON API at STORAGE_EMULATOR_HOST. Against the real
storage stand-in (fake-gcs-server, standins/storage.py), no fleet: two "VMs" (an api and a plugin daemon
each) share one bucket, and what one of them stored the other one reads."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from standins.storage import StorageServer
from tests.fixtures.standin import STANDIN

KEY = "plugin-daemon-key-5t"
TENANT = "standin-tenant"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Vm:
    """One VM's api and plugin daemon, as the stand-ins run in the compose stack."""

    api: int
    daemon: int
    log: Path

    def call(
        self, method: str, path: str, body: bytes | None = None, port: int | None = None
    ) -> tuple[int, Any]:
        url = f"http://127.0.0.1:{port or self.api}{path}"
        req = urllib.request.Request(url, data=body, method=method)
        try:
            with urllib.request.urlopen(req, timeout=20) as resp:
                raw, ctype = resp.read(), resp.headers.get("Content-Type", "")
                return resp.status, json.loads(raw) if ctype.startswith("application/json") else raw
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())


@contextlib.contextmanager
def running(env: dict[str, str], port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "HOME")}
    full = {
        **keep,
        "PYTHONDONTWRITEBYTECODE": "1",
        "STANDIN_VERSION": "1.1.0",
        "STANDIN_PORT": str(port),
        **env,
    }
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, str(STANDIN)], env=full, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            assert proc.poll() is None, log.read_text()
            time.sleep(0.05)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)


@contextlib.contextmanager
def vm(tmp_path: Path, name: str, storage: dict[str, str], **daemon_env: str) -> Iterator[Vm]:
    api, daemon = free_port(), free_port()
    log = tmp_path / f"{name}.log"
    common = {k: v for k, v in storage.items() if k == "STORAGE_EMULATOR_HOST"}
    plugin = {
        "STANDIN_ROLE": "plugin_daemon",
        "SERVER_KEY": KEY,
        "PLUGIN_STORAGE_TYPE": "gcs",
        "PLUGIN_STORAGE_OSS_BUCKET": storage.get("GOOGLE_STORAGE_BUCKET_NAME", ""),
        "PLUGIN_STORAGE_LOCAL_ROOT": str(tmp_path / name / "storage"),
        **common,
        **daemon_env,
    }
    app = {"STANDIN_ROLE": "api", "MODE": "api", "PLUGIN_DAEMON_URL": f"http://127.0.0.1:{daemon}"}
    app |= {"PLUGIN_DAEMON_KEY": KEY, **storage}
    with running(plugin, daemon, log), running(app, api, log):
        yield Vm(api, daemon, log)


def read_object(server: StorageServer, bucket: str, name: str) -> bytes:
    url = f"{server.endpoint}/storage/v1/b/{bucket}/o/{urllib.parse.quote(name, safe='')}?alt=media"
    with urllib.request.urlopen(url, timeout=10) as resp:
        return bytes(resp.read())


def test_a_file_uploaded_through_one_vm_is_in_the_bucket_and_read_through_another(
    gcs_server: StorageServer, gcs_bucket: str, tmp_path: Path
) -> None:
    storage = {"STORAGE_EMULATOR_HOST": gcs_server.endpoint, "GOOGLE_STORAGE_BUCKET_NAME": gcs_bucket}
    data = os.urandom(70_000)
    with vm(tmp_path, "vm1", storage) as one, vm(tmp_path, "vm2", storage) as two:
        code, meta = one.call("POST", "/console/api/files/upload", data)
        assert code == 201, meta
        assert meta["size"] == len(data) and meta["sha256"] == hashlib.sha256(data).hexdigest()
        assert meta["key"] == f"upload_files/{TENANT}/{meta['id']}"
        assert read_object(gcs_server, gcs_bucket, meta["key"]) == data  # really in the bucket
        assert two.call("GET", f"/console/api/files/{meta['id']}") == (200, data)
        code, missing = two.call("GET", "/console/api/files/" + "0" * 32)
        assert code == 404 and missing["code"] == "file_not_found"


def test_a_plugin_package_installed_through_one_vm_is_in_the_bucket_for_every_vm(
    gcs_server: StorageServer, gcs_bucket: str, tmp_path: Path
) -> None:
    storage = {"STORAGE_EMULATOR_HOST": gcs_server.endpoint, "GOOGLE_STORAGE_BUCKET_NAME": gcs_bucket}
    package = b"PK\x03\x04 a .difypkg " + os.urandom(5_000)
    digest = hashlib.sha256(package).hexdigest()
    with vm(tmp_path, "vm1", storage) as one, vm(tmp_path, "vm2", storage) as two:
        code, reply = one.call("POST", "/console/api/workspaces/current/plugin/upload/pkg", package)
        assert code == 200 and reply["code"] == 0, reply
        assert reply["data"]["id"] == digest and reply["data"]["storage"] == "gcs"
        assert reply["data"]["location"] == f"gs://{gcs_bucket}/plugin_packages/{digest}"
        assert read_object(gcs_server, gcs_bucket, f"plugin_packages/{digest}") == package
        # the other VM's api asks its own plugin daemon, which finds it in the bucket
        assert two.call("GET", f"/console/api/workspaces/current/plugin/pkg/{digest}") == (200, package)
        assert not (tmp_path / "vm1" / "storage").exists()  # nothing on the VM's disk
        # the daemon answers only its SERVER_KEY (the api sends PLUGIN_DAEMON_KEY)
        path = f"/plugin/{TENANT}/management/package/{digest}"
        code, refused = two.call("GET", path, port=two.daemon)
        assert code == 401 and "SERVER_KEY" in refused["message"]


def test_local_plugin_storage_stays_on_the_vm(
    gcs_server: StorageServer, gcs_bucket: str, tmp_path: Path
) -> None:
    storage = {"STORAGE_EMULATOR_HOST": gcs_server.endpoint, "GOOGLE_STORAGE_BUCKET_NAME": gcs_bucket}
    package = b"local package " + os.urandom(100)
    digest = hashlib.sha256(package).hexdigest()
    with (
        vm(tmp_path, "vm1", storage, PLUGIN_STORAGE_TYPE="local") as one,
        vm(tmp_path, "vm2", storage, PLUGIN_STORAGE_TYPE="local") as two,
    ):
        code, reply = one.call("POST", "/console/api/workspaces/current/plugin/upload/pkg", package)
        assert code == 200 and reply["data"]["storage"] == "local", reply
        assert (tmp_path / "vm1" / "storage" / "plugin_packages" / digest).read_bytes() == package
        code, _ = two.call("GET", f"/console/api/workspaces/current/plugin/pkg/{digest}")
        assert code == 404  # the other VM does not have it: what PLUGIN_STORAGE_TYPE=gcs is for


def test_without_a_storage_endpoint_uploads_fail_and_say_why(tmp_path: Path) -> None:
    with vm(tmp_path, "vm1", {"GOOGLE_STORAGE_BUCKET_NAME": "files"}) as one:
        code, reply = one.call("POST", "/console/api/files/upload", b"x")
        assert code == 503 and "no STORAGE_EMULATOR_HOST" in reply["message"]
        code, reply = one.call("POST", "/console/api/workspaces/current/plugin/upload/pkg", b"y")
        assert code == 503 and "no STORAGE_EMULATOR_HOST" in reply["message"]
        assert one.call("GET", "/health")[0] == 200  # storage is not the api's health
