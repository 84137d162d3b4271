"""A local HTTP endpoint speaking the read side of the data layer's Google APIs, on one port (and
Cloud SQL's on-demand backups, the one thing a rollout asks of the data layer):

  Cloud SQL Admin v1      GET /v1/projects/P/instances/I              instances.get
                          GET /v1/projects/P/instances                instances.list ({"items": [...]})
                          POST /v1/projects/P/instances/I/backupRuns  backupRuns.insert -> an Operation
                          GET /v1/projects/P/instances/I/backupRuns[/ID]  backupRuns.list / get
                          GET /v1/projects/P/operations/OP            operations.get
  Memorystore for Redis   GET /v1/projects/P/locations/L/instances/I  projects.locations.instances.get
                          GET /v1/projects/P/locations/L/instances    ...list (L = "-": every location)
  Cloud Storage JSON      GET /storage/v1/b/B                         buckets.get
  Compute v1              GET /compute/v1/projects/P/global/networks/N
                          GET /compute/v1/projects/P/global/addresses (filter `field = "value"`)

Point the real clients at it (each API's endpoint may be this one URL):
    AuthorizedSession(AnonymousCredentials()).get(f"{api.url}/v1/projects/P/instances/I")
    redis_v1.CloudRedisClient(transport="rest", credentials=AnonymousCredentials(),
                              client_options={"api_endpoint": api.url})
    storage.Client(project=P, credentials=AnonymousCredentials(), client_options={"api_endpoint": api.url})
    compute_v1.NetworksClient(credentials=AnonymousCredentials(), client_options={"api_endpoint": api.url})

Why a stand-in of its own for buckets: the Cloud Storage stand-in (standins/storage.py, fake-gcs-server
over a directory) refuses bucket versioning ("fs storage type does not support versioning yet") and
does not keep iamConfiguration, the two properties the data layer check reads.

Resources are JSON as the APIs spell them (camelCase), put in with `put_*` (or a --state file of the
same shape as `dump()`); the server adds what the API adds (kind, name, selfLink). Errors use each
API's body: Google's {"error": {"code", "message", "status"}} for Redis, {"error": {"code", "message",
"errors": [{"reason", "domain", "message"}]}} for Cloud SQL, Storage and Compute. Read-only: nothing
here creates or patches, except an on-demand backup run; it stands in for what the user created.
A backup is a long-running operation as the real API makes it: the insert answers an Operation
(`status` PENDING, `operationType` BACKUP_VOLUME, `backupContext.backupId`); each operations.get moves
it on (RUNNING, then DONE after `backup_polls` reads) and the backup run with it (ENQUEUED, RUNNING,
SUCCESSFUL). `fail_backups(message)` makes the next ones end DONE with an `error` and the run FAILED.
No IAM: every caller may read, unless `deny(prefix)` makes the paths under a prefix answer 403 (a
caller without the role).

CLI:  python -m standins.datalayer_api [--host H] [--port N] [--state FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from standins.errors import StandinError
from standins.serving import HttpStandin, serve_until_signal

_SQL = re.compile(r"/v1/projects/(?P<project>[^/]+)/instances(?:/(?P<name>[^/]+))?")
_REDIS = re.compile(
    r"/v1/projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)/instances(?:/(?P<name>[^/]+))?"
)
_BUCKET = re.compile(r"/storage/v1/b/(?P<name>[^/]+)")
_NETWORK = re.compile(r"/compute/v1/projects/(?P<project>[^/]+)/global/networks/(?P<name>[^/]+)")
_ADDRESSES = re.compile(r"/compute/v1/projects/(?P<project>[^/]+)/global/addresses")
_BACKUP_RUNS = re.compile(
    r"/v1/projects/(?P<project>[^/]+)/instances/(?P<name>[^/]+)/backupRuns(?:/(?P<id>[^/]+))?"
)
_OPERATION = re.compile(r"/v1/projects/(?P<project>[^/]+)/operations/(?P<name>[^/]+)")
_FILTER = re.compile(r'\s*(?P<field>[A-Za-z][A-Za-z0-9_.]*)\s*=\s*"?(?P<value>[^"]*)"?\s*')
_STATUS = {
    400: "INVALID_ARGUMENT",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "ALREADY_EXISTS",
}
_KINDS = ("sql", "redis", "buckets", "networks", "addresses")


class ApiError(Exception):
    """An answer in the API's error format (`style`: "google" = status, "legacy" = errors[])."""

    def __init__(self, code: int, message: str, reason: str = "notFound", style: str = "legacy") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.style = style

    def body(self) -> dict[str, Any]:
        if self.style == "google":
            return {
                "error": {
                    "code": self.code,
                    "message": self.message,
                    "status": _STATUS.get(self.code, "UNKNOWN"),
                }
            }
        return {
            "error": {
                "code": self.code,
                "message": self.message,
                "errors": [{"message": self.message, "domain": "global", "reason": self.reason}],
            }
        }


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    status: int


