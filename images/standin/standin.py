#!/usr/bin/python3
"""Stand-in for one service of the dify stack, small enough to build locally in a second.

STANDIN_ROLE picks the service: api (MODE=api|worker|beat, as upstream dify-api), web, sandbox,
plugin_daemon; `standin.py exec -- CMD...` wraps a real daemon (nginx, squid) with the same knobs.
Fault knobs: STANDIN_START_DELAY (s before health turns 200), STANDIN_UNHEALTHY=1 (health 503
forever), STANDIN_CRASH_AFTER (s, then exit 1), and a file DISK_FAULT in the api's storage volume
(health 503 while it exists: data on the VM's disk that no restart or redeploy repairs, only a new
disk). SIGTERM stops promptly: PID 1 must handle it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import signal
import socket
import ssl
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROLE = os.environ.get("STANDIN_ROLE", "api")
VERSION = os.environ.get("STANDIN_VERSION", "0.0.0")
BROKEN = os.environ.get("STANDIN_BROKEN", "") == "1"  # baked into dify-api:*-broken
PORTS = {"api": 5001, "web": 3000, "sandbox": 8194, "plugin_daemon": 5002}
HEALTH_PATHS = {"api": {"/health"}, "sandbox": {"/health"}, "plugin_daemon": {"/health/check"}}
API_PREFIXES = ("/console/api", "/api", "/v1", "/files", "/mcp", "/triggers")
STARTED = time.monotonic()
STOP = threading.Event()
NAME = os.environ.get("MODE", "api") if ROLE == "api" else ROLE  # api, worker or beat for dify-api


def log(text: str) -> None:
    print(f"{NAME}[{VERSION}]: {text}", flush=True)


def seconds(name: str) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        log(f"ignoring {name}={raw!r}: not a number of seconds")
        return 0.0
    return max(value, 0.0)


START_DELAY = seconds("STANDIN_START_DELAY")
CRASH_AFTER = seconds("STANDIN_CRASH_AFTER")
UNHEALTHY = os.environ.get("STANDIN_UNHEALTHY", "") == "1"


# --------------------------------------------------------------------------- the data layer's protocols
# Spoken directly (stdlib only): PostgreSQL's frontend/backend protocol v3 (startup, SCRAM-SHA-256 or md5
# password, the simple query protocol, TLS by SSLRequest as libpq's sslmode says) and Redis' RESP2 (AUTH,
# TLS). The images stay one Python file on the base (no apt layer), and the suite tests this very file
# against real postgres and redis-server processes.


class DataError(Exception):
    """A data service could not be reached or refused: the text says which and why."""


def _tls_context(verify: bool, ca_file: str, check_hostname: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    if verify:
        if ca_file:
            ctx.load_verify_locations(ca_file)
        else:
            ctx.load_default_certs()
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.check_hostname = check_hostname
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        chunk = sock.recv(n)
        if not chunk:
            raise DataError("connection closed by the server")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


class Postgres:
    """One connection; `query` runs SQL through the simple query protocol and returns text rows."""

    def __init__(
        self,
        host: str,
        port: int,
        user: str,
        password: str,
        database: str,
        *,
        sslmode: str = "prefer",
        sslrootcert: str = "",
        timeout: float = 3.0,
    ) -> None:
        if sslmode not in SSLMODES:
            raise DataError(f"sslmode {sslmode!r} is not one of {', '.join(SSLMODES)}")
        self.where = f"postgresql://{user}@{host}:{port}/{database}"
        try:
            self.sock: socket.socket = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise DataError(f"{self.where}: cannot connect: {exc}") from None
        try:
            self.tls = False
            if sslmode != "disable":
                self._start_tls(host, sslmode, sslrootcert)
            self._startup(user, password, database)
        except DataError as exc:
            self.sock.close()
            raise DataError(f"{self.where}: {exc}") from None
        except (OSError, ssl.SSLError, ValueError) as exc:
            self.sock.close()
            raise DataError(f"{self.where}: {type(exc).__name__}: {exc}") from None

    def _start_tls(self, host: str, sslmode: str, rootcert: str) -> None:
        self.sock.sendall(struct.pack("!ii", 8, 80877103))
        answer = _recv_exact(self.sock, 1)
        if answer != b"S":
            if sslmode in ("require", "verify-ca", "verify-full"):
                raise DataError(f"the server does not offer TLS (sslmode={sslmode})")
            return
        # libpq: require with a root certificate present verifies the chain, as verify-ca does
        verify = sslmode in ("verify-ca", "verify-full") or (sslmode == "require" and bool(rootcert))
        ctx = _tls_context(verify, rootcert, sslmode == "verify-full")
        self.sock = ctx.wrap_socket(self.sock, server_hostname=host)
        self.tls = True

    def _send(self, kind: bytes, payload: bytes) -> None:
        self.sock.sendall(kind + struct.pack("!i", len(payload) + 4) + payload)

    def _read(self) -> tuple[bytes, bytes]:
        head = _recv_exact(self.sock, 5)
        kind, length = head[:1], struct.unpack("!i", head[1:])[0]
        return kind, _recv_exact(self.sock, length - 4)

    @staticmethod
    def _error(payload: bytes) -> str:
        fields = {}
        for part in payload.split(b"\0"):
            if part:
                fields[part[:1]] = part[1:].decode(errors="replace")
        return f"{fields.get(b'S', 'ERROR')} {fields.get(b'C', '')}: {fields.get(b'M', '')}".strip()

    def _startup(self, user: str, password: str, database: str) -> None:
        params = b"".join(
            k.encode() + b"\0" + v.encode() + b"\0"
            for k, v in (("user", user), ("database", database), ("application_name", f"standin-{NAME}"))
        )
        body = struct.pack("!i", 196608) + params + b"\0"
        self.sock.sendall(struct.pack("!i", len(body) + 4) + body)
        scram: dict[str, bytes] = {}
        while True:
            kind, payload = self._read()
            if kind == b"E":
                raise DataError(self._error(payload))
            if kind == b"R":
                code = struct.unpack("!i", payload[:4])[0]
                if code == 0:
                    continue
                if code == 3:
                    self._send(b"p", password.encode() + b"\0")
                elif code == 5:
                    inner = hashlib.md5((password + user).encode()).hexdigest().encode()  # noqa: S324
                    self._send(b"p", b"md5" + hashlib.md5(inner + payload[4:8]).hexdigest().encode() + b"\0")  # noqa: S324
                elif code == 10:
                    mechanisms = [m for m in payload[4:].split(b"\0") if m]
                    if b"SCRAM-SHA-256" not in mechanisms:
                        raise DataError(f"no supported SASL mechanism in {mechanisms}")
                    nonce = base64.b64encode(os.urandom(18)).decode()
                    scram["bare"] = f"n=,r={nonce}".encode()
                    scram["nonce"] = nonce.encode()
                    first = b"n,," + scram["bare"]
                    self._send(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first)
                elif code == 11:
                    self._send(b"p", _scram_final(scram, payload[4:], password))
                elif code == 12:
                    if payload[4:].strip() != scram.get("expect"):
                        raise DataError(
                            "the server's SCRAM signature does not match (not the server we asked)"
                        )
                else:
                    raise DataError(f"unsupported authentication request {code}")
            elif kind == b"Z":
                return

    def query(self, sql: str) -> list[tuple[str | None, ...]]:
        """Run `sql` (one or more statements); the rows of the last result set; DataError on an error."""
        try:
            self._send(b"Q", sql.encode() + b"\0")
            rows: list[tuple[str | None, ...]] = []
            error = ""
            while True:
                kind, payload = self._read()
                if kind == b"T":
                    rows = []
                elif kind == b"D":
                    count = struct.unpack("!h", payload[:2])[0]
                    at, row = 2, []
                    for _ in range(count):
                        size = struct.unpack("!i", payload[at : at + 4])[0]
                        at += 4
                        if size < 0:
                            row.append(None)
                        else:
                            row.append(payload[at : at + size].decode())
                            at += size
                    rows.append(tuple(row))
                elif kind == b"E":
                    error = self._error(payload)
                elif kind == b"Z":
                    if error:
                        raise DataError(f"{self.where}: {error}")
                    return rows
        except (OSError, ssl.SSLError) as exc:
            raise DataError(f"{self.where}: {type(exc).__name__}: {exc}") from None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._send(b"X", b"")
        self.sock.close()

    def __enter__(self) -> Postgres:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _scram_final(state: dict[str, bytes], server_first: bytes, password: str) -> bytes:
    attrs = dict(part.split(b"=", 1) for part in server_first.split(b",") if b"=" in part)
    nonce, salt, iterations = attrs[b"r"], base64.b64decode(attrs[b"s"]), int(attrs[b"i"])
    if not nonce.startswith(state["nonce"]):
        raise DataError("the server's SCRAM nonce does not extend ours")
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    without_proof = b"c=biws,r=" + nonce
    auth = state["bare"] + b"," + server_first + b"," + without_proof
    signature = hmac.new(hashlib.sha256(client_key).digest(), auth, "sha256").digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    state["expect"] = b"v=" + base64.b64encode(hmac.new(server_key, auth, "sha256").digest())
    return without_proof + b",p=" + base64.b64encode(proof)


def literal(value: str) -> str:
    """A SQL string literal (standard_conforming_strings, PostgreSQL's default since 9.1)."""
    if "\0" in value:
        raise DataError("a NUL character cannot be sent to PostgreSQL")
    return "'" + value.replace("'", "''") + "'"


def main_database(timeout: float = 3.0) -> Postgres:
    """The main database as the api service is configured (DB_*, and libpq's PGSSLMODE/PGSSLROOTCERT)."""
    env = os.environ
    try:
        port = int(env.get("DB_PORT") or 5432)
    except ValueError:
        raise DataError(f"DB_PORT={env.get('DB_PORT')!r} is not a port") from None
    return Postgres(
        env.get("DB_HOST", ""),
        port,
        env.get("DB_USERNAME") or "postgres",
        env.get("DB_PASSWORD", ""),
        env.get("DB_DATABASE") or "dify",
        sslmode=env.get("PGSSLMODE") or "prefer",
        sslrootcert=env.get("PGSSLROOTCERT", ""),
        timeout=timeout,
    )


class Redis:
    """One RESP2 connection (AUTH, SELECT, TLS); `call` returns the decoded reply or raises DataError."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        password: str = "",
        username: str = "",
        db: int = 0,
        tls: bool = False,
        cert_reqs: str = "CERT_NONE",
        ca_file: str = "",
        timeout: float = 3.0,
    ) -> None:
        self.where = f"redis{'s' if tls else ''}://{host}:{port}/{db}"
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
            if tls:
                ctx = _tls_context(cert_reqs != "CERT_NONE", ca_file, False)
                if cert_reqs == "CERT_OPTIONAL":
                    ctx.verify_mode = ssl.CERT_OPTIONAL
                sock = ctx.wrap_socket(sock, server_hostname=host)
        except (OSError, ssl.SSLError) as exc:
            raise DataError(f"{self.where}: cannot connect: {exc}") from None
        self.sock = sock
        self.buf = sock.makefile("rb")
        if password:
            self.call("AUTH", *([username] if username else []), password)
        if db:
            self.call("SELECT", str(db))

    @classmethod
    def from_url(cls, url: str, timeout: float = 3.0) -> Redis:
        """redis[s]://[user]:password@host:port/db, as CELERY_BROKER_URL (REDIS_SSL_* for rediss)."""
        from urllib.parse import unquote, urlsplit

        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            raise DataError("the broker URL is not redis[s]://[user]:password@host:port/db")
        db = (parts.path or "/0").strip("/") or "0"
        return cls(
            parts.hostname,
            parts.port or 6379,
            password=unquote(parts.password or ""),
            username=unquote(parts.username or ""),
            db=int(db) if db.isdigit() else 0,
            tls=parts.scheme == "rediss",
            cert_reqs=os.environ.get("REDIS_SSL_CERT_REQS") or "CERT_NONE",
            ca_file=os.environ.get("REDIS_SSL_CA_CERTS", ""),
            timeout=timeout,
        )

    def call(self, *args: str) -> object:
        out = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            data = arg.encode()
            out.append(b"$%d\r\n%s\r\n" % (len(data), data))
        try:
            self.sock.sendall(b"".join(out))
            reply = self._reply()
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise DataError(f"{self.where}: {type(exc).__name__}: {exc}") from None
        if isinstance(reply, DataError):
            raise DataError(f"{self.where}: {args[0]}: {reply}")
        return reply

    def _reply(self) -> object:
        line = self.buf.readline()
        if not line.endswith(b"\r\n"):
            raise DataError("connection closed by the server")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            return DataError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            data = self.buf.read(size + 2)
            return data[:-2].decode(errors="replace")
        if kind == b"*":
            size = int(rest)
            return None if size < 0 else [self._reply() for _ in range(size)]
        raise DataError(f"unexpected reply {line[:40]!r}")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.buf.close()
            self.sock.close()

    def __enter__(self) -> Redis:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


DISK_FAULT = "/app/api/storage/.standin-disk-fault"  # the VM's volumes/app/storage, mounted there


DB_CHECK_TTL = 1.0  # seconds one answer of the database serves /health (the LB and Docker both ask)
# a database that answered before must fail for this long before /health says so: one slow connect on
# a loaded machine is no outage (one that never answered, e.g. a wrong password, fails at once)
DB_FAIL_GRACE = 3.0
_db_lock = threading.Lock()
_db_state: dict[str, object] = {
    "at": None,
    "problem": None,
    "conn": None,
    "ok_at": None,
    "failing_since": None,
}


def _db_check() -> None:
    """`SELECT 1` on the kept connection, or on a new one (raises DataError)."""
    conn = _db_state["conn"]
    if isinstance(conn, Postgres):
        try:
            conn.query("SELECT 1")
            return
        except DataError:
            conn.close()
            _db_state["conn"] = None
    conn = main_database(timeout=5.0)
    try:
        conn.query("SELECT 1")
    except DataError:
        conn.close()
        raise
    _db_state["conn"] = conn


def database_problem() -> str | None:
    """Why the api cannot use its main database (connect, authenticate, `SELECT 1`), or None. Only when
    DB_HOST is set (the compose file always sets it; a bare `docker run` of the image does not)."""
    if ROLE != "api" or not os.environ.get("DB_HOST"):
        return None
    with _db_lock:
        now = time.monotonic()
        at = _db_state["at"]
        if isinstance(at, float) and now - at < DB_CHECK_TTL:
            return _db_state["problem"]  # type: ignore[return-value]
        try:
            _db_check()
            problem, _db_state["ok_at"], _db_state["failing_since"] = None, now, None
        except DataError as exc:
            since = _db_state["failing_since"]
            if not isinstance(since, float):
                since = _db_state["failing_since"] = now
            problem = f"database unavailable: {exc}"
            if _db_state["ok_at"] is not None and now - since < DB_FAIL_GRACE:
                log(f"{problem} (not yet reported: failing for {now - since:.1f} s)")
                problem = None
        if problem != _db_state["problem"]:
            log(problem or "database reachable")
        _db_state.update(at=time.monotonic(), problem=problem)
        return problem


def health() -> tuple[int, str]:
    if BROKEN:
        return 503, "broken"
    if ROLE == "api" and os.path.exists(DISK_FAULT):
        return 503, "disk fault"
    if UNHEALTHY:
        return 503, "unhealthy"
    if time.monotonic() - STARTED < START_DELAY:
        return 503, "starting"
    problem = database_problem()
    if problem:
        return 503, problem
    return 200, "ok"


def arm_crash() -> None:
    if CRASH_AFTER > 0:

        def crash() -> None:
            log(f"crashing as asked (STANDIN_CRASH_AFTER={CRASH_AFTER:g})")
            os._exit(1)

        timer = threading.Timer(CRASH_AFTER, crash)
        timer.daemon = True
        timer.start()


# --------------------------------------------------------------------------- Cloud Storage (JSON API)
# Dify keeps uploaded files in GOOGLE_STORAGE_BUCKET_NAME (STORAGE_TYPE=google-storage); the plugin daemon
# keeps plugin packages in PLUGIN_STORAGE_OSS_BUCKET (PLUGIN_STORAGE_TYPE=gcs). Google's client libraries
# (Python's google-cloud-storage in the api, Go's cloud.google.com/go/storage in the daemon) send their
# requests to STORAGE_EMULATOR_HOST when it is set, as these stand-ins do: the local fleet sets it to its
# Cloud Storage stand-in. Without it there are no Google credentials here: the stand-ins say so (503).


class StorageError(Exception):
    """A bucket could not be written or read: the text says which and why."""


MAX_BODY = 16 << 20  # an upload larger than this is refused (413)
TENANT = "standin-tenant"  # the one workspace the stand-ins know


def storage_endpoint() -> str:
    host = os.environ.get("STORAGE_EMULATOR_HOST", "").strip().rstrip("/")
    if not host:
        raise StorageError(
            "no STORAGE_EMULATOR_HOST: the stand-in has no Google credentials to reach Cloud Storage"
        )
    if "://" not in host:
        return f"http://{host}"  # host:port, as Google's libraries also accept it
    if not host.startswith(("http://", "https://")):
        raise StorageError(f"STORAGE_EMULATOR_HOST={host!r}: an http(s) endpoint, or host:port")
    return host


def _quote(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="")


def put_object(
    bucket: str, name: str, data: bytes, content_type: str = "application/octet-stream"
) -> dict[str, object]:
    """Upload `data` as gs://bucket/name (the JSON API's media upload); the object's metadata."""
    import urllib.error
    import urllib.request

    if not bucket:
        raise StorageError(f"no bucket to write {name} to")
    url = f"{storage_endpoint()}/upload/storage/v1/b/{_quote(bucket)}/o?uploadType=media&name={_quote(name)}"
    headers = {"Content-Type": content_type}
    req = urllib.request.Request(url, data=data, method="POST", headers=headers)  # noqa: S310 - http(s) only
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:  # noqa: S310 - the configured endpoint
            return json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        raise StorageError(f"gs://{bucket}/{name}: HTTP {exc.code} {exc.read()[:200]!r}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise StorageError(f"gs://{bucket}/{name}: {exc}") from None


def get_object(bucket: str, name: str) -> bytes | None:
    """The bytes of gs://bucket/name; None when there is no such object."""
    import urllib.error
    import urllib.request

    url = f"{storage_endpoint()}/storage/v1/b/{_quote(bucket)}/o/{_quote(name)}?alt=media"
    try:
        with urllib.request.urlopen(url, timeout=15) as resp:  # noqa: S310 - the configured endpoint
            return resp.read()
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise StorageError(f"gs://{bucket}/{name}: HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise StorageError(f"gs://{bucket}/{name}: {exc}") from None


def _object_id(value: str) -> str | None:
    """A file or package id as the stand-ins hand them out (hex), or None."""
    return value if value and len(value) <= 64 and all(c in "0123456789abcdef" for c in value) else None


# the api: files go to the fleet's bucket; plugin packages go through the plugin daemon (as Dify's
# console does), which keeps them in its storage
FILES_PREFIX = "/console/api/files"
PLUGIN_PKG_UPLOAD = "/console/api/workspaces/current/plugin/upload/pkg"
PLUGIN_PKG_PREFIX = "/console/api/workspaces/current/plugin/pkg"


def api_files(method: str, path: str, body: bytes) -> tuple[int, dict[str, object] | bytes]:
    """POST /console/api/files/upload (the body is the file) -> its id; GET /console/api/files/<id>."""
    bucket = os.environ.get("GOOGLE_STORAGE_BUCKET_NAME", "")
    if method == "POST" and path == FILES_PREFIX + "/upload":
        digest = hashlib.sha256(body).hexdigest()
        file_id = os.urandom(16).hex()
        key = f"upload_files/{TENANT}/{file_id}"
        put_object(bucket, key, body)
        log(f"file {file_id} ({len(body)} bytes) stored as gs://{bucket}/{key}")
        return 201, {
            "id": file_id,
            "size": len(body),
            "sha256": digest,
            "key": key,
            "host": socket.gethostname(),
        }
    file_id = _object_id(path[len(FILES_PREFIX) + 1 :]) if method == "GET" else None
    if file_id is None:
        return 404, {"code": "not_found", "path": path}
    data = get_object(bucket, f"upload_files/{TENANT}/{file_id}")
    return (404, {"code": "file_not_found", "id": file_id}) if data is None else (200, data)


def plugin_daemon_call(method: str, path: str, body: bytes | None) -> tuple[int, dict[str, object] | bytes]:
    """The plugin daemon's API, authenticated with PLUGIN_DAEMON_KEY (as the api calls it)."""
    import urllib.error
    import urllib.request

    base = os.environ.get("PLUGIN_DAEMON_URL", "http://plugin_daemon:5002").rstrip("/")
    if not base.startswith(("http://", "https://")):
        return 502, {"code": "plugin_daemon_unreachable", "message": f"PLUGIN_DAEMON_URL={base!r}"}
    headers = {
        "X-Api-Key": os.environ.get("PLUGIN_DAEMON_KEY", ""),
        "Content-Type": "application/octet-stream",
    }
    req = urllib.request.Request(base + path, data=body, method=method, headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:  # noqa: S310 - the stack's own daemon
            raw, ctype = resp.read(), resp.headers.get("Content-Type", "")
            return resp.status, json.loads(raw) if ctype.startswith("application/json") else raw
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw)
        except ValueError:
            return exc.code, {"code": "plugin_daemon_error", "message": raw[:300].decode(errors="replace")}
    except (urllib.error.URLError, OSError) as exc:
        return 502, {"code": "plugin_daemon_unreachable", "message": str(exc)}


def api_plugins(method: str, path: str, body: bytes) -> tuple[int, dict[str, object] | bytes]:
    if method == "POST" and path == PLUGIN_PKG_UPLOAD:
        return plugin_daemon_call("POST", f"/plugin/{TENANT}/management/install/upload/package", body)
    package = _object_id(path[len(PLUGIN_PKG_PREFIX) + 1 :]) if method == "GET" else None
    if package is None:
        return 404, {"code": "not_found", "path": path}
    return plugin_daemon_call("GET", f"/plugin/{TENANT}/management/package/{package}", None)


# the plugin daemon: packages in PLUGIN_STORAGE_OSS_BUCKET (gcs) or under PLUGIN_STORAGE_LOCAL_ROOT (local)
DAEMON_UPLOAD = f"/plugin/{TENANT}/management/install/upload/package"
DAEMON_PACKAGE = f"/plugin/{TENANT}/management/package/"


def _package_store() -> tuple[str, str]:
    kind = os.environ.get("PLUGIN_STORAGE_TYPE", "local").strip() or "local"
    if kind == "gcs":
        return kind, os.environ.get("PLUGIN_STORAGE_OSS_BUCKET", "")
    if kind == "local":
        return kind, os.environ.get("PLUGIN_STORAGE_LOCAL_ROOT", "/app/storage")
    raise StorageError(f"PLUGIN_STORAGE_TYPE={kind!r}: the stand-in knows gcs and local")


def store_package(data: bytes) -> dict[str, object]:
    kind, where = _package_store()
    digest = hashlib.sha256(data).hexdigest()
    key = f"plugin_packages/{digest}"
    if kind == "gcs":
        put_object(where, key, data)
        location = f"gs://{where}/{key}"
    else:
        os.makedirs(os.path.join(where, "plugin_packages"), exist_ok=True)
        with open(os.path.join(where, key), "wb") as out:
            out.write(data)
        location = os.path.join(where, key)
    log(f"plugin package {digest} ({len(data)} bytes) stored at {location}")
    return {
        "unique_identifier": f"standin/plugin:0.0.1@{digest}",
        "id": digest,
        "storage": kind,
        "location": location,
    }


def load_package(digest: str) -> bytes | None:
    kind, where = _package_store()
    key = f"plugin_packages/{digest}"
    if kind == "gcs":
        return get_object(where, key)
    try:
        with open(os.path.join(where, key), "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def daemon_packages(
    method: str, path: str, body: bytes, api_key: str
) -> tuple[int, dict[str, object] | bytes]:
    if not hmac.compare_digest(api_key, os.environ.get("SERVER_KEY", "")) or not api_key:
        return 401, {"code": -401, "message": "unauthorized: X-Api-Key is not the daemon's SERVER_KEY"}
    if method == "POST" and path == DAEMON_UPLOAD:
        return 200, {"code": 0, "message": "success", "data": store_package(body)}
    digest = (
        _object_id(path[len(DAEMON_PACKAGE) :])
        if method == "GET" and path.startswith(DAEMON_PACKAGE)
        else None
    )
    if digest is None:
        return 404, {"code": -404, "message": f"not found: {path}"}
    data = load_package(digest)
    return (404, {"code": -404, "message": f"no package {digest}"}) if data is None else (200, data)


class Handler(BaseHTTPRequestHandler):
    server_version = f"standin-{ROLE}/{VERSION}"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        if self.path.split("?")[0] not in HEALTH_PATHS.get(ROLE, set()):
            log(f"{self.command} {self.path} -> {args[1] if len(args) > 1 else ''}")

    def send(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Standin-Version", VERSION)
        self.send_header("X-Standin-Role", ROLE)
        self.send_header("X-Standin-Host", socket.gethostname())
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def json(self, code: int, payload: dict[str, object]) -> None:
        self.send(code, (json.dumps(payload) + "\n").encode(), "application/json")

    def route(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self.close_connection = True  # the body stays unread
            self.json(413, {"code": "too_large", "limit": MAX_BODY})
            return
        body = self.rfile.read(length) if length else b""
        path = self.path.split("?")[0]
        if self.stored(path, body):
            return
        code, status = health()
        if ROLE == "web":
            body = (
                f"<!doctype html><html><head><title>dify web {VERSION}</title></head>"
                f"<body><h1>dify web stand-in</h1><p>version {VERSION}</p><p>status {status}</p>"
                f"<p>path {path}</p></body></html>\n"
            )
            self.send(code, body.encode(), "text/html; charset=utf-8")
        elif path in HEALTH_PATHS.get(ROLE, set()):
            self.json(code, {"status": status, "version": VERSION, "service": ROLE})
        elif ROLE == "api" and path == "/console/api/ping":
            self.json(200, {"result": "pong", "version": VERSION})
        elif ROLE == "api" and not any(path == p or path.startswith(p + "/") for p in API_PREFIXES):
            self.json(404, {"code": "not_found", "version": VERSION, "path": path})
        else:
            self.json(200, {"service": ROLE, "version": VERSION, "path": path, "method": self.command})

    def stored(self, path: str, body: bytes) -> bool:
        """The routes that keep data in the buckets (files, plugin packages); False for any other."""
        method = self.command
        try:
            if ROLE == "api" and (path == FILES_PREFIX + "/upload" or path.startswith(FILES_PREFIX + "/")):
                code, payload = api_files(method, path, body)
            elif ROLE == "api" and (path == PLUGIN_PKG_UPLOAD or path.startswith(PLUGIN_PKG_PREFIX + "/")):
                code, payload = api_plugins(method, path, body)
            elif ROLE == "plugin_daemon" and path.startswith(f"/plugin/{TENANT}/management/"):
                code, payload = daemon_packages(method, path, body, self.headers.get("X-Api-Key", ""))
            else:
                return False
        except StorageError as exc:
            log(f"storage: {exc}")
            code, payload = 503, {"code": "storage_unavailable", "message": str(exc)}
        if isinstance(payload, bytes):
            self.send(code, payload, "application/octet-stream")
        else:
            self.json(code, payload)
        return True

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = route


def on_term(signum: int, _frame: object) -> None:
    log(f"signal {signum}: stopping")
    STOP.set()


def serve() -> int:
    port = int(os.environ.get("STANDIN_PORT") or PORTS.get(ROLE, 8000))
    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)  # noqa: S104 - a container's own service
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    thread.start()
    log(f"listening on :{port}" + (f", healthy after {START_DELAY:g} s" if START_DELAY else ""))
    STOP.wait()
    server.shutdown()
    return 0


QUEUE = "standin:tasks"  # beat LPUSHes a task here each tick, the workers BRPOP them
ENQUEUED = "standin:enqueued"  # counters in the broker's Redis database
DONE = "standin:done"
DONE_BY = "standin:done-by"  # hash: worker host -> tasks done


def broker() -> Redis | None:
    """The Celery broker (CELERY_BROKER_URL) as a Redis connection; None when no URL is set."""
    url = os.environ.get("CELERY_BROKER_URL", "")
    return Redis.from_url(url, timeout=5.0) if url else None


def work(kind: str) -> int:
    """worker: tasks of STANDIN_TASK_SECONDS each, SIGTERM honoured after the current task; beat: ticks.

    With CELERY_BROKER_URL set, beat enqueues each tick's task into Redis and the workers consume them
    (counters ENQUEUED, DONE, DONE_BY); an unreachable broker is logged and retried, as Celery does."""
    task_seconds = min(seconds("STANDIN_TASK_SECONDS") or 0.3, 0.9)
    every = seconds("STANDIN_BEAT_SECONDS") or 1.0
    if START_DELAY and STOP.wait(START_DELAY):
        return 0
    log(f"{kind} started")
    n = 0
    conn: Redis | None = None
    problem = ""
    while not STOP.is_set():
        try:
            if conn is None:
                conn = broker()
            if problem:
                log("broker reachable again")
                problem = ""
        except DataError as exc:
            if str(exc) != problem:
                problem = str(exc)
                log(f"broker unavailable: {problem}")
            STOP.wait(1.0)
            continue
        try:
            if kind == "beat":
                n += 1
                if conn is not None:
                    task = {"n": n, "by": socket.gethostname(), "version": VERSION, "at": time.time()}
                    conn.call("LPUSH", QUEUE, json.dumps(task))
                    conn.call("INCR", ENQUEUED)
                log(f"beat: scheduled task {n}")
                open("/tmp/standin-heartbeat", "w").close()
                STOP.wait(every)
            else:
                task = None
                if conn is not None:
                    popped = conn.call("BRPOP", QUEUE, "1")
                    if not popped:
                        open("/tmp/standin-heartbeat", "w").close()
                        continue
                    task = popped[1] if isinstance(popped, list) else None
                time.sleep(task_seconds)  # the "task": not interrupted by SIGTERM, finished first
                n += 1
                if conn is not None:
                    conn.call("INCR", DONE)
                    conn.call("HINCRBY", DONE_BY, socket.gethostname(), "1")
                log(f"worker: task {n} done" + (f" ({task})" if task else ""))
                open("/tmp/standin-heartbeat", "w").close()
        except DataError as exc:
            log(f"broker error: {exc}")
            if conn is not None:
                conn.close()
            conn = None
            STOP.wait(1.0)
    if conn is not None:
        conn.close()
    log(f"{kind} stopped after {n} tasks")
    return 0


# --------------------------------------------------------------------------- `flask upgrade-db`
# The stand-in of Dify's migration command (the rollout runs it as `docker compose run --rm --no-deps -T
# --entrypoint flask api upgrade-db`). Its release's schema revision (STANDIN_SCHEMA, baked in from
# compose/releases.yaml) is applied to the main database: the steps up to it, in order, the revision kept
# in standin_schema_version, and every run (applied, current, failed) a row of standin_migration_runs.
# A release built with STANDIN_MIGRATION=fail fails on purpose and leaves the schema as it was.
SCHEMA = os.environ.get("STANDIN_SCHEMA", "")
MIGRATION_FAILS = os.environ.get("STANDIN_MIGRATION", "") == "fail"
MIGRATIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "dify-1.0.0",
        (
            "CREATE TABLE IF NOT EXISTS standin_items "
            "(id bigserial PRIMARY KEY, note text NOT NULL, created_at timestamptz NOT NULL DEFAULT now())",
        ),
    ),
    # backward compatible: a nullable column that 1.0.0's code never names
    ("dify-1.1.0", ("ALTER TABLE standin_items ADD COLUMN IF NOT EXISTS label text",)),
)
BOOKKEEPING = (
    "CREATE TABLE IF NOT EXISTS standin_schema_version "
    "(id int PRIMARY KEY CHECK (id = 1), revision text NOT NULL, "
    "updated_at timestamptz NOT NULL DEFAULT now());"
    "CREATE TABLE IF NOT EXISTS standin_migration_runs (id bigserial PRIMARY KEY, "
    "at timestamptz NOT NULL DEFAULT now(), version text NOT NULL, from_revision text, "
    "to_revision text NOT NULL, result text NOT NULL, detail text NOT NULL DEFAULT '')"
)
MIGRATION_LOCK = 16_016  # pg_advisory_xact_lock key: two runs at once apply one after the other


def steps_to(current: str | None, target: str) -> list[tuple[str, tuple[str, ...]]]:
    """The migration steps after `current` up to `target` (a target this file does not know: all of them
    after `current`); nothing when `current` is `target` or after it."""
    names = [name for name, _ in MIGRATIONS]
    start = names.index(current) + 1 if current in names else 0
    if current is not None and current not in names and current != target:
        start = len(names)  # a revision this stand-in does not know: nothing of ours applies after it
    end = names.index(target) + 1 if target in names else len(names)
    return list(MIGRATIONS[start:end])


def upgrade_db() -> int:
    if not SCHEMA:
        log("upgrade-db: this release records no schema revision: nothing to migrate")
        return 0
    try:
        db = main_database(timeout=10.0)
    except DataError as exc:
        log(f"upgrade-db: {exc}")
        return 1

    def run_row(current: str | None, result: str, detail: str = "") -> str:
        return (
            "INSERT INTO standin_migration_runs (version, from_revision, to_revision, result, detail) "  # noqa: S608
            "VALUES "
            f"({literal(VERSION)}, {literal(current) if current else 'NULL'}, {literal(SCHEMA)}, "
            f"{literal(result)}, {literal(detail)})"
        )

    with db:
        current: str | None = None
        try:
            db.query(BOOKKEEPING)
            db.query(f"BEGIN; SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
            rows = db.query("SELECT revision FROM standin_schema_version WHERE id = 1")
            current = rows[0][0] if rows else None
            if MIGRATION_FAILS:
                raise DataError(
                    f"migration {current or 'none'} -> {SCHEMA} failed on purpose: this stand-in release is "
                    "built to fail its migration (STANDIN_MIGRATION=fail)"
                )
            todo = steps_to(current, SCHEMA)
            if current == SCHEMA or (current is not None and not todo):
                detail = "already at this revision" if current == SCHEMA else f"database is at {current}"
                db.query(run_row(current, "current", detail) + "; COMMIT")
                log(f"upgrade-db: {detail}: nothing to apply (release {VERSION}, revision {SCHEMA})")
                return 0
            for _name, statements in todo:
                for statement in statements:
                    db.query(statement)
            db.query(
                "INSERT INTO standin_schema_version (id, revision) VALUES "  # noqa: S608 - through literal()
                f"(1, {literal(SCHEMA)}) ON CONFLICT (id) DO UPDATE SET revision = EXCLUDED.revision, "
                "updated_at = now()"
            )
            applied = ", ".join(name for name, _ in todo) or "none"
            db.query(run_row(current, "applied", f"steps: {applied}") + "; COMMIT")
        except DataError as exc:
            with contextlib.suppress(DataError):
                db.query("ROLLBACK")
            with contextlib.suppress(DataError):
                db.query(run_row(current, "failed", str(exc)))
            log(f"upgrade-db: {exc}; the schema stays at {current or 'none'}")
            return 1
    log(f"upgrade-db: {current or 'none'} -> {SCHEMA} applied (steps: {applied})")
    return 0


def flask(argv: list[str]) -> int:
    """`flask upgrade-db` (the one command of Dify's CLI the fleet runs)."""
    if argv[:1] == ["upgrade-db"]:
        return upgrade_db()
    log(f"flask: unknown command {' '.join(argv)!r} (the stand-in knows: upgrade-db)")
    return 2


def wrap(argv: list[str]) -> int:
    """Run a real daemon (nginx, squid) with the start-delay and crash knobs; plain exec otherwise."""
    if not argv:
        log("exec: nothing to run")
        return 2
    if START_DELAY and STOP.wait(START_DELAY):
        return 0
    if not CRASH_AFTER:
        os.execvp(argv[0], argv)  # noqa: S606 - the wrapped daemon becomes PID 1
    import subprocess

    child = subprocess.Popen(argv)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP):
        signal.signal(sig, lambda s, _f: child.send_signal(s))
    try:
        return child.wait(timeout=CRASH_AFTER)
    except subprocess.TimeoutExpired:
        log(f"crashing as asked (STANDIN_CRASH_AFTER={CRASH_AFTER:g})")
        child.kill()
        return 1


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    if os.path.basename(sys.argv[0]) == "flask":  # /usr/local/bin/flask -> standin
        return flask(argv)
    if argv[:1] == ["exec"]:
        rest = argv[1:]
        return wrap(rest[1:] if rest[:1] == ["--"] else rest)
    arm_crash()
    mode = os.environ.get("MODE", "api") if ROLE == "api" else ROLE
    if mode in ("worker", "beat"):
        return work(mode)
    if mode != "api" and ROLE == "api":
        log(f"unknown MODE={mode!r}; expected api, worker or beat")
        return 2
    return serve()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