class LocalDataLayerApi(HttpStandin):
    """The stand-in: resources in memory (optionally loaded from a JSON state file)."""

    name = "datalayer-api"

    def __init__(self, port: int = 0, host: str = "127.0.0.1", state: Path | None = None) -> None:
        super().__init__(host, port)
        self._lock = threading.Lock()
        self._state: dict[str, dict[str, dict[str, Any]]] = {kind: {} for kind in _KINDS}
        self._calls: list[Call] = []
        self._denied: list[str] = []
        self._backups: dict[str, list[dict[str, Any]]] = {}  # "P/I" -> backup runs, oldest first
        self._operations: dict[str, dict[str, Any]] = {}  # "P/OP" -> operation (with "_failure")
        self._op_reads: dict[str, int] = {}
        self._next_backup = 1_700_000_000_000
        self.backup_polls = 2  # operations.get reads until a backup operation is DONE
        self._backup_failure: str | None = None
        if state is not None:
            self.load(state)

    # --- setup and inspection (no HTTP) ------------------------------------------------------------

    def put_sql_instance(self, project: str, body: dict[str, Any]) -> dict[str, Any]:
        name = _required(body, "name")
        res = {
            "kind": "sql#instance",
            "project": project,
            "state": "RUNNABLE",
            "instanceType": "CLOUD_SQL_INSTANCE",
            "backendType": "SECOND_GEN",
            **body,
            "selfLink": f"{self.url}/v1/projects/{project}/instances/{name}",
        }
        if res.get("region"):
            res.setdefault("connectionName", f"{project}:{res['region']}:{name}")
        return self._put("sql", f"{project}/{name}", res)

    def put_redis_instance(self, project: str, location: str, body: dict[str, Any]) -> dict[str, Any]:
        name = _required(body, "name").rsplit("/", 1)[-1]
        res = {"state": "READY", **body, "name": f"projects/{project}/locations/{location}/instances/{name}"}
        res.setdefault("locationId", f"{location}-a")
        return self._put("redis", f"{project}/{location}/{name}", res)

    def put_bucket(self, body: dict[str, Any]) -> dict[str, Any]:
        name = _required(body, "name")
        res = {
            "kind": "storage#bucket",
            "id": name,
            "storageClass": "STANDARD",
            "metageneration": "1",
            "timeCreated": "2026-01-01T00:00:00.000Z",
            "updated": "2026-01-01T00:00:00.000Z",
            "etag": "CAE=",
            **body,
            "selfLink": f"{self.url}/storage/v1/b/{name}",
        }
        return self._put("buckets", name, res)

    def put_network(self, project: str, body: dict[str, Any]) -> dict[str, Any]:
        name = _required(body, "name")
        res = {
            "kind": "compute#network",
            "id": _numeric_id(project, "network", name),
            "autoCreateSubnetworks": False,
            **body,
            "selfLink": f"https://www.googleapis.com/compute/v1/projects/{project}/global/networks/{name}",
        }
        return self._put("networks", f"{project}/{name}", res)

    def put_address(self, project: str, body: dict[str, Any]) -> dict[str, Any]:
        name = _required(body, "name")
        res = {
            "kind": "compute#address",
            "id": _numeric_id(project, "address", name),
            "status": "RESERVED",
            "addressType": "INTERNAL",
            **body,
            "selfLink": f"https://www.googleapis.com/compute/v1/projects/{project}/global/addresses/{name}",
        }
        return self._put("addresses", f"{project}/{name}", res)

    def remove(self, kind: str, key: str) -> None:
        """Forget a resource: `kind` among sql, redis, buckets, networks, addresses; `key` as in dump()."""
        with self._lock:
            self._state[kind].pop(key, None)

    def dump(self) -> dict[str, dict[str, dict[str, Any]]]:
        with self._lock:
            return json.loads(json.dumps(self._state))

    def load(self, path: Path) -> None:
        """Resources from a JSON file shaped like dump(): {"sql": {"P/NAME": {...}}, "redis": ...}."""
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise StandinError(f"cannot read the state file: {exc}", where=str(path)) from None
        if not isinstance(raw, dict) or set(raw) - set(_KINDS):
            raise StandinError(f"state keys must be among {', '.join(_KINDS)}", where=str(path))
        for kind, items in raw.items():
            for key, body in (items or {}).items():
                parts = key.split("/")
                if kind == "sql" and len(parts) == 2:
                    self.put_sql_instance(parts[0], {**body, "name": parts[1]})
                elif kind == "redis" and len(parts) == 3:
                    self.put_redis_instance(parts[0], parts[1], {**body, "name": parts[2]})
                elif kind == "buckets" and len(parts) == 1:
                    self.put_bucket({**body, "name": key})
                elif kind == "networks" and len(parts) == 2:
                    self.put_network(parts[0], {**body, "name": parts[1]})
                elif kind == "addresses" and len(parts) == 2:
                    self.put_address(parts[0], {**body, "name": parts[1]})
                else:
                    raise StandinError(f"bad key {key!r} under {kind}", where=str(path))

    def deny(self, path_prefix: str | None) -> None:
        """Answer 403 to every path under `path_prefix` (a caller without the role); None: allow all."""
        with self._lock:
            self._denied = [path_prefix] if path_prefix else []

    def fail_backups(self, message: str | None) -> None:
        """Backups inserted from now on fail with `message` (None: they succeed again)."""
        with self._lock:
            self._backup_failure = message

    def backup_runs(self, project: str, instance: str) -> list[dict[str, Any]]:
        with self._lock:
            return json.loads(json.dumps(self._backups.get(f"{project}/{instance}", [])))

    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._calls)

    def _put(self, kind: str, key: str, res: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self._state[kind][key] = json.loads(json.dumps(res))
        return res

    # --- HTTP ----------------------------------------------------------------------------------------

    def dispatch(
        self, method: str, path: str, query: dict[str, str], body: dict[str, Any] | None = None
    ) -> Any:
        with self._lock:
            denied = any(path.startswith(prefix) for prefix in self._denied)
        if denied:
            style = "google" if "/locations/" in path else "legacy"
            raise ApiError(403, "The caller does not have permission", "forbidden", style)
        if m := _BACKUP_RUNS.fullmatch(path):
            return self._backup_runs(method, m["project"], m["name"], m["id"], body or {})
        if m := _OPERATION.fullmatch(path):
            self._only_get(method, "legacy")
            return self._operation(m["project"], m["name"])
        if m := _BUCKET.fullmatch(path):
            self._only_get(method, "legacy")
            return self._get("buckets", m["name"], "The specified bucket does not exist.", "legacy")
        if m := _NETWORK.fullmatch(path):
            self._only_get(method, "legacy")
            where = f"projects/{m['project']}/global/networks/{m['name']}"
            return self._get(
                "networks", f"{m['project']}/{m['name']}", f"The resource '{where}' was not found", "legacy"
            )
        if m := _ADDRESSES.fullmatch(path):
            self._only_get(method, "legacy")
            items = self._list("addresses", f"{m['project']}/")
            items = _filtered(items, query.get("filter", ""))
            listing: dict[str, Any] = {
                "kind": "compute#addressList",
                "id": f"projects/{m['project']}/global/addresses",
            }
            return {**listing, "items": items} if items else listing
        if m := _REDIS.fullmatch(path):
            self._only_get(method, "google")
            if m["name"] is None:
                prefix = f"{m['project']}/" if m["location"] == "-" else f"{m['project']}/{m['location']}/"
                return {"instances": self._list("redis", prefix)}
            key = f"{m['project']}/{m['location']}/{m['name']}"
            name = f"projects/{m['project']}/locations/{m['location']}/instances/{m['name']}"
            return self._get("redis", key, f"Resource '{name}' was not found", "google")
        if m := _SQL.fullmatch(path):
            self._only_get(method, "legacy")
            if m["name"] is None:
                items = self._list("sql", f"{m['project']}/")
                return {"kind": "sql#instancesList", **({"items": items} if items else {})}
            key = f"{m['project']}/{m['name']}"
            with self._lock:
                found = self._state["sql"].get(key)
            if found is None:
                raise ApiError(404, "The Cloud SQL instance does not exist.", "instanceDoesNotExist")
            return found
        raise ApiError(404, f"Not Found: {path}", "notFound", "google")

    # --- Cloud SQL on-demand backups (long-running operations) -------------------------------------

    def _backup_runs(
        self, method: str, project: str, instance: str, run_id: str | None, body: dict[str, Any]
    ) -> dict[str, Any]:
        key = f"{project}/{instance}"
        with self._lock:
            if key not in self._state["sql"]:
                raise ApiError(404, "The Cloud SQL instance does not exist.", "instanceDoesNotExist")
            runs = self._backups.setdefault(key, [])
            if method == "GET" and run_id is None:
                items = [dict(r) for r in reversed(runs)]  # newest first, as the API lists them
                return {"kind": "sql#backupRunsList", **({"items": items} if items else {})}
            if method == "GET":
                for run in runs:
                    if run["id"] == run_id:
                        return dict(run)
                raise ApiError(404, "The backup run does not exist.", "backupRunDoesNotExist")
            if method != "POST" or run_id is not None:
                raise ApiError(405, f"{method} is not implemented by this stand-in", "methodNotAllowed")
            if any(r["status"] in ("ENQUEUED", "RUNNING") for r in runs):
                raise ApiError(
                    409,
                    "Operation failed because another operation was already in progress.",
                    "operationInProgress",
                )
            self._next_backup += 1
            backup_id = str(self._next_backup)
            now = _now()
            link = f"{self.url}/v1/projects/{project}/instances/{instance}"
            op_name = hashlib.sha256(f"{key}/{backup_id}".encode()).hexdigest()[:36]
            run = {
                "kind": "sql#backupRun",
                "id": backup_id,
                "instance": instance,
                "status": "ENQUEUED",
                "type": "ON_DEMAND",
                "backupKind": "SNAPSHOT",
                "description": str(body.get("description") or ""),
                "enqueuedTime": now,
                "windowStartTime": now,
                "location": "us",
                "selfLink": f"{link}/backupRuns/{backup_id}",
            }
            runs.append(run)
            op: dict[str, Any] = {
                "kind": "sql#operation",
                "name": op_name,
                "status": "PENDING",
                "operationType": "BACKUP_VOLUME",
                "user": "operator@local",
                "insertTime": now,
                "targetId": instance,
                "targetProject": project,
                "targetLink": link,
                "selfLink": f"{self.url}/v1/projects/{project}/operations/{op_name}",
                "backupContext": {"kind": "sql#backupContext", "backupId": backup_id},
            }
            self._operations[f"{project}/{op_name}"] = op
            self._op_reads[f"{project}/{op_name}"] = 0
            op["_failure"] = self._backup_failure
            return _public(op)

    def _operation(self, project: str, name: str) -> dict[str, Any]:
        key = f"{project}/{name}"
        with self._lock:
            op = self._operations.get(key)
            if op is None:
                raise ApiError(404, "The Cloud SQL operation does not exist.", "operationDoesNotExist")
            if op["status"] != "DONE":
                self._op_reads[key] += 1
                reads = self._op_reads[key]
                run = next(
                    r
                    for r in self._backups[f"{project}/{op['targetId']}"]
                    if r["id"] == op["backupContext"]["backupId"]
                )
                if reads >= self.backup_polls:
                    op["status"] = "DONE"
                    op["endTime"] = run["endTime"] = _now()
                    if op["_failure"]:
                        error = {
                            "kind": "sql#operationError",
                            "code": "BACKUP_FAILED",
                            "message": op["_failure"],
                        }
                        op["error"] = {"kind": "sql#operationErrors", "errors": [error]}
                        run["status"] = "FAILED"
                        run["error"] = error
                    else:
                        run["status"] = "SUCCESSFUL"
                else:
                    op["status"] = "RUNNING"
                    op.setdefault("startTime", _now())
                    run["status"] = "RUNNING"
                    run.setdefault("startTime", op["startTime"])
            return _public(op)

    @staticmethod
    def _only_get(method: str, style: str) -> None:
        if method != "GET":
            raise ApiError(
                405, f"{method} is not implemented by this stand-in (read-only)", "methodNotAllowed", style
            )

    def _get(self, kind: str, key: str, message: str, style: str) -> dict[str, Any]:
        with self._lock:
            found = self._state[kind].get(key)
        if found is None:
            raise ApiError(404, message, "notFound", style)
        return found

    def _list(self, kind: str, prefix: str) -> list[dict[str, Any]]:
        with self._lock:
            return [v for k, v in sorted(self._state[kind].items()) if k.startswith(prefix)]

    def _handle(self, req: BaseHTTPRequestHandler, method: str) -> None:
        url = urlsplit(req.path)
        path = unquote(url.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        length = int(req.headers.get("Content-Length") or 0)
        body: dict[str, Any] | None = None
        if length:
            raw = req.rfile.read(min(length, 1 << 20))
            try:
                parsed = json.loads(raw or b"{}")
            except ValueError:
                parsed = None
            body = parsed if isinstance(parsed, dict) else None
        try:
            if method == "POST" and length and body is None:
                raise ApiError(400, "Invalid JSON payload received.", "invalid")
            answer, status = self.dispatch(method, path, query, body), 200
        except ApiError as exc:
            answer, status = exc.body(), exc.code
        data = json.dumps(answer).encode()
        with self._lock:
            self._calls.append(Call(method, path, status))
        req.send_response(status)
        req.send_header("Content-Type", "application/json; charset=UTF-8")
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        req.wfile.write(data)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


def _public(op: dict[str, Any]) -> dict[str, Any]:
    """The operation as the API shows it (without the stand-in's own bookkeeping)."""
    return {k: json.loads(json.dumps(v)) for k, v in op.items() if not k.startswith("_")}


def _numeric_id(*parts: str) -> str:
    """A stable numeric id (Compute's ids are uint64 strings)."""
    return str(int.from_bytes(hashlib.sha256("/".join(parts).encode()).digest()[:7], "big"))


def _required(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise StandinError(f"a resource needs a {key!r}", hint=f"got {sorted(body)}")
    return value


def _filtered(items: list[dict[str, Any]], expr: str) -> list[dict[str, Any]]:
    """Compute's list filter, the subset `field = "value"` (one comparison, equality)."""
    if not expr.strip():
        return items
    m = _FILTER.fullmatch(expr)
    if m is None:
        raise ApiError(
            400, f"Invalid value for field 'filter': '{expr}'. Invalid list filter expression.", "invalid"
        )
    return [i for i in items if str(i.get(m["field"])) == m["value"]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m standins.datalayer_api", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (0 = any free port)")
    parser.add_argument(
        "--state", type=Path, default=None, help="JSON file of resources (the shape of dump())"
    )
    args = parser.parse_args(argv)
    return serve_until_signal(
        parser,
        lambda: LocalDataLayerApi(port=args.port, host=args.host, state=args.state).start(),
        lambda api: f"datalayer-api listening on {api.url} (set data_layer.endpoints.* to it)",
    )


if __name__ == "__main__":
    raise SystemExit(main())
